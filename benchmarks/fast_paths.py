"""Fast-path benchmark: correctness, speed and peak device memory of every hot path, one run.

Command (GPU machine, one H200, from the repository root):

  PYTHONPATH=. python benchmarks/fast_paths.py --out $OUT/fast_paths.json
  bash benchmarks/fast_paths.sh                       # the same; OUT defaults to /tmp/fast_paths

Smoke run (CPU, tiny shapes: 2 layers, T 256; about 2-3 minutes on 2 cores):

  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/fast_paths.py --quick --out /tmp/fp.json

Sections (``--only=l1,memory,tc_attention,train,prefill,decode``; all by default):

  l1            L1 alone, B 4, T 16384, H 12, D 64, W 512/1024: ``dispatch.l1_attention`` impl
                xla and auto against cuDNN sliding-window attention; fwd and fwd+bwd; errors.
  memory        L2 alone (``mechanisms.tc_parallel``), H 12 D 64 and H 8 D 128, rules outer,
                delta, wedge as dispatched and delta's XLA form; fwd and fwd+bwd as a fraction of the copy bandwidth measured in
                the same process; chunked vs per-token reference at T 2048 in float32.
  tc_attention  L1 + L2 read, fwd+bwd, W 512/1024/4096, against cuDNN alone.
  train         GPT-124M AdamW step, batch 8 x 1024, W 512, bf16: window, full, tc outer,
                tc delta; tokens/s, MFU, peak memory.
  prefill       124M, tc delta, W 1024, batch 1: 8K, 64K, 1M tokens; tokens/s, peak memory.
  decode        124M, tc delta, W 1024, batch 1 and 64: ``inference.generate`` (whole loop in
                one jit) and a ``decode_step`` loop; tokens/s.

Device: one NVIDIA H200 (jax 0.11.2, CUDA). Expected run time: 5-8 minutes wall, compiles
included (not yet run there: the estimate counts process starts, about 45 compiles and the
timed runs); ``--budget_s`` (default 450) bounds it: each group of cases runs in its own
process (``fast_paths_cases.py``) under the time left, in priority order (``plan``); groups
that no longer fit are skipped and marked so in the table and the JSON. Writes JSON (every
number, device, jax version, date, git commit) and prints one table last.

Memory figures: train, prefill and decode run each arm / length in a fresh process, so
``peak_bytes_in_use`` of the device is that case's clean peak (parameters, optimiser state,
inputs and temporaries). The micro-benchmarks (l1, memory, tc_attention) share a process;
their per-case figure is the compiled executable's ``memory_analysis()`` (arguments +
outputs + temporaries - aliased), not a measured peak.

This file imports no JAX: it plans the groups, runs them, evaluates the targets and writes
the report, so the device belongs to one case process at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = pathlib.Path(__file__).resolve().parent / "fast_paths_cases.py"
SECTIONS = ("l1", "memory", "tc_attention", "train", "prefill", "decode")
MICRO = ("l1", "memory", "tc_attention")
TRAIN_ARMS = ("window", "full", "tc_outer", "tc_delta", "tc_delta_remat", "gpt2_b32")

PEAK_TFLOPS = 790.0  # bf16 matmul ceiling measured on the H200 (PERFORMANCE.md)
NOMINAL_TBPS = 4.3  # device copy, bytes read + written (PERFORMANCE.md)
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Shapes of every section (the full run; ``QUICK`` is the CPU smoke run)."""

  B: int = 4
  T: int = 16384
  l1_shape: tuple = (12, 64)  # (H, D)
  l1_windows: tuple = (512, 1024)
  mem_shapes: tuple = ((12, 64), (8, 128))
  mem_window: int = 512
  mem_check_T: int = 2048
  tc_windows: tuple = (512, 1024, 4096)
  copy_bytes: int = 2**30
  vocab: int = 50304
  n_layer: int = 12
  n_head: int = 12
  d_model: int = 768
  train_B: int = 8
  train_T: int = 1024
  train_W: int = 512
  stream_W: int = 1024
  prefill_lengths: tuple = (8192, 65536, 1048576)
  prefill_chunk: int = 1024
  decode_batches: tuple = (1, 64)
  decode_prompt: int = 16
  decode_new: int = 256
  decode_steps: int = 64


