"""The memory-path Pallas kernel against the chunked XLA scan: correctness and speed, one run.

Command (GPU machine, one H200, from the repository root):

  PYTHONPATH=. python benchmarks/pallas_memory.py --out $OUT/pallas_memory.json

CPU smoke run (tiny shapes, interpret mode): add ``--quick``.

What it does, in order (each result is appended to the JSON as soon as it is measured, so a
run stopped by its time limit still reports what it finished):

2. correctness at a small shape (B 2, T 1000, H 4, D 64; every rule, both read orders, with
   the read normaliser; the first variant): the kernel's reads, states and gradients against the per-token
   oracle ``memory_recurrence``, max error relative to the oracle's max magnitude;
1. for each shape (B 4, T 16384, H 12, D 64 and H 8, D 128) and rule (delta, outer): the
   copy bandwidth of the device, then the chunked XLA scan (``memory.memory_scan``, C 64) and
   each kernel variant (``--variants block:precision,...``), forward and forward+backward
   (gradients for q, k, v, log lambda and eta), median of ``--iters`` runs after a warm-up,
   inputs in bf16 as the model passes them, prepared (keys normalised, float32) inside the
   timed function as ``dispatch.l2_scan`` does; errors of each variant against the XLA scan.

Fractions of bandwidth count compulsory bytes: q, k, v read and r written once in bf16
(forward); the backward adds the read of dr and the writes of dq, dk, dv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp

from pallas_kernels.memory_scan import ops
from tensorcache import memory


def _timeit(fn, args, iters):
  jax.block_until_ready(fn(*args))
  ms = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ms.append((time.perf_counter() - t) * 1e3)
  return {"ms": statistics.median(ms), "ms_min": min(ms), "n": iters}


def _inputs(key, B, T, H, D, dtype):
  ks = jax.random.split(key, 7)
  q, k, v = (jax.random.normal(ks[i], (B, T, H, D), dtype) for i in range(3))
  log_lam = jnp.log(jax.random.uniform(ks[3], (H,), minval=0.9, maxval=0.999))
  eta = jax.random.uniform(ks[4], (H,), minval=0.1, maxval=0.9)
  dr = jax.random.normal(ks[5], (B, T, H, D), jnp.float32)
  return q, k, v, log_lam, eta, dr


def _scan_fn(impl, rule, read_first=False, use_z=False):
  """``(q, k, v, log_lam, eta) -> (r, qz, A, z)`` from raw inputs, as ``dispatch.l2_scan``."""
  def f(q, k, v, log_lam, eta, A, z):
    T = q.shape[1]
    q, k, v = memory.prepare(q, k, v)
    g = memory.log_decay(log_lam, jnp.arange(T) < T)
    z = z if use_z else None
    if impl == "xla":
      return memory.memory_scan(q, k, v, g, eta, A, rule, 64, read_first, z)
    if impl == "oracle":
      return memory.memory_recurrence(q, k, v, g, eta, A, rule, read_first, z)
    block, precision, interpret = impl
    return ops.memory_scan(q, k, v, g, eta, A, z, rule=rule, read_first=read_first, block=block,
                           precision=precision, backend="gpu", interpret=interpret)
  return f


def _loss_grads(f, dr):
  def loss(q, k, v, log_lam, eta, A, z):
    r, qz, A2, z2 = f(q, k, v, log_lam, eta, A, z)
    out = jnp.sum(r * dr) + jnp.sum(A2 * A2)
    if qz is not None:
      out = out + jnp.sum(qz * dr[..., 0]) + jnp.sum(z2)
    return out
  return jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5, 6))


def _rel(a, b):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _errors(f, g, args):
  fo, go = jax.jit(f)(*args), jax.jit(g)(*args)
  return [_rel(a, b) for a, b in zip(fo, go) if b is not None]


def copy_bandwidth(iters):
  x = jax.random.normal(jax.random.PRNGKey(9), (256 * 2**20,), jnp.float32)  # 1 GiB
  t = _timeit(jax.jit(lambda x: x * 1.0001), (x,), iters)
  return 2 * x.nbytes / (t["ms"] * 1e-3)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--variants", default="32:tf32x3,16:tf32x3,32:highest")
  p.add_argument("--rules", default="delta,outer")
  p.add_argument("--shapes", default="4x16384x12x64,4x16384x8x128")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--budget_s", type=float, default=500)
  p.add_argument("--quick", action="store_true")
  a = p.parse_args()
  start = time.time()
  interpret = jax.devices()[0].platform != "gpu"
  variants = [(int(b), prec, interpret) for b, prec in (v.split(":") for v in a.variants.split(","))]
  shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
  small = (2, 1000, 4, 64)
  if a.quick:
    shapes, small, a.iters = [(1, 96, 2, 32)], (1, 40, 2, 32), 2
    variants = [(16, "highest", interpret)]
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  except OSError:
    commit = ""
  report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "correctness": [], "timing": []}

  def save():
    with open(a.out, "w") as fh:
      json.dump(report, fh, indent=1)

  # 1. speed
  bw = copy_bandwidth(a.iters)
  report["copy_bandwidth_Bps"] = bw
  for B, T, H, D in shapes:
    q, k, v, log_lam, eta, dr = _inputs(jax.random.PRNGKey(3), B, T, H, D, jnp.bfloat16)
    A = jnp.zeros((B, H, D, D), jnp.float32)
    z = jnp.zeros((B, H, D), jnp.float32)
    args = (q, k, v, log_lam, eta, A, z)
    n = B * T * H * D
    floor_fwd, floor_bwd = 4 * n * 2 / bw, 8 * n * 2 / bw
    for rule in a.rules.split(","):
      base = {}
      for impl in ["xla"] + variants:
        if time.time() - start > a.budget_s:
          report["stopped"] = "budget"
          break
        name = "xla" if impl == "xla" else f"pallas_c{impl[0]}_{impl[1]}"
        row = {"shape": [B, T, H, D], "rule": rule, "impl": name}
        try:
          f = jax.jit(_scan_fn(impl, rule))
          gr = jax.jit(_loss_grads(_scan_fn(impl, rule), dr))
          t0 = time.time()
          row["fwd"] = _timeit(f, args, a.iters)
          row["fwd_bwd"] = _timeit(gr, args, a.iters)
          row["compile_and_time_s"] = time.time() - t0
          row["fwd_frac_bw"] = floor_fwd / (row["fwd"]["ms"] * 1e-3)
          row["fwd_bwd_frac_bw"] = floor_bwd / (row["fwd_bwd"]["ms"] * 1e-3)
          if impl == "xla":
            base = {"fwd": f(*args)[0], "grad": gr(*args)[:5]}
          else:
            row["fwd_rel_err_vs_xla"] = _rel(f(*args)[0], base["fwd"])
            row["grad_rel_err_vs_xla"] = [_rel(x, y) for x, y in zip(gr(*args)[:5], base["grad"])]
            xla = next(r for r in report["timing"] if r["shape"] == [B, T, H, D] and r["rule"] == rule
                       and r["impl"] == "xla")
            row["speedup_fwd"] = xla["fwd"]["ms"] / row["fwd"]["ms"]
            row["speedup_fwd_bwd"] = xla["fwd_bwd"]["ms"] / row["fwd_bwd"]["ms"]
        except Exception as e:  # pylint: disable=broad-except
          row["error"] = repr(e)[:800]
        report["timing"].append(row)
        print(json.dumps(row), flush=True)
        save()
  # 2. correctness against the per-token oracle
  B, T, H, D = small
  q, k, v, log_lam, eta, dr = _inputs(jax.random.PRNGKey(0), B, T, H, D, jnp.float32)
  A = 0.05 * jax.random.normal(jax.random.PRNGKey(1), (B, H, D, D))
  z = 0.05 * jax.random.normal(jax.random.PRNGKey(2), (B, H, D))
  args = (q, k, v, log_lam, eta, A, z)
  for rule in ("outer", "wedge", "delta"):
    for read_first in (False, True):
      for var in variants[:1]:
        if time.time() - start > a.budget_s:
          break
        kern = _scan_fn(var, rule, read_first, True)
        orc = _scan_fn("oracle", rule, read_first, True)
        row = {"rule": rule, "read_first": read_first, "block": var[0], "precision": var[1], "shape": small}
        try:
          row["fwd_rel_err"] = _errors(kern, orc, args)
          row["grad_rel_err"] = _errors(_loss_grads(kern, dr), _loss_grads(orc, dr), args)
        except Exception as e:  # pylint: disable=broad-except
          row["error"] = repr(e)[:500]
        report["correctness"].append(row)
        print(json.dumps(row), flush=True)
        save()

  report["wall_s"] = time.time() - start
  save()
  print(f"{'shape':>18} {'rule':>6} {'impl':>22} {'fwd ms':>8} {'f+b ms':>8} {'fwd %bw':>8} {'f+b %bw':>8}")
  for r in report["timing"]:
    if "fwd_bwd" in r:
      print(f"{'x'.join(map(str, r['shape'])):>18} {r['rule']:>6} {r['impl']:>22} {r['fwd']['ms']:8.3f} "
            f"{r['fwd_bwd']['ms']:8.3f} {100 * r['fwd_frac_bw']:7.1f}% {100 * r['fwd_bwd_frac_bw']:7.1f}%")
    else:
      print(f"{'x'.join(map(str, r['shape'])):>18} {r['rule']:>6} {r['impl']:>22} error: {r.get('error', '')[:80]}")


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  main()
