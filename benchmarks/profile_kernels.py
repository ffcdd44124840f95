"""Where the GPU time goes: a per-kernel summary of the GPT-124M training step and of decode.

  PYTHONPATH=. python benchmarks/profile_kernels.py --out $OUT/profile          # GPU machine
  JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/profile_kernels.py --quick   # smoke (no GPU rows)

Traces (``jax.profiler``, perfetto JSON) 5 training steps of each arm (the fast-path
benchmark's model, batch and optimiser), 5 forward+backward passes of the memory path alone
per rule (``--memory_rules``) and one ``inference.generate`` of 64 tokens at batch
1 (tc delta, W 1024), after a warm-up; aggregates the device's events per stream thread and
kernel name; prints the top kernels per step (time, launches) and writes
``<out>/<case>.json``. Compare a thread's busy time with the step's wall time: the gap is time
the GPU waited for the host.

While a trace is active XLA runs op by op: it turns off the command buffers (CUDA graphs) that
an untraced run launches its kernels from, and each kernel then pays a launch from the host
(decode at batch 1 ran 0.64k tokens/s without command buffers and 1.84k with them on an H200:
``results/fast_paths/probe_decode_command_buffers.json``). ``--command_buffers`` keeps them
on while tracing (XLA's ``xla_enable_command_buffers_during_profiling``), so the per-kernel
times are those of the real run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil

import jax

import fast_paths
import fast_paths_cases as fc
from tensorcache import inference


def kernel_summary(trace_dir: str, steps: int) -> dict:
  """``{thread: {events, ms, rows: [(kernel, launches per step, ms per step)]}}`` of the
  device's events, largest time first."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      procs[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  per_thread = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0.0]))
  for e in events:
    if e.get("ph") == "X" and "GPU" in procs.get(e.get("pid"), ""):
      agg = per_thread[threads.get((e["pid"], e["tid"]), "?")][e["name"][:100]]
      agg[0] += 1
      agg[1] += e.get("dur", 0) / 1e3
  out = {}
  for thread, agg in per_thread.items():
    rows = sorted(((name, n / steps, ms / steps) for name, (n, ms) in agg.items()), key=lambda r: -r[2])
    out[thread] = dict(events=sum(r[1] for r in rows), ms=sum(r[2] for r in rows), rows=rows[:300])
  return out


def profile(name: str, fn, steps: int, out: str, top: int) -> None:
  jax.block_until_ready(fn())
  jax.block_until_ready(fn())
  trace_dir = os.path.join(out, name + "_trace")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      result = fn()
    jax.block_until_ready(result)
  summary = kernel_summary(trace_dir, steps)
  shutil.rmtree(trace_dir)
  for thread, t in summary.items():
    print(f"== {name} [{thread}]: {t['events']:.0f} events, {t['ms']:.2f} ms busy per step")
    for kernel, n, ms in t["rows"][:top]:
      print(f"  {ms:8.3f} ms {n:7.1f}x  {kernel}")
  with open(os.path.join(out, name + ".json"), "w") as f:
    json.dump(dict(case=name, steps=steps, meta=fc.meta(), threads=summary), f)


def train_case(S, arm: str):
  _, _, model, tx, batches, state = fc.train_setup(S, arm)
  step = jax.jit(fc.train_step_fn(model, tx), donate_argnums=(0, 1))

  def run():
    state[0], state[1], loss = step(state[0], state[1], batches[0])
    return loss

  return run


def memory_case(S, rule: str):
  """The memory path alone, forward and backward, at the fast-path benchmark's first shape."""
  H, D = S.mem_shapes[0]
  q, k, v, ct = fc.qkv_sets(2, (S.B, S.T, H, D), fc.bf16, n_sets=1)[0]
  f = jax.jit(fc.with_cotangent(fc.memory_fn(fc.tc_config(H, D, S.mem_window, rule)), (0, 1, 2, 3)))
  mp = fc.memory_params(7, H)
  return lambda: f(q, k, v, mp, ct)


def decode_case(S, new_tokens: int):
  _, model, params = fc.stream_model(S)
  prompt = jax.random.randint(jax.random.PRNGKey(5), (1, S.decode_prompt), 0, S.vocab)
  return lambda: inference.generate(model, params, prompt, new_tokens, temperature=0.0,
                                    prefill_chunk=S.decode_prompt)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="/tmp/profile_kernels")
  p.add_argument("--arms", default="window,tc_delta", help=f"training arms, of {sorted(fc.ARMS)}")
  p.add_argument("--memory_rules", default="", help="memory path fwd+bwd (B, T of fast_paths' memory section)")
  p.add_argument("--decode_tokens", type=int, default=64, help="0: no decode case")
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--quick", action="store_true", help="the tiny sizes of fast_paths --quick")
  p.add_argument("--command_buffers", action="store_true",
                 help="keep XLA's command buffers on while tracing (off: op by op, XLA's default)")
  opts = p.parse_args()
  if opts.command_buffers:  # read when the first backend starts, which is later than this
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_enable_command_buffers_during_profiling=true").strip()
  os.makedirs(opts.out, exist_ok=True)
  S = fast_paths.sizes(opts.quick)
  for arm in filter(None, opts.arms.split(",")):
    profile(f"train_{arm}", train_case(S, arm), 5, opts.out, opts.top)
  for rule in filter(None, opts.memory_rules.split(",")):
    profile(f"memory_{rule}", memory_case(S, rule), 5, opts.out, opts.top)
  if opts.decode_tokens:
    profile(f"decode_b1_{opts.decode_tokens}tok", decode_case(S, opts.decode_tokens), 1, opts.out, opts.top)


if __name__ == "__main__":
  main()