FULL = Sizes()
QUICK = Sizes(
    B=1, T=256, l1_shape=(2, 16), l1_windows=(32, 64), mem_shapes=((2, 16), (2, 32)),
    mem_window=32, mem_check_T=128, tc_windows=(32, 64, 128), copy_bytes=2**24, vocab=256,
    n_layer=2, n_head=2, d_model=64, train_B=2, train_T=128, train_W=32, stream_W=64,
    prefill_lengths=(256, 1024, 4096), prefill_chunk=64, decode_batches=(1, 4),
    decode_prompt=8, decode_new=16, decode_steps=8)


def sizes(quick: bool) -> Sizes:
  return QUICK if quick else FULL


def tokens_name(n: int) -> str:
  """8192 -> '8K', 1048576 -> '1M', 256 -> '256'."""
  for unit, size in (("M", 2**20), ("K", 2**10)):
    if n >= size and n % size == 0:
      return f"{n // size}{unit}"
  return str(n)


# ------------------------------------------------------------------ targets

# The targets (fast paths, item 7) and PERFORMANCE.md's, as numbers.
TARGETS = {
    "l1_vs_cudnn": 1.0,  # K3: an L1 of our own faster than cuDNN
    "l1_fwd_err": 2e-2,  # bf16, max |ours - cuDNN| / max |cuDNN|
    "l1_bwd_err": 5e-2,
    "mem_fwd_bw": 0.65,  # K1, fraction of the measured copy bandwidth
    "mem_bwd_bw": 0.50,
    "mem_delta_vs_outer": 2.0,  # fwd+bwd time, same shape
    "mem_check_err": 1e-4,  # float32, highest matmul precision, relative to max |reference|
    "tc_vs_cudnn": 1.15,  # K2
    "train_window_tok_s": 350e3,
    "train_tc_vs_window": 0.55,
    "train_tc_peak_vs_window": 1.5,
    "m1_tok_s": 280e3,  # M1 (PERFORMANCE.md): tc delta
    "m1_vs_window": 0.8,
    "prefill_64k_tok_s": 100e3,  # the issue; M2 asks 250k
    "m2_tok_s": 250e3,
    "prefill_peak_1m_vs_8k": 1.05,
    "decode_b1_tok_s": 2.5e3,
    "decode_b64_tok_s": 45e3,
}


