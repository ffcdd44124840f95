"""Systems scaling (METHOD.md §9): prefill throughput, time to first token, decode speed,
device memory and the first out-of-memory length per mechanism, prompts of 2K to 1M tokens.

Claim: the windowed mechanisms (window, sinks, infini, tc) run a 1M-token prompt in flat
memory at a flat rate; full attention's cache and time grow with the prompt until it runs
out of memory.

One H200, every arm in its own process, at most about 8 minutes (the arms' budgets below sum
to 410 s, plus a process start each; repo root; ``.whl/`` carries ml-collections, which the
GPU machine lacks; the study itself imports only the core library):

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; \\
  PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_MEM_FRACTION=.95 python3 -m experiments.run \\
      --experiment=systems_scaling --fresh_process --arm_timeout_s=240 --out=$OUT/systems_scaling

then, where the CSV is copied to: ``python -m experiments.plot --experiment=systems_scaling``.

CPU smoke (seconds): ``python -m experiments.run --experiment=systems_scaling --smoke --out=/tmp/sys``.

Model: the ``gpt2`` preset (12 layers / 12 heads / 768, W = 512, bf16) with the GPT-2
vocabulary (50304): 124M parameters, random weights, batch 1, delta rule. Per prompt length
(2K, 8K, 32K, 128K, 512K, 1M, ascending): the prompt (random tokens) is streamed through
``inference.prefill`` in segments of 2048 tokens (chunk 1024), one compiled call reused for
every length; time to first token = the whole prefill plus the first greedy token, compiles
excluded (the median of 3 runs up to 32K tokens, one run beyond); decode = 32 greedy
``GPT.extend`` steps in one jitted scan after the prompt (the median of 3 such scans);
device memory = bytes in use after the prefill and the process's peak so far (lengths run in
ascending order, so it is that length's peak when memory grows with the length). Each arm
stops at its first out-of-memory length. Lengths whose projected time no longer fits the
arm's budget are not timed: for ``full`` they are probed instead (a cache of that capacity
and one segment, which allocates what the whole prefill would), up to 4M tokens, to find the
out-of-memory point; for the others they are marked skipped.
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402

MECHANISMS = ("tc", "full", "window", "sinks", "infini")  # the order a budget favours
K = 1024
BUDGET_S = {"tc": 75, "full": 210, "window": 40, "sinks": 40, "infini": 45}  # seconds per arm, one H200


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "smoke"  # the default trains on bytes in the config test (vocab 50304 would not)
  if arm not in MECHANISMS + ("smoke",):
    raise ValueError(f"Unknown arm {arm!r}; choose one of {sweep()}.")
  if arm == "smoke":  # the tiny model; full, so that the timed and the probed path both run
    config = ml_collections.ConfigDict(base.smoke(base.get_config("tiny,full")).to_dict())
    config.study = dict(kind="systems", lengths=(256, 512), probe_lengths=(1024,), segment=256,
                        chunk=64, decode_steps=4, budget_s=600.0, timed_max=0, seed=0)
    config.lock()
    return config
  config = ml_collections.ConfigDict(base.get_config(f"gpt2,{arm}").to_dict())
  config.model.vocab_size = 50304
  config.study = dict(
      kind="systems", lengths=(2 * K, 8 * K, 32 * K, 128 * K, 512 * K, 1024 * K),
      probe_lengths=(2048 * K, 4096 * K) if arm == "full" else (),  # beyond 1M: OOM search only
      segment=2 * K, chunk=K, decode_steps=32, budget_s=float(BUDGET_S[arm]),
      timed_max=0,  # 0: time every length the budget allows; else probe lengths above it
      seed=0)
  config.lock()
  return config


def sweep() -> list[str]:
  return list(MECHANISMS) + ["smoke"]
