"""Memory capacity (METHOD.md §9): recall from the memory alone vs stored pairs and head
dimension D, per write rule; the learned decay, write rate, horizon and gate after training.

Claim: the D x D memory recalls its pairs while their number is small relative to D and
degrades beyond; the exact chunked scan equals per-token writes to float32 rounding, the
chunk-mean write does not (it stores C^2 - C cross pairs per chunk).

  python -m experiments.run --experiment=memory_capacity --out=results/memory_capacity
  python -m experiments.run --experiment=memory_capacity --smoke --out=/tmp/capacity
  python -m experiments.plot --experiment=memory_capacity

Arms ``outer``, ``delta``, ``wedge``: pure functions of ``tensorcache.memory`` (no model).
N random unit keys and Gaussian values are written with lambda = eta = 1, once per token by
the exact chunked scan and once as chunk means (C = 8); each key then reads ``k A`` and is
scored by the cosine to its value and by top-1 retrieval among the N stored values; 32
independent memories per point, D in {16, 32, 64, 128}, N from 1 to 4D. The scan is also
checked against the per-token recurrence. Arm ``learned``: per layer and head lambda, eta,
horizon 1/(1 - lambda) and gate sigma(g) of recall.py's ``tc_s0`` model (it reuses that
run's checkpoint when the work root holds it, else trains it: about 2 CPU minutes).

Hardware and time: 2 CPU cores (shared); each rule arm about a minute, ``learned`` seconds
to 3 minutes; ``smoke`` seconds.
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from experiments import recall  # noqa: E402

RULES = ("outer", "delta", "wedge")


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "outer"
  if arm == "learned":
    config = ml_collections.ConfigDict(recall.get_config("tc_s0").to_dict())
    config.study = dict(kind="learned", reuse="recall/tc_s0")
    config.lock()
    return config
  if arm not in RULES + ("smoke",):
    raise ValueError(f"Unknown arm {arm!r}; choose one of {sweep()}.")
  # The model sections are the base tiny tc run's, unused by the pure study (kept so that
  # every experiment file is a run config).
  config = ml_collections.ConfigDict(base.get_config("tiny,tc").to_dict())
  config.study = dict(
      kind="capacity", rule="outer" if arm == "smoke" else arm,
      dims=(16, 32, 64, 128), pairs_per_dim=(0.0625, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
      trials=32, chunk=8, decay=1.0, eta=1.0, seed=0)
  if arm == "smoke":
    config.study.update(dims=(8, 16), pairs_per_dim=(0.5, 1.0, 2.0), trials=4)
  config.lock()
  return config


def sweep() -> list[str]:
  return list(RULES) + ["learned", "smoke"]
