"""How long the TPU compiler takes for one layer's memory path, per rule (a CPU host is enough).

  python benchmarks/tpu_compile_memory.py --out /tmp/tpu_compile_memory.json   # needs the [tpu] extra

A GPT-124M ``tc`` train step spends most of its ahead-of-time compile in the memory path
(``docs/tpu.md``). This compiles ``dispatch.l2_scan`` (the model's default implementation, the
chunked XLA scan) at one GPT-124M layer's shape (B 4, T 1024, H 12, D 64, chunk 64) for one
chip of ``--topology``, forward and forward+backward, for each rule, and counts the matrix
products (``dot_general``) in the lowered program: every float32 product is compiled at
``Precision.HIGHEST``, which the TPU compiler expands into several bf16 passes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from tensorcache import compile_tpu, dispatch, memory


def measure(rule: str, backward: bool, device, B=4, T=1024, H=12, D=64, C=64) -> dict:
  sds = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt, sharding=SingleDeviceSharding(device))

  def loss(q, k, v, log_lam, eta, A):
    g = memory.log_decay(log_lam, jnp.ones((T,), bool))
    r, _, A_out, _ = dispatch.l2_scan(q, k, v, g, eta, A, rule=rule, chunk=C)
    return jnp.sum(r) + jnp.sum(A_out)

  fn = jax.grad(loss, argnums=(0, 1, 2, 3, 4)) if backward else loss
  args = (sds(B, T, H, D), sds(B, T, H, D), sds(B, T, H, D), sds(H, dt=jnp.float32), sds(H, dt=jnp.float32),
          sds(B, H, D, D, dt=jnp.float32))
  lowered = jax.jit(fn).lower(*args)
  start = time.perf_counter()
  lowered.compile()
  return dict(rule=rule, backward=backward, compile_s=round(time.perf_counter() - start, 1),
              dots=lowered.as_text().count("dot_general"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--rules", default="outer,delta,wedge")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  device = compile_tpu.topology_devices(args.topology)[0]
  rows = []
  print(f"{'rule':<6} {'pass':<9} {'dots':>5} {'compile s':>10}")
  for rule in args.rules.split(","):
    for backward in (False, True):
      rows.append(measure(rule, backward, device))
      r = rows[-1]
      print(f"{rule:<6} {'fwd+bwd' if backward else 'fwd':<9} {r['dots']:>5} {r['compile_s']:>10.1f}", flush=True)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(dict(topology=args.topology, jax_version=jax.__version__, rows=rows,
                     date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")), f, indent=1)


if __name__ == "__main__":
  main()