# ------------------------------------------------------------------ provenance


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def source_hash() -> str:
  """sha256 over the library and benchmark sources: identifies the code where .git is absent."""
  h = hashlib.sha256()
  for path in sorted([*ROOT.glob("tensorcache/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
    h.update(str(path.relative_to(ROOT)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()[:16]


def provenance(args) -> dict:
  status = _git("status", "--porcelain", "--", "tensorcache", "benchmarks")
  return {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "git_commit": args.commit or _git("rev-parse", "HEAD") or os.environ.get("GIT_COMMIT", "unknown"),
      "git_dirty": None if status is None else bool(status),
      "source_sha256": source_hash(),
      "host": platform.node(),
      "argv": sys.argv,
      "quick": args.quick,
      "budget_s": args.budget_s,
      "memory_method": (
          "train/prefill/decode: device peak_bytes_in_use of a fresh process per arm/length "
          "(clean peak); l1/memory/tc_attention: compiled memory_analysis() "
          "argument+output+temp-alias bytes per case"),
      "mfu_convention": (
          "(6 * N * tokens + attention) / step time / 790 TFLOP/s; N = all parameters counted "
          "once (the tied embedding is the LM-head matmul); attention = 3.5 * 4*B*H*D*sum_t "
          "min(t+1, W) per layer (W = T for full); the memory path's FLOPs are not counted"),
  }


# ------------------------------------------------------------------ running the groups


@dataclasses.dataclass
class Group:
  """One case process: its name, its arguments, the most wall time it may take and the least
  it needs to be worth starting (process start, device init, compiles)."""

  name: str
  args: list
  cap_s: float
  min_s: float = 45.0


def plan(args) -> list[Group]:
  """Groups in priority order, so a budget that runs short costs the least needed ones: the
  micro-benchmarks, the window and tc delta training arms (the baseline and the M1 arm),
  decode, prefill by length (1M is skipped when its projection does not fit), then the
  tc outer and full training arms."""
  S = sizes(args.quick)
  only = args.only
  micro = [s for s in MICRO if s in only]
  train = {a: Group(f"train_{a}", ["--case", "train", "--arm", a], 150)
           for a in args.train_arms} if "train" in only else {}
  groups = [Group("micro", ["--case", "micro", "--sections", ",".join(micro)], 240, 60)] if micro else []
  groups += [train.pop(a) for a in ("window", "tc_delta") if a in train]
  if "decode" in only:
    groups.append(Group("decode", ["--case", "decode"], 150))
  if "prefill" in only:
    groups += [Group(f"prefill_{n}", ["--case", "prefill", "--length", str(n)], 240, 30)
               for n in S.prefill_lengths]
  return groups + list(train.values())


def common_args(args) -> list:
  out = ["--warmup", str(args.warmup), "--iters", str(args.iters), "--max_case_s", str(args.max_case_s),
         "--train_steps", str(args.train_steps), "--tc_rules", ",".join(args.tc_rules)]
  if args.prefill_chunk:
    out += ["--prefill_chunk", str(args.prefill_chunk)]
  return out + (["--quick"] if args.quick else [])


def child_env() -> dict:
  env = dict(os.environ)
  paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def read_records(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # a line cut by a timeout
  return records


def prefill_projection(records: list[dict], length: int) -> float | None:
  """Seconds a prefill of ``length`` tokens should take, from the longest one measured."""
  done = [r for r in records if r.get("section") == "prefill" and r.get("tok_s")]
  if not done:
    return None
  best = max(done, key=lambda r: r["length"])
  return length / best["tok_s"]


def run_group(group: Group, args, timeout: float, workdir: pathlib.Path) -> tuple[dict, list[dict]]:
  result = workdir / f"{group.name}.jsonl"
  cmd = [sys.executable, str(CASES), *group.args, *common_args(args), "--result", str(result)]
  print(f"\n=== {group.name} (timeout {timeout:.0f} s): {' '.join(group.args)}", flush=True)
  t0 = time.perf_counter()
  try:
    rc = subprocess.run(cmd, cwd=str(ROOT), env=child_env(), timeout=timeout).returncode
    status = "ok" if rc == 0 else f"exit {rc}"
  except subprocess.TimeoutExpired:
    status = f"timeout after {timeout:.0f} s"
  info = {"group": group.name, "status": status, "wall_s": round(time.perf_counter() - t0, 1)}
  return info, read_records(result)


def run_all(args) -> tuple[list[dict], list[dict]]:
  start = time.perf_counter()
  groups_info, records = [], []
  with tempfile.TemporaryDirectory(prefix="fast_paths_") as tmp:
    for group in plan(args):
      left = args.budget_s - (time.perf_counter() - start)
      need = group.min_s
      if group.name.startswith("prefill_"):
        projected = prefill_projection(records, int(group.args[-1]))
        need += 0.0 if projected is None else 1.5 * projected
      if left < need:
        reason = f"skipped: {left:.0f} s of budget left, needs about {need:.0f} s"
        print(f"\n=== {group.name}: {reason}", flush=True)
        groups_info.append({"group": group.name, "status": reason, "wall_s": 0.0})
        continue
      info, recs = run_group(group, args, min(group.cap_s * args.cap_scale, left), pathlib.Path(tmp))
      groups_info.append(info)
      records += recs
  return groups_info, records


# ------------------------------------------------------------------ rows and targets


def _row(section, case, ms=None, rate="", ratio="", target="", ok=None) -> dict:
  status = "-" if ok is None else ("pass" if ok else "FAIL")
  return {"section": section, "case": case, "ms": ms, "rate": rate, "ratio": ratio,
          "target": target, "status": status}


def _ratio(x, what):
  return "" if x is None else f"{x:.2f}x {what}"


def _gb(x):
  return "" if x is None else f"{x / GB:.2f} GB"


def rows_copy(r):
  return [_row("memory", r["case"], r["ms"], f"{r['tbps']:.2f} TB/s", f"{r['tbps'] / NOMINAL_TBPS:.2f} of 4.3")]


def rows_l1(r):
  if r.get("kind") == "check":
    ok = r["fwd_err"] <= TARGETS["l1_fwd_err"] and r["bwd_err"] <= TARGETS["l1_bwd_err"]
    return [_row("l1", r["case"], None, f"err {r['fwd_err']:.1e}/{r['bwd_err']:.1e}", "",
                 f"<= {TARGETS['l1_fwd_err']:.0e}/{TARGETS['l1_bwd_err']:.0e}", ok)]
  base = r["impl"] == r["baseline"]
  ok = None if base or r["ratio"] is None else r["ratio"] <= TARGETS["l1_vs_cudnn"]
  return [_row("l1", r["case"], r["ms"], f"{r['tflops']:.1f} TFLOP/s", _ratio(r["ratio"], "base"),
               "" if base else "<= 1.00x (K3)", ok)]


def rows_memory(r):
  if r.get("kind") == "copy":
    return rows_copy(r)
  if r.get("kind") == "check":
    ok = max(r["fwd_err"], r["bwd_err"]) <= TARGETS["mem_check_err"]
    return [_row("memory", r["case"], None, f"err {r['fwd_err']:.1e}/{r['bwd_err']:.1e}", "",
                 f"<= {TARGETS['mem_check_err']:.0e}", ok)]
  if r.get("kind") == "delta_vs_outer":
    return [_row("memory", r["case"], None, "", f"{r['ratio']:.2f}x outer",
                 f"<= {TARGETS['mem_delta_vs_outer']:.1f}x", r["ratio"] <= TARGETS["mem_delta_vs_outer"])]
  if r["mode"] == "fwd":
    frac, need = r["frac_copy"], TARGETS["mem_fwd_bw"]
    rate = f"{frac:.1%} of copy BW"
  else:
    frac, need = r.get("bwd_frac_copy"), TARGETS["mem_bwd_bw"]
    rate = "bwd n/a" if frac is None else f"bwd {frac:.1%} of copy BW"
  ok = None if frac is None else frac >= need
  return [_row("memory", r["case"], r["ms"], rate, f"{r['floor_ratio']:.1f}x floor",
               f">= {need:.0%} (K1)", ok)]


def rows_tc(r):
  base = r["impl"] == r["baseline"]
  ok = None if base or r["ratio"] is None else r["ratio"] <= TARGETS["tc_vs_cudnn"]
  return [_row("tc_attention", r["case"], r["ms"], "", _ratio(r["ratio"], "base"),
               "" if base else f"<= {TARGETS['tc_vs_cudnn']:.2f}x (K2)", ok)]


def rows_train(records):
  arms = {r["arm"]: r for r in records if r.get("section") == "train" and "tok_s" in r}
  window = arms.get("window")
  rows = []
  for arm in TRAIN_ARMS:
    r = arms.get(arm)
    if r is None:
      continue
    rate = f"{r['tok_s'] / 1e3:.1f}k tok/s, MFU {r['mfu']:.1%}"
    if "tok_s_blocked" in r:  # each step waited on alone
      rate += f" (blocked {r['tok_s_blocked'] / 1e3:.1f}k)"
    peak = r.get("peak_bytes") or r.get("mem_compiled_bytes")
    ratio = f"{r['tok_s'] / window['tok_s']:.2f}x window" if window else ""
    finite = r["loss_finite"]
    if arm == "window":
      rows.append(_row("train", arm, r["ms"], rate, "", ">= 350k tok/s",
                       finite and r["tok_s"] >= TARGETS["train_window_tok_s"]))
    elif arm == "gpt2_b32":
      peak_b = r.get("peak_bytes") or r.get("mem_compiled_bytes")
      rows.append(_row("train", "gpt2 preset b32 tc delta", r["ms"], rate, _gb(peak_b), "trains, peak <= 80 GB",
                       finite and peak_b is not None and peak_b <= 80 * GB))
      continue
    elif arm.startswith("tc") and window:
      ok = finite and r["tok_s"] >= TARGETS["train_tc_vs_window"] * window["tok_s"]
      rows.append(_row("train", arm, r["ms"], rate, ratio, f">= {TARGETS['train_tc_vs_window']}x window", ok))
    else:
      rows.append(_row("train", arm, r["ms"], rate, ratio, "loss finite", finite))
    rows.append(_row("train", f"{arm} peak", None, _gb(peak), "", ""))
  delta = arms.get("tc_delta")
  for arm in ("tc_delta", "tc_delta_remat"):
    r = arms.get(arm)
    if r is None or window is None:
      continue
    p_d = r.get("peak_bytes") or r.get("mem_compiled_bytes")
    p_w = window.get("peak_bytes") or window.get("mem_compiled_bytes")
    if p_d and p_w:
      ratio = p_d / p_w
      rows.append(_row("train", f"{arm} peak / window", None, _gb(p_d), f"{ratio:.2f}x window",
                       f"<= {TARGETS['train_tc_peak_vs_window']}x", ratio <= TARGETS["train_tc_peak_vs_window"]))
  if delta and window:
    ok = delta["tok_s"] >= TARGETS["m1_tok_s"] and delta["tok_s"] >= TARGETS["m1_vs_window"] * window["tok_s"]
    rows.append(_row("train", "tc_delta M1", delta["ms"], f"{delta['tok_s'] / 1e3:.1f}k tok/s",
                     f"{delta['tok_s'] / window['tok_s']:.2f}x window", ">= 280k and >= 0.8x", ok))
  for r in records:
    if r.get("section") == "train" and "tok_s" not in r and r.get("kind") == "error":
      rows.append(_row("train", r["case"], None, "ERROR", "", "", False))
  return rows


def rows_prefill(records, S: Sizes):
  done = {r["length"]: r for r in records if r.get("section") == "prefill" and "tok_s" in r}
  first, mid, last = S.prefill_lengths
  rows = []
  for n, r in sorted(done.items()):
    rate = f"{r['tok_s'] / 1e3:.1f}k tok/s, {_gb(r.get('peak_bytes') or r.get('mem_compiled_bytes'))}"
    target, ok = "logits finite", r["finite"]
    ratio = ""
    if n == mid:
      target = f">= {TARGETS['prefill_64k_tok_s'] / 1e3:.0f}k tok/s"
      ok = r["finite"] and r["tok_s"] >= TARGETS["prefill_64k_tok_s"]
    if n == last and first in done:
      p_l = r.get("peak_bytes") or r.get("mem_compiled_bytes")
      p_f = done[first].get("peak_bytes") or done[first].get("mem_compiled_bytes")
      if p_l and p_f:
        ratio = f"peak {p_l / p_f:.3f}x {tokens_name(first)}"
        target = f"peak <= {TARGETS['prefill_peak_1m_vs_8k']}x"
        ok = r["finite"] and p_l <= TARGETS["prefill_peak_1m_vs_8k"] * p_f
    rows.append(_row("prefill", r["case"], r["ms"], rate, ratio, target, ok))
  return rows


def rows_decode(r, S: Sizes):
  if r.get("kind") == "peak":
    return [_row("decode", r["case"], None, _gb(r["peak_bytes"]), "", "")]
  if r.get("mode") == "generate":
    need = TARGETS["decode_b1_tok_s"] if r["batch"] == 1 else TARGETS["decode_b64_tok_s"]
    full_batch = r["batch"] in (1, FULL.decode_batches[-1])
    target = f">= {need / 1e3:.1f}k tok/s" if full_batch else "valid tokens"
    ok = r["valid"] and (r["tok_s"] >= need if full_batch else True)
    return [_row("decode", r["case"], r["ms"], f"{r['tok_s'] / 1e3:.2f}k tok/s", "", target, ok)]
  return [_row("decode", r["case"], r["ms"], f"{r['tok_s'] / 1e3:.2f}k tok/s", "", "")]


def build_rows(records: list[dict], groups: list[dict], S: Sizes) -> list[dict]:
  rows = []
  per = {"l1": rows_l1, "memory": rows_memory, "tc_attention": rows_tc, "decode": lambda r: rows_decode(r, S)}
  for section in SECTIONS:
    recs = [r for r in records if r.get("section") == section]
    if section in per:
      for r in recs:
        error = r.get("kind") == "error"
        rows += [_row(section, r["case"], None, "ERROR", "", "", False)] if error else per[section](r)
    elif section == "train":
      rows += rows_train(records)
    else:  # prefill
      rows += rows_prefill(records, S)
      rows += [_row(section, r["case"], None, "ERROR", "", "", False) for r in recs if r.get("kind") == "error"]
  for g in groups:
    if g["status"] != "ok":
      rows.append(_row("run", g["group"], None, g["status"][:40], "", "", False))
  return rows


def print_table(rows: list[dict]) -> None:
  cols = ("section", "case", "ms", "rate", "ratio", "target", "status")
  cells = [[r["section"], r["case"], "" if r["ms"] is None else f"{r['ms']:.3f}", r["rate"], r["ratio"],
            r["target"], r["status"]] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
  line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
  print("\n" + line + "\n" + "-" * len(line))
  for row in cells:
    print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


# ------------------------------------------------------------------ main


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="fast_paths.json", help="JSON report path")
  p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
  p.add_argument("--quick", action="store_true", help="tiny shapes: a CPU smoke run")
  p.add_argument("--budget_s", type=float, default=None, help="wall budget, all groups; 450 (1200)")
  p.add_argument("--cap_scale", type=float, default=None, help="scales each group's time cap; 1 (3)")
  p.add_argument("--warmup", type=int, default=None, help="default 2 (1 with --quick)")
  p.add_argument("--iters", type=int, default=None, help="timed runs per case, median; default 15 (3)")
  p.add_argument("--max_case_s", type=float, default=None, help="stop timing a case past this; 3 (1)")
  p.add_argument("--train_steps", type=int, default=None,
                 help="training steps timed back to back as the trainer runs them; 30 (3)")
  p.add_argument("--train_arms", default=",".join(TRAIN_ARMS))
  p.add_argument("--tc_rules", default="delta", help="rules of the tc_attention section")
  p.add_argument("--prefill_chunk", type=int, default=0, help="prefill chunk (0: the preset's)")
  p.add_argument("--commit", default="", help="git commit to record where .git is absent")
  args = p.parse_args(argv)
  defaults = (("warmup", 2, 1), ("iters", 15, 3), ("max_case_s", 3.0, 1.0), ("train_steps", 30, 3),
              ("budget_s", 450.0, 1200.0),
              ("cap_scale", 1.0, 3.0))
  for name, full, quick in defaults:
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  args.only = [s for s in args.only.split(",") if s]
  args.train_arms = [a for a in args.train_arms.split(",") if a]
  args.tc_rules = [r for r in args.tc_rules.split(",") if r]
  bad = sorted(set(args.only) - set(SECTIONS)) + sorted(set(args.train_arms) - set(TRAIN_ARMS))
  if bad:
    p.error(f"unknown section(s)/arm(s) {bad}; sections {SECTIONS}, arms {TRAIN_ARMS}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  t0 = time.perf_counter()
  meta = provenance(args)
  groups, records = run_all(args)
  child_meta = next((r for r in records if r.get("kind") == "meta"), {})
  meta.update({k: v for k, v in child_meta.items() if k not in ("kind", "section", "case")})
  meta["wall_s"] = round(time.perf_counter() - t0, 1)
  rows = build_rows(records, groups, sizes(args.quick))
  report = {"meta": meta, "sizes": dataclasses.asdict(sizes(args.quick)), "targets": TARGETS,
            "groups": groups, "records": [r for r in records if r.get("kind") != "meta"],
            "process_meta": [r for r in records if r.get("kind") == "meta"], "table": rows}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1, default=str))
  print(f"\n{meta.get('device', '?')} | jax {meta.get('jax_version', '?')} | {meta['date_utc']} | "
        f"commit {meta['git_commit'][:12]} | {meta['wall_s']} s | {out}")
  print_table(rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
