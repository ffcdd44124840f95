"""Compile time of ``inference.generate``'s program (prefill + sampling loop in one jit).

  PYTHONPATH=. python benchmarks/compile_generate.py --config=gpt2,tc --batch=64 --out=results/inference/x.json

Lowers and compiles ``inference._generate`` for random weights of a preset, a 16-token prompt
and 8 new tokens on the default backend, and prints and writes the seconds of each. An empty
cache built inside the jit is a constant that XLA constant-folds the first prefill chunk
against; ``generate`` passes the cache in as an argument instead (this measures that).
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from tensorcache import inference, train
from tensorcache.model import GPT


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="gpt2,tc")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--out", default=None)
  opts = p.parse_args()
  config = base.get_config(opts.config)
  spec = train.step_spec(config, jax.devices()[:1])
  model = GPT(spec.model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape).astype(s.dtype)),
                        train.abstract_train_state(spec, 0).params)
  prompt = jnp.asarray(rng.integers(0, spec.model.vocab_size, (opts.batch, 16)), jnp.int32)
  args = [model, params, prompt, 8, jax.random.PRNGKey(0), 1.0, None, 256]
  if "cache" in inspect.signature(inference._generate).parameters:  # pylint: disable=protected-access
    args.insert(2, inference.init_cache(spec.model, opts.batch))
  t0 = time.perf_counter()
  lowered = inference._generate.lower(*args)  # pylint: disable=protected-access
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
  row = dict(config=opts.config, batch=opts.batch, lower_s=round(t1 - t0, 1), compile_s=round(t2 - t1, 1),
             cache_argument=len(args) == 9, backend=jax.default_backend(), jax=jax.__version__,
             host=platform.node(), commit=commit.stdout.strip(), date=time.strftime("%Y-%m-%d"))
  print(json.dumps(row))
  if opts.out:
    with open(opts.out, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
