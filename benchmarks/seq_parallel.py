"""Sequence-parallel benchmark: weak scaling of the GPT-124M training step over the ``seq``
mesh axis, and the longest context that trains, for ``tc`` and ring-attention ``full``.

Commands (repository root, the GPU machine; each stays inside one 10-minute call):

  PYTHONPATH=. python benchmarks/seq_parallel.py --sections=weak --gpus=1,2 --out=$OUT/weak.json
  PYTHONPATH=. python benchmarks/seq_parallel.py --sections=longest --gpus=2 --out=$OUT/longest.json
  PYTHONPATH=. python benchmarks/seq_parallel.py --sections=eval --gpus=2 --arms=tc_delta --out=$OUT/eval.json

On 4 GPUs: ``--gpus=1,2,4`` (weak) and ``--gpus=4`` (longest). ``--profile`` adds a
per-kernel summary of 3 traced steps to every weak-scaling row. A case that no longer fits the
``--budget_s`` wall budget is skipped and listed as such; pass ``--arms=tc_delta`` (etc.) to
run fewer per call.

CPU smoke run (tiny model, 2 fake devices; 2 min 50 s wall on the shared 2-core machine, its
timings meaningless: the two fake devices share the cores):

  XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
      PYTHONPATH=. python benchmarks/seq_parallel.py --smoke --out=/tmp/seq_parallel.json

What it runs, each case in a fresh process on the first ``g`` devices (mesh data=1, fsdp=1,
seq=g), the trainer's own compiled step (``train.make_train_step``: AdamW, token-mean cross
entropy, donated state, bf16), random tokens:

* weak scaling: batch ``--batch`` (1) x ``g * --tokens_per_gpu`` (8192) positions on ``g``
  GPUs, arms ``tc_delta``, ``tc_outer`` (W 512, chunk 64) and ``full`` (ring attention, zigzag,
  query blocks of 512); ``g = 1`` is the plain single-device step (no ``shard_map``). Tokens/s per GPU and the
  efficiency ``(tok/s per GPU on g) / (tok/s on 1)``, measured in the same run. ``full``
  does ``O(T)`` more attention work per token as ``T`` grows, so its efficiency is not
  expected to be ideal; ``tc``'s work per token does not depend on ``T``.
* longest context: batch 1 on the largest ``g``, contexts doubling from ``--search_from`` until a
  step fails (out of memory, or past ``--case_s``); the largest that trains is reported, for
  every arm at the same sizes (``--search_remat=block`` by default: each block keeps only its
  input; ``--search_loss_block=8192``: the head and loss over blocks of 8192 positions, so
  the ``[T, 50304]`` logits do not bound the context).
* long-context evaluation: one random sequence of ``--eval_len`` tokens (1M) scored by
  ``evaluate.sharded_logprobs`` (the parallel forward split over the ``seq`` axis, head and
  loss over blocks of ``--search_loss_block``), random weights, on 1 GPU and on the largest
  ``g``: time (the second call; the first compiles), peak memory, or the out-of-memory error
  that shows a sequence no single GPU holds.

Timing: compile excluded; ``--warmup`` steps, then ``--iters`` steps run back to back as the
trainer runs them (step ``i + 1`` dispatched before step ``i``'s loss is read:
``fast_paths_cases.pipelined``), the rate and efficiency reported; beside them the median of
``--iters`` steps each waited on alone (``ms_blocked``; runs 1-3 reported only that).
Writes JSON (every case, device, jax version, date, git commit) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

GPT124M = dict(n_layer=12, n_head=12, d_model=768, vocab_size=50304, dtype="bfloat16")
SMOKE = dict(n_layer=2, n_head=2, d_model=64, vocab_size=256, dtype="bfloat16")


def case_main(case: dict) -> dict:
  """One case in this process: compile the train step, time it, report one dict."""
  import jax
  import numpy as np

  from fast_paths_cases import pipelined
  from tensorcache import optim, sharding, train
  from tensorcache.config import ModelConfig

  g, T, B = case["gpus"], case["seq_len"], case["batch"]
  mechanism, _, rule = case["arm"].partition("_")
  cfg = ModelConfig(**case["model"], mechanism=mechanism, rule=rule or "delta", window=case["window"],
                    chunk=case["chunk"], attn_block=case["attn_block"], max_len=T, remat=case["remat"],
                    loss_block=case.get("loss_block", 0))
  if case["section"] == "eval":
    return eval_case(case, cfg)
  mesh = sharding.make_mesh(1, 1, jax.devices()[:g], seq=g)
  spec = train.StepSpec(cfg, optim.OptimConfig(warmup_steps=0, decay_steps=1000), mesh, internal_metrics=False)
  state, _ = train.create_train_state(spec, 0)
  step = train.make_train_step(spec)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    tok = rng.integers(0, cfg.vocab_size, (B, T + 1))
    batches.append(sharding.shard_batch({"inputs": tok[:, :-1], "targets": tok[:, 1:],
                                         "weights": np.ones((B, T), np.float32)}, mesh))
  t0 = time.perf_counter()
  state, m = step(state, batches[0])
  first = float(m["loss"])
  compile_s = time.perf_counter() - t0
  for i in range(case["warmup"]):
    state, m = step(state, batches[i % 2])
  jax.block_until_ready(m["loss"])
  times = []
  for i in range(case["iters"]):
    t0 = time.perf_counter()
    state, m = step(state, batches[i % 2])
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  ms_blocked = 1e3 * float(np.median(times))

  def run(i):
    nonlocal state, m
    state, m = step(state, batches[i % 2])
    return m["loss"]

  ms = pipelined(run, case["iters"])["ms"] if case["iters"] > 1 else ms_blocked  # longest: one step
  stats = jax.devices()[0].memory_stats() or {}
  kernels = None
  if case.get("profile"):  # 3 more steps traced: GPU time per stream and the top kernels
    import tempfile
    from profile_kernels import kernel_summary
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for i in range(3):
        state, m = step(state, batches[i % 2])
      jax.block_until_ready(m["loss"])
    kernels = {t: dict(v, rows=v["rows"][:25]) for t, v in kernel_summary(trace_dir, 3).items()}
  return dict(case, ms=ms, tok_s=B * T / ms * 1e3, tok_s_per_gpu=B * T / ms * 1e3 / g, ms_blocked=ms_blocked,
              tok_s_per_gpu_blocked=B * T / ms_blocked * 1e3 / g, compile_s=compile_s,
              loss_first=first, loss_last=float(m["loss"]), peak_bytes=stats.get("peak_bytes_in_use"),
              device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform, jax=jax.__version__,
              **({"kernels": kernels} if kernels else {}))


def eval_case(case: dict, cfg) -> dict:
  """Long-context evaluation of one random ``seq_len``-token sequence split over ``gpus``
  devices (``evaluate.sharded_logprobs``: the parallel forward, head and loss over blocks),
  random weights; the second call is timed (the first compiles)."""
  import jax
  import numpy as np

  from tensorcache import evaluate
  from tensorcache.model import GPT

  g, T = case["gpus"], case["seq_len"]
  devices = jax.devices()[:g]
  with jax.default_device(devices[0]):
    params = jax.jit(GPT(cfg).init)(jax.random.PRNGKey(0), np.ones((1, 8), np.int32))
  tok = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, T + 1))
  run = lambda: evaluate.sharded_logprobs(cfg, params, tok[:, :-1], tok[:, 1:], g, batch=1, devices=devices)
  t0 = time.perf_counter()
  run()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  logp = run()
  ms = 1e3 * (time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(case, ms=ms, tok_s=T / ms * 1e3, tok_s_per_gpu=T / ms * 1e3 / g, compile_s=compile_s,
              finite=bool(np.isfinite(logp).all()), nll=float(-logp.mean()), peak_bytes=stats.get("peak_bytes_in_use"),
              device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform, jax=jax.__version__)


def run_case(case: dict, timeout_s: float) -> dict:
  """``case`` in a child process; failures (out of memory, timeout) come back as ``error``."""
  cmd = [sys.executable, __file__, "--case", json.dumps(case)]
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return dict(case, error=f"timeout after {timeout_s:.0f} s")
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not lines:
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    oom = any("RESOURCE_EXHAUSTED" in l or "out of memory" in l.lower() for l in (p.stderr or "").splitlines())
    log = [l for l in (p.stderr or "").splitlines() if not l.startswith(("I0000", "W0000"))]
    return dict(case, error=("out of memory: " if oom else "") + f"exit {p.returncode}: " + " | ".join(tail)[-400:],
                stderr_tail=log[-60:], wall_s=time.perf_counter() - t0)
  return dict(json.loads(lines[-1]), wall_s=time.perf_counter() - t0)


def git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
  except OSError:
    return None


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--case", help=argparse.SUPPRESS)
  ap.add_argument("--gpus", default="1,2", help="device counts of the weak-scaling rows")
  ap.add_argument("--tokens_per_gpu", type=int, default=8192)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--window", type=int, default=512)
  ap.add_argument("--chunk", type=int, default=64)
  ap.add_argument("--arms", default="tc_delta,tc_outer,full", help="mechanism[_rule], comma separated")
  ap.add_argument("--sections", default="weak,longest")
  ap.add_argument("--attn_block", type=int, default=512, help="query block of the ring attention (full)")
  ap.add_argument("--remat", default="none", help="model.remat of the weak-scaling rows")
  ap.add_argument("--search_remat", default="block", help="model.remat of the longest-context search")
  ap.add_argument("--search_loss_block", type=int, default=8192,
                  help="model.loss_block of the longest-context search (0: whole logits)")
  ap.add_argument("--search_from", type=int, default=32768, help="first context of the search (doubles)")
  ap.add_argument("--eval_len", type=int, default=1 << 20, help="tokens of the eval section's sequence")
  ap.add_argument("--search_max", type=int, default=1 << 21)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--case_s", type=float, default=240.0, help="wall limit of one case process")
  ap.add_argument("--budget_s", type=float, default=540.0, help="wall budget of the whole run")
  ap.add_argument("--smoke", action="store_true", help="tiny model and sizes (CPU check)")
  ap.add_argument("--profile", action="store_true", help="weak rows: trace 3 more steps, add a per-kernel summary")
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  if a.case:
    print(json.dumps(case_main(json.loads(a.case))), flush=True)
    return

  model = SMOKE if a.smoke else GPT124M
  if a.smoke:
    a.tokens_per_gpu, a.window, a.chunk, a.search_from, a.search_max, a.attn_block = 128, 32, 16, 256, 512, 32
    a.warmup, a.iters, a.search_loss_block, a.eval_len = 1, 2, 96, 512
  gpus = [int(x) for x in a.gpus.split(",")]
  arms = a.arms.split(",")
  start = time.perf_counter()
  left = lambda: a.budget_s - (time.perf_counter() - start)
  base = dict(model=model, window=a.window, chunk=a.chunk, attn_block=a.attn_block, batch=a.batch, warmup=a.warmup,
              iters=a.iters)
  sections = a.sections.split(",")
  rows = []

  for arm in arms if "weak" in sections else []:  # weak scaling: tokens per GPU fixed
    for g in gpus:
      if left() < 30:
        rows.append(dict(section="weak", arm=arm, gpus=g, error="skipped: budget"))
        continue
      case = dict(base, section="weak", arm=arm, gpus=g, seq_len=g * a.tokens_per_gpu, remat=a.remat,
                  profile=a.profile)
      rows.append(run_case(case, min(a.case_s, left())))
      print(json.dumps(rows[-1]), flush=True)
    one = next((r for r in rows if r.get("section") == "weak" and r["arm"] == arm and r["gpus"] == 1
                and "tok_s" in r), None)
    for r in rows:
      if one and r.get("section") == "weak" and r["arm"] == arm and "tok_s" in r:
        r["efficiency"] = r["tok_s_per_gpu"] / one["tok_s_per_gpu"]
        r["efficiency_blocked"] = r["tok_s_per_gpu_blocked"] / one["tok_s_per_gpu_blocked"]

  for arm in arms if "eval" in sections else []:  # a long sequence evaluated on 1 and on all GPUs
    for g in sorted({1, max(gpus)}):
      if left() < 30:
        rows.append(dict(section="eval", arm=arm, gpus=g, error="skipped: budget"))
        continue
      case = dict(base, section="eval", arm=arm, gpus=g, seq_len=a.eval_len, batch=1, remat="none",
                  loss_block=a.search_loss_block, warmup=0, iters=1)
      rows.append(run_case(case, min(a.case_s, left())))
      print(json.dumps(rows[-1]), flush=True)

  g = max(gpus)
  for arm in arms if "longest" in sections else []:  # longest context that trains, batch 1, all GPUs
    T = a.search_from
    while T <= a.search_max and left() > 30:
      case = dict(base, section="longest", arm=arm, gpus=g, seq_len=T, batch=1, remat=a.search_remat,
                  loss_block=a.search_loss_block, warmup=0, iters=1)
      rows.append(run_case(case, min(a.case_s, left())))
      print(json.dumps(rows[-1]), flush=True)
      if "error" in rows[-1]:
        break
      T *= 2

  print(f"\n{'section':8} {'arm':9} {'gpus':>4} {'seq_len':>8} {'batch':>5} {'ms':>9} {'tok/s/gpu':>10} "
        f"{'eff':>6} {'blocked':>7} {'peak GB':>8}  note")
  for r in rows:
    peak = r.get("peak_bytes")
    print(f"{r['section']:8} {r['arm']:9} {r['gpus']:>4} {r.get('seq_len', ''):>8} {r.get('batch', ''):>5} "
          f"{r.get('ms', float('nan')):9.1f} {r.get('tok_s_per_gpu', float('nan')):10.0f} "
          f"{r.get('efficiency', float('nan')):6.3f} {r.get('efficiency_blocked', float('nan')):7.3f} "
          f"{(peak or 0) / 1e9:8.2f}  {r.get('error', '')[:80]}")
  for arm in arms if "longest" in sections else []:
    ok = [r["seq_len"] for r in rows if r.get("section") == "longest" and r["arm"] == arm and "ms" in r]
    print(f"longest context that trains, {arm} on {g} device(s): {max(ok) if ok else 'none in range'}")
  if a.out:
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(), commit=git_commit(),
                argv=sys.argv[1:], smoke=a.smoke)
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(dict(meta, rows=rows), indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
