"""Regenerates an experiment's figures (PNG) from its CSVs (what ``experiments.run`` wrote).

  python -m experiments.plot --experiment=recall                     # reads and writes results/recall/
  python -m experiments.plot --experiment=systems_scaling --results=$OUT/systems_scaling

Figures per experiment (file names in ``FIGURES``): recall accuracy vs distance, beyond-W
accuracy per arm with every seed, accuracy vs stored pairs; memory capacity (top-1 retrieval
and cosine vs pairs per dimension, per rule) and the learned decay horizon and gate; the
systems curves (prefill rate, time to first token, decode rate, memory vs prompt length);
NLL vs context length and vs distance (long_context_lm, ablations); the ablations' NLL per
arm, grouped by what each group varies.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {"tc": "C0", "window": "C1", "full": "C2", "sinks": "C3", "infini": "C4"}


def read_csv(path: str) -> list[dict]:
  """Rows with numbers parsed (ints, floats, booleans); empty cells become None."""
  if not os.path.exists(path):
    return []

  def parse(x: str):
    if x == "":
      return None
    if x in ("True", "False"):
      return x == "True"
    for kind in (int, float):
      try:
        return kind(x)
      except ValueError:
        pass
    return x

  with open(path, newline="", encoding="utf-8") as f:
    return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_config_value(results: str, section: str, field: str):
  """A field of the run config the arms recorded (``arms/*.json``; the first arm that has it)."""
  import glob
  import json

  for path in sorted(glob.glob(os.path.join(results, "arms", "*.json"))):
    with open(path, encoding="utf-8") as f:
      value = json.load(f).get("config", {}).get(section, {}).get(field)
    if value is not None:
      return value
  return None


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def group_name(row: dict) -> str:
  """The arm without its seed: ``tc``, ``tc (reference training)``, ``tc (delta)``, ``window``."""
  name = row["mechanism"]
  if name == "tc":
    if row.get("memory_mode") not in (None, "", "exact"):
      name += f" ({row['memory_mode']} training)"
    elif row.get("rule") not in (None, "", "outer"):
      name += f" ({row['rule']})"
  return name


def _mean_sd(vals: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  mean = sum(vals) / len(vals)
  return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))


def _color(name: str, i: int) -> str:
  return COLORS.get(name, f"C{5 + i % 5}")


def _spread(values):
  n = len(values)
  mean = sum(values) / n
  return mean, min(values), max(values), n


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _plt().close(fig)
  return path


# ------------------------------------------------------------------ recall


def plot_recall(results: str) -> list[str]:
  plt = _plt()
  out = []
  dist = read_csv(os.path.join(results, "distance.csv"))
  summary = read_csv(os.path.join(results, "summary.csv"))
  pairs = read_csv(os.path.join(results, "pairs.csv"))
  window = summary[0]["window"] if summary else None
  chance = summary[0]["chance"] if summary else None

  def by_group(rows, key):
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
      groups[group_name(r)][key(r)].append(r["accuracy"])
    return groups

  if dist:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    last_hi = max(r["distance_lo_W"] for r in dist) + 0.5
    groups = by_group(dist, lambda r: (r["distance_lo_W"], r["distance_hi_W"]))
    for i, (name, bins) in enumerate(sorted(groups.items())):
      xs = sorted(bins)
      mid = [(lo + min(hi, last_hi)) / 2 for lo, hi in xs]
      stats = [_spread(bins[b]) for b in xs]
      c = _color(name.split(" ")[0] if name == "tc" or " " not in name else name, i)
      ax.plot(mid, [s[0] for s in stats], marker="o", color=c, label=f"{name} ({stats[0][3]} seeds)")
      ax.fill_between(mid, [s[1] for s in stats], [s[2] for s in stats], color=c, alpha=0.15, lw=0)
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.text(1.02, 0.72, f"W = {window}", color="gray", transform=ax.get_xaxis_transform())
    layers = run_config_value(results, "model", "n_layer")
    if layers and layers > 1:  # stacked windows see L W tokens back: window-only's receptive field
      ax.axvline(float(layers), color="gray", ls=":", lw=1)
      ax.text(layers + 0.02, 0.72, f"{layers} layers x W", color="gray", transform=ax.get_xaxis_transform())
    if chance:
      ax.axhline(chance, color="k", ls=":", lw=1)
      ax.text(0.02, chance + 0.01, "chance", fontsize=8)
    ax.set(xlabel="distance from stored pair to its query (multiples of W)", ylabel="answer accuracy",
           ylim=(0, 1.02), title="Associative recall vs distance (mean; band: min-max over seeds)")
    ax.legend(fontsize=8, loc="upper left")
    out.append(_save(fig, os.path.join(results, "recall_distance.png")))

  if summary:
    groups = defaultdict(list)
    for r in summary:
      groups[group_name(r)].append(r)
    names = sorted(groups, key=lambda n: -sum(r["acc_beyond_W"] for r in groups[n]) / len(groups[n]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, col, title in ((axes[0], "acc_below_W", "distance < W"), (axes[1], "acc_beyond_W", "distance >= W")):
      for i, name in enumerate(names):
        vals = [r[col] for r in groups[name]]
        mean = sum(vals) / len(vals)
        ax.bar(i, mean, color=_color(name, i) if name in COLORS else "0.6", alpha=0.6)
        ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
        ax.text(i, 0.02, f"{mean:.2f}", ha="center", fontsize=8)
      if chance:
        ax.axhline(chance, color="k", ls=":", lw=1)
      ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
      ax.set(title=title, ylim=(0, 1.02))
    axes[0].set_ylabel("answer accuracy (bar: mean; dots: seeds)")
    out.append(_save(fig, os.path.join(results, "recall_beyond_window.png")))

  if pairs:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (name, bins) in enumerate(sorted(by_group(pairs, lambda r: r["num_pairs"]).items())):
      xs = sorted(bins)
      stats = [_spread(bins[n]) for n in xs]
      c = _color(name, i) if name in COLORS else f"C{5 + i % 5}"
      ax.plot(xs, [s[0] for s in stats], marker="o", color=c, label=name)
      ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], color=c, alpha=0.15, lw=0)
    if chance:
      ax.axhline(chance, color="k", ls=":", lw=1)
    ax.set(xlabel="stored pairs (trained on 4)", ylabel="accuracy, every answer beyond W", ylim=(0, 1.02),
           title="Recall beyond the window vs stored pairs")
    ax.legend(fontsize=8)
    out.append(_save(fig, os.path.join(results, "recall_pairs.png")))
  return out


# ------------------------------------------------------------------ memory capacity


def plot_memory_capacity(results: str) -> list[str]:
  plt = _plt()
  out = []
  cap = read_csv(os.path.join(results, "capacity.csv"))
  if cap:
    rules = [r for r in ("outer", "delta", "wedge") if any(c["rule"] == r for c in cap)]
    dims = sorted({c["D"] for c in cap})
    fig, axes = plt.subplots(2, len(rules), figsize=(4 * len(rules), 6.4), sharex=True, sharey="row", squeeze=False)
    for j, rule in enumerate(rules):
      for i, D in enumerate(dims):
        for write, ls in (("exact", "-"), ("chunk_mean", "--")):
          rows = sorted((c for c in cap if c["rule"] == rule and c["D"] == D and c["write"] == write),
                        key=lambda c: c["pairs_per_D"])
          if not rows:
            continue
          x = [c["pairs_per_D"] for c in rows]
          label = f"D={D}" if write == "exact" else None
          axes[0, j].plot(x, [c["top1"] for c in rows], ls, color=f"C{i}", marker=".", label=label)
          axes[1, j].plot(x, [c["cosine"] for c in rows], ls, color=f"C{i}", marker=".")
      axes[0, j].set_title(f"{rule} rule")
      axes[1, j].set_xlabel("stored pairs / D")
      axes[0, j].set_xscale("log", base=2)
    axes[0, 0].set_ylabel("top-1 retrieval among stored values")
    axes[1, 0].set_ylabel("cosine(read, value)")
    axes[0, 0].plot([], [], "k-", label="exact writes")
    axes[0, 0].plot([], [], "k--", label=f"chunk means (C={max(c['chunk'] for c in cap)})")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Recall from the memory alone (lambda = eta = 1; mean of "
                 f"{cap[0]['trials']} memories)", fontsize=10)
    out.append(_save(fig, os.path.join(results, "capacity.png")))
  learned = read_csv(os.path.join(results, "learned.csv"))
  if learned:
    layers = sorted({r["layer"] for r in learned})
    heads = sorted({r["head"] for r in learned})
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    width = 0.8 / len(layers)
    for li, layer in enumerate(layers):
      rows = sorted((r for r in learned if r["layer"] == layer), key=lambda r: r["head"])
      x = [h + li * width for h in heads]
      axes[0].bar(x, [r["horizon"] for r in rows], width, label=f"layer {layer}")
      axes[1].bar(x, [r["eta"] for r in rows], width, label=f"layer {layer}")
      axes[2].bar(li, rows[0]["gate"], 0.6, color=f"C{li}")
    r0 = learned[0]
    axes[0].axhline(1 / (1 - r0["lambda_init"]), color="k", ls=":", lw=1, label="at init")
    axes[1].axhline(r0["eta_init"], color="k", ls=":", lw=1)
    axes[2].axhline(1 / (1 + math.exp(-r0["gate_init"])), color="k", ls=":", lw=1)
    axes[0].set(title="horizon 1/(1 - lambda) per head (tokens)", xlabel="head")
    axes[1].set(title="write rate eta per head", xlabel="head")
    axes[2].set(title="gate sigma(g) per layer", xlabel="layer", ylim=(0, 1))
    axes[2].set_xticks(range(len(layers)), [str(x) for x in layers])
    axes[0].set_ylim(0, 1.35 * max(r["horizon"] for r in learned))
    axes[0].legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle(f"Learned memory parameters of the recall model (tc, outer rule, seed {r0['seed']}, "
                 f"{r0['train_steps']} steps); dotted: initial value", fontsize=10)
    out.append(_save(fig, os.path.join(results, "learned.png")))
  return out


# ------------------------------------------------------------------ systems scaling


def plot_systems_scaling(results: str) -> list[str]:
  plt = _plt()
  rows = read_csv(os.path.join(results, "systems.csv"))
  if not rows:
    return []
  panels = (("prefill_tok_s", "prefill tokens/s"), ("ttft_s", "time to first token (s)"),
            ("decode_tok_s", "decode tokens/s (batch 1)"),
            ("peak_bytes", "GB: device peak (solid), cache (dashed)"))
  fig, axes = plt.subplots(2, 2, figsize=(10, 7))
  mechs = [m for m in COLORS if any(r["mechanism"] == m for r in rows)]
  for ax, (col, label) in zip(axes.flat, panels):
    for m in mechs:
      mine = sorted((r for r in rows if r["mechanism"] == m), key=lambda r: r["length"])
      ok = [r for r in mine if r["status"] == "ok" and r.get(col) is not None]
      scale = 1e-9 if col == "peak_bytes" else 1.0
      ax.plot([r["length"] for r in ok], [r[col] * scale for r in ok], marker="o", color=COLORS[m], label=m)
      if col in ("peak_bytes", "decode_tok_s"):
        probes = [r for r in mine if r["status"] == "probe" and r.get(col) is not None]
        ax.scatter([r["length"] for r in probes], [r[col] * scale for r in probes], marker="o",
                   facecolors="none", edgecolors=COLORS[m])
      if col == "peak_bytes":
        held = [r for r in mine if r["status"] in ("ok", "probe")]
        ax.plot([r["length"] for r in held], [r["cache_bytes"] * scale for r in held], "--", color=COLORS[m])
      for r in mine:
        if r["status"] == "oom":
          ax.axvline(r["length"], color=COLORS[m], ls=":", lw=1)
          ax.text(r["length"], 0.02, f" {m} OOM", color=COLORS[m], fontsize=7, rotation=90,
                  transform=ax.get_xaxis_transform())
    ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel=label)
    ax.set_xscale("log", base=2)
  limit = next((r["bytes_limit"] for r in rows if r.get("bytes_limit")), None)
  if limit:
    axes[1, 1].axhline(limit * 1e-9, color="k", ls="--", lw=1)
    axes[1, 1].text(rows[0]["length"], limit * 1e-9, " device limit", fontsize=7, va="bottom")
  axes[0, 0].legend(fontsize=8)
  r0 = rows[0]
  fig.suptitle(f"Systems scaling: {r0['params'] / 1e6:.3g}M parameters, random weights, batch 1, "
               f"W = {r0['window']}, {r0['device']} (hollow: memory probe, not timed)", fontsize=10)
  return [_save(fig, os.path.join(results, "systems.png"))]


# ------------------------------------------------------------------ language modelling


def _arm_label(row: dict) -> str:
  return row["arm"] if row["experiment"] == "ablations" else row["mechanism"]


def plot_lm(results: str) -> list[str]:
  plt = _plt()
  out = []
  nll = read_csv(os.path.join(results, "nll.csv"))
  dist = read_csv(os.path.join(results, "nll_distance.csv"))
  if nll:
    arms = sorted({_arm_label(r) for r in nll})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, col, title in ((axes[0], "nll_all", "all positions"), (axes[1], "nll_far", "positions >= W")):
      for i, arm in enumerate(arms):
        by_length = defaultdict(list)  # several seeds: their mean, and their range as the bar
        for r in nll:
          if _arm_label(r) == arm and r.get(col) is not None:
            by_length[r["context_length"]].append(r[col])
        lengths = sorted(by_length)
        mean = [sum(by_length[n]) / len(by_length[n]) for n in lengths]
        err = [[m - min(by_length[n]) for m, n in zip(mean, lengths)],
               [max(by_length[n]) - m for m, n in zip(mean, lengths)]]
        seeds = max(len(v) for v in by_length.values())
        ax.errorbar(lengths, mean, yerr=err if seeds > 1 else None, marker="o", capsize=2,
                    color=_color(arm, i), label=arm + (f" ({seeds} seeds)" if seeds > 1 else ""))
      ax.axvline(nll[0]["train_len"], color="gray", ls="--", lw=1)
      ax.set(xscale="log", xlabel="context length (tokens)", title=title)
      contexts = sorted({r["context_length"] for r in nll})
      ax.set_xticks(contexts, [str(c) for c in contexts])
      ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    axes[0].set_ylabel("NLL (nats/token)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"NLL vs context ({nll[0]['source']}; dashed: trained length; W = {nll[0]['strata_W']})",
                 fontsize=10)
    out.append(_save(fig, os.path.join(results, "nll_context.png")))
  if dist:
    longest = max(r["context_length"] for r in dist)
    rows = [r for r in dist if r["context_length"] == longest]
    arms = sorted({_arm_label(r) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, arm in enumerate(arms):
      by_bin = defaultdict(list)  # mean over seeds
      for r in rows:
        if _arm_label(r) == arm:
          by_bin[r["distance_lo_W"]].append(r["nll"])
      bins = sorted(by_bin)
      ax.plot([max(b, 0.25) for b in bins], [sum(by_bin[b]) / len(by_bin[b]) for b in bins], marker="o",
              color=_color(arm, i), label=arm)
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set(xscale="log", xlabel="position, bin start (multiples of W; first bin at 0)", ylabel="NLL (nats/token)",
           title=f"NLL vs distance, context {longest} tokens")
    ax.legend(fontsize=7)
    out.append(_save(fig, os.path.join(results, "nll_distance.png")))
  return out


# Panels of the ablation figure: (title, arms in the order shown); ``exact`` is the base arm.
ABLATION_GROUPS = (
    ("training correction", ("exact", "reference", "chunk_mean", "chunk_mean_insert")),
    ("chunk C, exact scan", ("exact_C8", "exact", "exact_C32", "exact_C64", "exact_C128")),
    ("chunk C, chunk-mean", ("chunk_mean_C8", "chunk_mean", "chunk_mean_C32", "chunk_mean_C64",
                             "chunk_mean_C128")),
    ("window W", ("tc_W8", "exact", "tc_W32", "window_W8", "window", "window_W32")),
    ("rule; frozen lambda / eta", ("exact", "rule_outer", "rule_wedge", "frozen")),
    ("baselines: windowed vs dense training", ("exact", "window", "window_dense", "sinks", "sinks_dense", "full")),
)


def ablation_means(nll: list[dict]) -> dict[str, dict[str, float]]:
  """Per arm of ``nll.csv``'s rows (``cpu_`` prefix dropped): NLL of all positions and of
  positions >= the arm's W, each averaged over the evaluated context lengths (the same text
  for every arm)."""
  by_arm = defaultdict(list)
  for r in nll:
    by_arm[r["arm"].removeprefix("cpu_")].append(r)
  return {arm: {col: sum(float(r[col] if r[col] is not None else "nan") for r in rows) / len(rows)
                for col in ("nll_all", "nll_far")} for arm, rows in by_arm.items()}


def plot_ablations(results: str) -> list[str]:
  out = plot_lm(results)
  nll = read_csv(os.path.join(results, "nll.csv"))
  means = ablation_means(nll)
  if not means:
    return out
  plt = _plt()
  fig, axes = plt.subplots(2, 3, figsize=(15, 7))
  styles = (("nll_all", "all positions", "C7"), ("nll_far", "positions >= W", "C0"))
  for ax, (title, names) in zip(axes.flat, ABLATION_GROUPS):
    names = [n for n in names if n in means]
    if not names:
      ax.set(title=title, xticks=[], yticks=[])
      ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
      continue
    for col, label, color in styles:
      ax.plot([means[n][col] for n in names], range(len(names)), "o", color=color, label=label)
      if "exact" in means:
        ax.axvline(means["exact"][col], color=color, ls="--", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="x", lw=0.3)
    ax.set(title=title, xlabel="NLL (nats/token), mean over context lengths")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper right", fontsize=8)
  contexts = sorted({r["context_length"] for r in nll})
  fig.suptitle(f"Ablations (dashed: the exact arm); contexts {', '.join(map(str, contexts))} tokens", fontsize=10)
  out.append(_save(fig, os.path.join(results, "ablations.png")))
  return out


def summarize(experiment: str, results: str) -> list[str]:
  """The headline numbers the README's table quotes, as lines of text."""
  lines = []
  if experiment == "recall":
    groups = defaultdict(list)
    for r in read_csv(os.path.join(results, "summary.csv")):
      groups[group_name(r)].append(r)
    for name, rows in sorted(groups.items()):
      parts = []
      for col in ("acc_below_W", "acc_beyond_W"):
        vals = [r[col] for r in rows]
        mean, sd = _mean_sd(vals)
        parts.append(f"{col} {mean:.3f} +- {sd:.3f} (min {min(vals):.3f}, max {max(vals):.3f})")
      far = []  # accuracy beyond 2W (the 2-layer window's receptive field), per seed
      for r in rows:
        bins = [d for d in read_csv(os.path.join(results, "distance.csv"))
                if d["arm"] == r["arm"] and d["distance_lo_W"] >= 2.0]
        n = sum(d["answers"] for d in bins)
        if n:
          far.append(sum(d["accuracy"] * d["answers"] for d in bins) / n)
      if far:
        parts.append(f"acc_beyond_2W {sum(far) / len(far):.3f} (min {min(far):.3f}, max {max(far):.3f})")
      lines.append(f"{name}: {len(rows)} seeds; " + "; ".join(parts))
    pairs = defaultdict(lambda: defaultdict(list))
    for r in read_csv(os.path.join(results, "pairs.csv")):
      pairs[group_name(r)][r["num_pairs"]].append(r["accuracy"])
    for name, by_n in sorted(pairs.items()):
      lines.append(f"{name}: accuracy beyond W by stored pairs: "
                   + ", ".join(f"{n}: {sum(v) / len(v):.3f}" for n, v in sorted(by_n.items())))
  if experiment == "memory_capacity":
    cap = read_csv(os.path.join(results, "capacity.csv"))
    for rule in ("outer", "delta", "wedge"):
      for write in ("exact", "chunk_mean"):
        mine = [c for c in cap if c["rule"] == rule and c["write"] == write]
        for D in sorted({c["D"] for c in mine}):
          rows = sorted((c for c in mine if c["D"] == D), key=lambda c: c["pairs"])
          ok = [c["pairs_per_D"] for c in rows if c["top1"] >= 0.9]
          lines.append(f"{rule} {write} D={D}: top-1 >= 0.9 up to N/D = {max(ok) if ok else 0:g}; "
                       f"at N = D top-1 {next((c['top1'] for c in rows if c['pairs'] == D), float('nan')):.3f}")
      errs = [c["scan_vs_recurrence"] for c in cap if c["rule"] == rule and c["write"] == "exact"]
      if errs:
        lines.append(f"{rule}: chunked scan vs per-token recurrence, max relative error {max(errs):.2e}")
  if experiment == "long_context_lm":
    by = defaultdict(lambda: defaultdict(dict))  # mechanism -> context -> seed -> NLL of positions >= W
    for r in read_csv(os.path.join(results, "nll.csv")):
      if r.get("nll_far") is not None:
        by[r["mechanism"]][r["context_length"]][r["seed"]] = r["nll_far"]
    for mech, per_len in sorted(by.items()):
      parts = []
      for n, seeds in sorted(per_len.items()):
        v = list(seeds.values())
        m, sd = _mean_sd(v)
        parts.append(f"{n}: {m:.3f}" + (f" +- {sd:.3f} ({len(v)} seeds)" if len(v) > 1 else ""))
      lines.append(f"{mech} NLL >= W by context: " + ", ".join(parts))
    if "tc" in by and "window" in by:  # paired by seed and context (the same text)
      diffs = [by["tc"][n][s] - by["window"][n][s] for n in by["tc"] for s in by["tc"][n]
               if s in by["window"].get(n, {})]
      if diffs:
        lines.append(f"tc - window, NLL >= W, per seed and context ({len(diffs)} pairs): mean "
                     f"{sum(diffs) / len(diffs):+.4f}, min {min(diffs):+.4f}, max {max(diffs):+.4f}, "
                     f"tc lower in {sum(d < 0 for d in diffs)}")
  if experiment == "ablations":
    means = ablation_means(read_csv(os.path.join(results, "nll.csv")))
    base = means.get("exact")
    for title, names in ABLATION_GROUPS:
      parts = []
      for n in (n for n in names if n in means):
        m = means[n]
        delta = f" ({m['nll_far'] - base['nll_far']:+.3f} vs exact)" if base and n != "exact" else ""
        parts.append(f"{n} {m['nll_all']:.3f} / {m['nll_far']:.3f}{delta}")
      lines.append(f"{title} (NLL all / >= W, mean over contexts): " + "; ".join(parts))
  return lines


FIGURES = {
    "recall": plot_recall,
    "memory_capacity": plot_memory_capacity,
    "systems_scaling": plot_systems_scaling,
    "long_context_lm": plot_lm,
    "ablations": plot_ablations,
}


def _define_flags() -> None:
  flags.DEFINE_string("experiment", None, f"One of {sorted(FIGURES)}.", required=True)
  flags.DEFINE_string("results", None, "The results directory (default: results/<experiment>).")


def main(argv):
  del argv
  f = flags.FLAGS
  if f.experiment not in FIGURES:
    raise app.UsageError(f"Unknown experiment {f.experiment!r}; choose one of {sorted(FIGURES)}.")
  results = f.results or os.path.join(ROOT, "results", f.experiment)
  paths = FIGURES[f.experiment](results)
  if not paths:
    raise app.UsageError(f"No CSV of {f.experiment} found in {results}.")
  print("\n".join(paths + summarize(f.experiment, results)))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
