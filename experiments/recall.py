"""Controlled associative recall (METHOD.md §9): accuracy vs distance and vs stored pairs.

Claim: a window-only model is at chance beyond the window W; Tensor Cache recalls pairs
evicted from the window, degrading as the number of stored pairs grows; the exact
eviction-fed training scan beats the reference's and the chunk-mean training memory.

  python -m experiments.run --experiment=recall --out=results/recall          # every arm
  python -m experiments.run --experiment=recall --arms=tc_s0,window_s0 --out=results/recall
  python -m experiments.run --experiment=recall --smoke --out=/tmp/recall     # seconds
  python -m experiments.plot --experiment=recall                              # the figures

Task and model: recall_demo.py's (multi-query recall, 4 pairs, 0-40 filler tokens, 64-token
sequences, W=16, 2 layers / 4 heads / d_model 64, outer rule, 600 steps of batch 32).
Arms ``<name>_s<seed>``: the five mechanisms (``full window sinks infini tc``), ``tc`` trained
with the reference's and the chunk-mean training memory (``tc_reference``, ``tc_chunk_mean``)
and with the delta and wedge rules (``tc_delta``, ``tc_wedge``), seeds 0-2 each; ``smoke``.
Evaluation: greedy answer accuracy on 512 validation sequences per distance bin (multiples
of W) and, at 16-32 filler tokens (every answer beyond W), per number of stored pairs (2-8).

Hardware and time: 2 CPU cores (shared), 1.5-3 minutes per arm (training dominates);
the 12 arms in results/recall/ took the time their CSVs' run_s column records.
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from experiments import recall_demo  # noqa: E402

MECHANISMS = ("full", "window", "sinks", "infini", "tc")
TC_VARIANTS = {  # arm name -> model fields over the tc arm
    "tc_reference": dict(memory_mode="reference"),
    "tc_chunk_mean": dict(memory_mode="chunk_mean"),
    "tc_delta": dict(rule="delta"),
    "tc_wedge": dict(rule="wedge"),
}
SEEDS = (0, 1, 2)


def study_config() -> ml_collections.ConfigDict:
  """What the runner does with a trained arm (``experiments/studies.py:recall``)."""
  return ml_collections.ConfigDict(dict(
      kind="recall",
      eval_examples=512,
      bin_edges=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),  # distance bins, multiples of W
      pairs=(2, 4, 6, 8),  # stored pairs for the capacity curve
      pairs_distance=(16, 32),  # filler tokens there: every answer beyond W = 16
  ))


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "tc_s0"
  if arm == "smoke":
    name, seed = "tc", 0
  else:
    name, _, seed_s = arm.rpartition("_s")
    if name not in MECHANISMS + tuple(TC_VARIANTS) or not seed_s.isdigit():
      raise ValueError(f"Unknown arm {arm!r}; choose one of {sweep()}.")
    seed = int(seed_s)
  mechanism = "tc" if name.startswith("tc") else name
  config = ml_collections.ConfigDict(recall_demo.get_config(mechanism if mechanism in recall_demo.ARMS
                                                            else "window").to_dict())
  config.model.mechanism = mechanism
  if mechanism == "sinks":
    config.model.num_sinks = 4
  if mechanism == "infini":
    config.model.infini_segment = 16
  config.model.update(TC_VARIANTS.get(name, {}))
  config.train.update(seed=seed, progress=False)
  config.study = study_config()
  if arm == "smoke":
    config = ml_collections.ConfigDict(base.smoke(config, steps=3).to_dict())
    config.study.update(eval_examples=16, pairs=(2, 4))
  config.lock()
  return config


def sweep() -> list[str]:
  names = list(MECHANISMS) + list(TC_VARIANTS)
  return [f"{n}_s{s}" for n in names for s in SEEDS] + ["smoke"]
