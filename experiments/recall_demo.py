"""Associative recall beyond the window: Tensor Cache vs window-only vs full attention.

The README's first command (``python -m tensorcache.demo``) trains the three arms of this
file and evaluates them; one arm alone:

  python -m tensorcache.main --config=experiments/recall_demo.py:tc --workdir=/tmp/recall_tc

Task: multi-query associative recall (4 key->value pairs, then 0-40 filler tokens, then the
4 keys again in random order; loss on the answers only), sequences of 64 tokens, window
W=16, so most answers lie beyond the window. Model: 2 layers, 4 heads, d_model 64. Hardware
and time: 2 CPU cores; training took 78 s (tc), 56 s (window) and 58 s (full) on an idle
machine (the README's table, 2026-11-28), about 4 minutes for the three arms with their
evaluation; on a loaded machine several times that (the same tc training took 287 s at a
load average of 10, results/recall/). Expected: ``window`` near chance (1/16) beyond W,
``tc`` well above it, ``full`` the upper bound.
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402

ARMS = ("tc", "window", "full")


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "tc"
  if arm not in ARMS:
    raise ValueError(f"Unknown arm {arm!r}; choose one of {ARMS}.")
  config = ml_collections.ConfigDict(base.get_config(f"tiny,{arm}").to_dict())  # unlocked copy
  config.data.update(source="mqar", num_pairs=4, distance=0, distance_max=40, key_vocab=16,
                     value_vocab=16, filler_vocab=8)
  from tensorcache import data

  config.model.update(
      vocab_size=data.vocab_size(config.data), n_head=4, window=16, chunk=16, attn_block=32,
      max_len=64, rule="outer", gate_init=0.0, lr_init=0.5, decay_init=0.98)
  config.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=100)
  config.train.update(steps=600, batch_size=32, seq_len=64, log_every=50, checkpoint_every=600)
  config.lock()
  return config


def sweep() -> list[str]:
  return list(ARMS)
