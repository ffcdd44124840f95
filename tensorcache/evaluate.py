"""Evaluation protocols (docs/method.md §9): distance-stratified streaming NLL and recall accuracy.

Both stream the inputs through the model's cache with the chunked prefill (identical to
token by token), so baselines trained dense are evaluated with their inference window.

``python -m tensorcache.evaluate --workdir=/tmp/run --source=stdlib --context_lengths=512,2048``
writes ``<workdir>/eval_nll.csv`` with rows ``mode, context_length, nll_all, nll_far, nll_vfar,
nll_ge_<m>W..., tokens, tokens_per_s, cache_bytes, peak_device_bytes``; ``--source=recall``
writes ``<workdir>/eval_recall.csv`` with accuracy per distance bin and number of pairs.

``--seq_shards=N`` evaluates NLL with the parallel forward instead, its positions split over
``N`` devices (sequence parallelism: a context no single device holds). It equals the
streaming pass wherever training and streaming share their semantics (``compat`` and
``memory_mode`` exact, L1 trained windowed or ``full``) and refuses other models.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from tensorcache import checkpoint, cli, data, inference, sharding
from tensorcache.config import ModelConfig
from tensorcache.model import GPT
from tensorcache.train_step import forward


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def peak_device_bytes() -> int | None:
  """Peak bytes in use on the first local device so far in this process (earlier lengths and
  compiles included), where the backend reports it (not CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def streaming_logprobs(model: GPT, params, inputs, targets, *, chunk: int = 256, batch: int = 8):
  """Per-token log-likelihood ``[N, T]`` of ``targets``, streaming ``inputs`` in chunks.

  The log-probabilities are taken inside the prefill scan (``inference.prefill_logprobs``),
  so no ``[batch, T, V]`` logits exist and the length is bounded by the ``[N, T]`` output
  only. Rows are padded to a multiple of ``batch`` so every call has one shape (one compile).
  """
  n = inputs.shape[0]
  if not n:
    raise ValueError("no evaluation windows: the data source gave no sequence of the requested length.")
  batch = min(batch, n)
  pad = -n % batch
  inputs, targets = (np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in (inputs, targets))
  out = []
  for i in range(0, inputs.shape[0], batch):
    (logp, _), _ = inference.prefill_logprobs(model, params, inputs[i:i + batch], targets[i:i + batch], chunk=chunk)
    out.append(np.asarray(logp))
  return np.concatenate(out)[:n]


def sharded_logprobs(cfg: ModelConfig, params, inputs, targets, seq: int, *, batch: int = 8,
                     devices: Sequence[jax.Device] | None = None):
  """Per-token log-likelihood ``[N, T]`` from the parallel forward, positions split over
  ``seq`` devices (mesh ``data x seq`` over ``devices``, default every device), ``batch``
  rows per call.

  Raises ``ValueError`` for a model whose parallel forward differs from its streaming one.
  """
  if cfg.compat != "exact" or cfg.memory_mode != "exact" or not (cfg.train_window or cfg.mechanism == "full"):
    raise ValueError("--seq_shards needs the parallel forward to equal streaming: compat='exact', "
                     "memory_mode='exact' and train_window=True (or mechanism='full').")
  mesh = sharding.make_mesh(-1, 1, devices, seq=seq)
  rows = sharding.batch_shards(mesh)
  batch = -(-min(batch, inputs.shape[0]) // rows) * rows
  n = inputs.shape[0]
  pad = -n % batch
  inputs, targets = (np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in (inputs, targets))
  out = []
  for i in range(0, inputs.shape[0], batch):
    part = sharding.shard_batch({"inputs": inputs[i:i + batch], "targets": targets[i:i + batch]}, mesh)
    out.append(np.asarray(_sharded_logprobs(params, part["inputs"], part["targets"], cfg=cfg, mesh=mesh)))
  return np.concatenate(out)[:n]


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"))
def _sharded_logprobs(params, inputs, targets, *, cfg: ModelConfig, mesh):
  """One batch of ``sharded_logprobs``: one compile per model, mesh and shape, shared by
  every call (``evaluate_nll`` compiles on a first batch, then times the rest)."""
  inputs, targets = (sharding.to_seq_layout(x, mesh, cfg.seq_balanced) for x in (inputs, targets))
  ce = forward(params, inputs, cfg, mesh, targets=targets)[0]
  return sharding.from_seq_layout(-ce, mesh, cfg.seq_balanced)


def stratified_nll(nll, weights, window: int, multiples: Sequence[float] = (1, 4)) -> dict[str, float]:
  """Mean NLL over all positions and over positions ``>= m * W`` (``far``: m=1, ``vfar``: m=4)."""
  pos = np.arange(nll.shape[1])[None]
  row = {"nll_all": float((nll * weights).sum() / max(weights.sum(), 1))}
  for m in multiples:
    w = weights * (pos >= m * window)
    name = {1: "nll_far", 4: "nll_vfar"}.get(m, f"nll_ge_{m:g}W")
    row[name] = float((nll * w).sum() / w.sum()) if w.sum() else float("nan")
  return row


def evaluate_nll(cfg: ModelConfig, params, data_config, context_lengths: Sequence[int], *, num_windows: int = 8,
                 multiples: Sequence[float] = (1, 4), chunk: int = 256, min_len: int | None = None,
                 seq_shards: int = 0) -> list[dict]:
  """One row per context length: stratified NLL, throughput and memory of the streaming pass
  (of the parallel forward split over ``seq_shards`` devices when that is > 0)."""
  rows = []
  for length in context_lengths:
    fit = cfg.replace(max_len=max(cfg.max_len, length)) if cfg.mechanism == "full" else cfg
    model = GPT(fit)
    win = data.make_eval_windows(data_config, seq_len=length, num_windows=num_windows,
                                 min_len=None if min_len is None else min(min_len, length))
    if seq_shards:
      run = lambda x, y: sharded_logprobs(fit, params, x, y, seq_shards)
    else:
      run = lambda x, y: streaming_logprobs(model, params, x, y, chunk=chunk)
    run(win["inputs"][:8], win["targets"][:8])  # compile
    t0 = time.perf_counter()
    logp = run(win["inputs"], win["targets"])
    seconds = time.perf_counter() - t0
    row = {"mode": cfg.mechanism, "context_length": length}
    row.update(stratified_nll(-logp, win["weights"], cfg.window, multiples))  # full too: the same strata
    row.update(tokens=int(win["weights"].sum()), tokens_per_s=float(win["weights"].sum() / seconds),
               cache_bytes=_nbytes(jax.eval_shape(lambda: inference.init_cache(fit, 1))),
               peak_device_bytes=peak_device_bytes())
    rows.append(row)
  return rows


def recall_accuracy(cfg: ModelConfig, params, data_config, *, seq_len: int, num_examples: int = 64,
                    bin_edges: Sequence[float] = (0, 1, 2, 4, 8), chunk: int = 256) -> list[dict]:
  """Answer accuracy (greedy) per distance bin in window multiples, for one task config.

  Bins are ``[e_i * W, e_{i+1} * W)``; the last is open-ended. Rows carry ``num_pairs``.
  """
  model = GPT(cfg)
  ex = data.make_eval_windows(data_config, seq_len=seq_len, num_windows=num_examples)
  correct = []
  for i in range(0, ex["inputs"].shape[0], 8):
    targets = ex["targets"][i:i + 8]
    (_, argmax), _ = inference.prefill_logprobs(model, params, ex["inputs"][i:i + 8], targets, chunk=chunk)
    correct.append(np.asarray(argmax) == targets)
  correct = np.concatenate(correct)
  answer = ex["weights"] > 0
  dist = ex["distance"] / cfg.window
  edges = list(bin_edges) + [np.inf]
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = answer & (dist >= lo) & (dist < hi)
    if sel.any():
      rows.append({"mode": cfg.mechanism, "num_pairs": int(dict(data_config).get("num_pairs", 0)),
                   "distance_lo_W": lo, "distance_hi_W": hi, "answers": int(sel.sum()),
                   "accuracy": float(correct[sel].mean())})
  return rows


def write_csv(path: str, rows: list[dict]) -> None:
  """Writes rows (union of keys, first-seen order) to a CSV file."""
  fields = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (importing defines none)."""
  flags.DEFINE_string("workdir", None, "Checkpoint directory (train or convert output).")
  flags.DEFINE_string("source", "stdlib", f"Data source: one of {data.SOURCES} (default: the run's).")
  flags.DEFINE_string("path", "", "Data path (dir / tfds sources).")
  flags.DEFINE_string("tokenizer", "byte", "Tokenizer for corpora.")
  flags.DEFINE_list("context_lengths", ["512", "2048"], "Streamed window lengths (NLL).")
  flags.DEFINE_integer("num_windows", 8, "Evaluation windows per context length.")
  flags.DEFINE_list("multiples", ["1", "4"], "Distance bins for NLL, in window multiples.")
  flags.DEFINE_integer("min_len", None, "Keep documents shorter than the context down to this length.")
  flags.DEFINE_list("num_pairs", ["16"], "Recall: numbers of stored pairs to evaluate.")
  flags.DEFINE_integer("distance", 64, "Recall: filler tokens before the first query (min).")
  flags.DEFINE_integer("distance_max", 0, "Recall: maximum filler (0: fixed distance).")
  flags.DEFINE_integer("seq_len", 512, "Recall: example length (default: the run's).")
  flags.DEFINE_integer("chunk", 256, "Prefill chunk.")
  flags.DEFINE_integer("seq_shards", 0, "NLL from the parallel forward split over this many devices (0: stream).")
  flags.DEFINE_string("output", "", "CSV path (default: <workdir>/eval_<nll|recall>.csv).")


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required (a checkpoint directory).")
  cfg, params, step = checkpoint.load_model(f.workdir)
  # The data section of the training run (when there is one), then the flags given explicitly.
  run = checkpoint.load_run_config(f.workdir) or {}
  base = dict(run.get("data", {}))
  for name in ("source", "path", "tokenizer", "distance", "distance_max"):
    if f[name].present or name not in base:
      base[name] = f[name].value
  seq_len = f.seq_len if f["seq_len"].present else run.get("train", {}).get("seq_len", f.seq_len)
  print(f"{cfg.mechanism} model of step {step} from {f.workdir}; evaluating on {base['source']}", flush=True)
  if base["source"] in data.TASKS:
    rows = []
    pairs = f.num_pairs if f["num_pairs"].present or "num_pairs" not in base else [base["num_pairs"]]
    for n in pairs:
      dc = dict(base, num_pairs=int(n))
      rows += recall_accuracy(cfg, params, dc, seq_len=seq_len, num_examples=f.num_windows, chunk=f.chunk)
    name = "recall"
  else:
    rows = evaluate_nll(cfg, params, base, [int(x) for x in f.context_lengths], num_windows=f.num_windows,
                        multiples=[float(m) for m in f.multiples], chunk=f.chunk, min_len=f.min_len,
                        seq_shards=f.seq_shards)
    name = "nll"
  path = f.output or os.path.join(f.workdir, f"eval_{name}.csv")
  write_csv(path, rows)
  for row in rows:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
  print(f"step {step}: wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
