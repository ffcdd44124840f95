"""The README's demo: train Tensor Cache, window-only and full attention on associative
recall whose answers lie mostly beyond the window, evaluate them, print a table, save a plot.

``python -m tensorcache.demo [--workdir=demo_out] [--reuse]`` runs ``experiments/recall_demo.py``'s
three arms on the CPU, printing a line per arm and phase and the training progress. Each run
starts fresh (earlier runs' arm directories in ``--workdir`` are replaced); ``--reuse`` resumes
from them instead (a finished arm is then only evaluated). It writes
``<workdir>/recall_demo.csv`` (accuracy per distance bin) and ``<workdir>/recall_demo.png``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time

import jax
import numpy as np
from absl import flags

from tensorcache import checkpoint, cli, evaluate, inference, train


EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "recall_demo.py")
PLOT_BINS = (0, 0.5, 1, 1.5, 2, 2.5, 3)  # distance bins in window multiples


def _experiment():
  spec = importlib.util.spec_from_file_location("recall_demo", EXPERIMENT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def cache_bytes(cfg, tokens: int) -> int:
  """Streaming-state bytes per sequence after ``tokens`` tokens (shapes only, no allocation)."""
  if cfg.mechanism == "full":
    cfg = cfg.replace(max_len=tokens)
  shapes = jax.eval_shape(lambda: inference.init_cache(cfg, 1))
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))


def _plot(path: str, curves: dict, window: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.6))
  for arm, rows in curves.items():
    mid = [(r["distance_lo_W"] + min(r["distance_hi_W"], PLOT_BINS[-1] + 0.5)) / 2 for r in rows]
    ax.plot(mid, [r["accuracy"] for r in rows], marker="o", label=arm)
  ax.axvline(1.0, color="gray", ls="--", lw=1)
  ax.text(1.02, 0.02, f"window W={window}", color="gray", transform=ax.get_xaxis_transform())
  ax.set(xlabel="distance from stored pair to query (multiples of W)", ylabel="recall accuracy",
         ylim=(0, 1.02), title="Associative recall beyond the window")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (importing defines none)."""
  flags.DEFINE_string("workdir", "demo_out", "Where the three runs, the CSV and the plot go.")
  flags.DEFINE_integer("eval_examples", 512, "Validation examples per arm.")
  flags.DEFINE_bool("reuse", False, "Resume from the arms' earlier runs in --workdir instead of starting fresh.")
  flags.DEFINE_integer("steps", None, "Training steps per arm (default: the experiment's 600).")


def _prepare(workdir: str, reuse: bool) -> str:
  """Says whether the arm in ``workdir`` starts fresh or reuses an earlier run; a fresh start
  removes an earlier run of the demo there (a directory the trainer wrote: checkpoints and
  config.json), and refuses to touch anything else."""
  if not os.path.exists(workdir):
    return "fresh"
  ours = os.path.isfile(os.path.join(workdir, "config.json")) and os.path.isdir(
      os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  if not ours and os.listdir(workdir):
    raise cli.UserError(f"{workdir} exists and is not a run of this demo; choose another --workdir.")
  if reuse:
    return "reusing the earlier run in " + workdir
  shutil.rmtree(workdir)
  return "fresh (replaced the earlier run; --reuse resumes from it)"


def main(argv):
  del argv
  f = flags.FLAGS
  exp = _experiment()
  arms = exp.sweep()
  plans = {arm: _prepare(os.path.join(f.workdir, arm), f.reuse) for arm in arms}  # fail before training
  os.makedirs(f.workdir, exist_ok=True)
  table, curves, csv_rows = [], {}, []
  for n, arm in enumerate(arms, 1):
    config = exp.get_config(arm)
    if f.steps is not None:
      config.train.update(steps=f.steps, checkpoint_every=f.steps)
    print(f"[{n}/{len(arms)}] {arm}: training {config.train.steps} steps, {plans[arm]}", flush=True)
    t0 = time.perf_counter()
    state = train.train(config, os.path.join(f.workdir, arm))
    seconds = time.perf_counter() - t0
    print(f"[{n}/{len(arms)}] {arm}: trained in {seconds:.0f} s; evaluating on {f.eval_examples} "
          "validation sequences", flush=True)
    cfg = train.model_config(config.model)
    kw = dict(seq_len=config.train.seq_len, num_examples=f.eval_examples)
    split = evaluate.recall_accuracy(cfg, state.params, config.data, bin_edges=(0, 1), **kw)
    curves[arm] = evaluate.recall_accuracy(cfg, state.params, config.data, bin_edges=PLOT_BINS, **kw)
    csv_rows += curves[arm]
    acc = {r["distance_lo_W"]: r for r in split}
    table.append((arm, acc[0]["accuracy"], acc[0]["answers"], acc[1]["accuracy"], acc[1]["answers"],
                  cache_bytes(cfg, config.train.seq_len), cache_bytes(cfg, 1 << 20), seconds))
  evaluate.write_csv(os.path.join(f.workdir, "recall_demo.csv"), csv_rows)
  png = os.path.join(f.workdir, "recall_demo.png")
  _plot(png, curves, cfg.window)

  print(f"\nMulti-query associative recall, W={cfg.window}, chance 1/16 = 0.06 "
        f"({f.eval_examples} validation sequences per arm)\n")
  head = (f"{'mechanism':<10} {'acc < W':>8} {'(n)':>6} {'acc >= W':>9} {'(n)':>6} "
          f"{'cache @64 tok':>14} {'cache @1M tok':>14} {'train s':>8}")

  def size(n):
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"

  print(head + "\n" + "-" * len(head))
  for arm, a_in, n_in, a_out, n_out, b64, b1m, sec in table:
    print(f"{arm:<10} {a_in:>8.3f} {n_in:>6} {a_out:>9.3f} {n_out:>6} {size(b64):>14} "
          f"{size(b1m):>14} {sec:>8.0f}")
  print(f"\nPlot: {png}\nPer-bin accuracies: {os.path.join(f.workdir, 'recall_demo.csv')}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
