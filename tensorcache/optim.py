"""The optimiser of docs/method.md §3: AdamW (0.9, 0.95), weight decay on matrices only, linear
warmup then cosine to ``min_lr``, global-norm clipping.

``OptimConfig`` is the frozen, hashable form of a run config's ``optim`` section (the train
step is compiled once per distinct value); ``optim_config`` is the one bridge to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tensorcache.config import check_fields


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 6e-4
  min_lr: float = 6e-5
  warmup_steps: int = 100
  decay_steps: int = -1  # cosine length in steps; -1: the run's total steps
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip: float = 1.0  # global-norm clip; <= 0 disables
  accum_steps: int = 1  # micro-batches per optimiser step

  def __post_init__(self):
    if self.accum_steps < 1:
      raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}.")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
    if not 0 <= self.min_lr <= self.lr:
      raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}.")


def optim_config(section: Mapping[str, Any], total_steps: int) -> OptimConfig:
  """The bridge from a run config's ``optim`` section; resolves ``decay_steps=-1``."""
  values = dict(section.items())
  check_fields(OptimConfig, values, "optim")
  if values.get("decay_steps", -1) < 0:
    values["decay_steps"] = total_steps
  return OptimConfig(**values)


SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_steps", "decay_steps")


def schedule_values(cfg: OptimConfig) -> dict[str, np.ndarray]:
  """The schedule's numbers as float32 scalars: the train step takes them as arguments, so
  changing the learning rate or the run length does not recompile it."""
  return {name: np.float32(getattr(cfg, name)) for name in SCHEDULE_FIELDS}


def without_schedule(cfg: OptimConfig) -> OptimConfig:
  """``cfg`` with the schedule's numbers at their defaults (what the compiled step keys on)."""
  defaults = OptimConfig()
  return dataclasses.replace(cfg, **{name: getattr(defaults, name) for name in SCHEDULE_FIELDS})


def schedule(values: OptimConfig | Mapping[str, Any]) -> optax.Schedule:
  """``lr * (s + 1) / warmup`` for ``s < warmup``, then cosine from ``lr`` to ``min_lr`` over
  ``[warmup, decay_steps]``, flat at ``min_lr`` after it. ``s`` counts optimiser steps from 0.

  ``values``: an ``OptimConfig`` or ``schedule_values(...)`` (numbers or traced scalars).
  """
  if isinstance(values, OptimConfig):
    values = schedule_values(values)
  lr, min_lr, warmup, decay = (jnp.asarray(values[k], jnp.float32) for k in SCHEDULE_FIELDS)

  def fn(step):
    s = jnp.asarray(step, jnp.float32)
    warm = lr * (s + 1.0) / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((s - warmup) / jnp.maximum(decay - warmup, 1.0), 0.0, 1.0)
    cosine = min_lr + 0.5 * (lr - min_lr) * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(s < warmup, warm, cosine)

  return fn


def decay_mask(params) -> Any:
  """Weight decay on matrices (ndim >= 2: kernels, the tied embedding) only; never on
  LayerNorm scales, gates, decay / write-rate logits or biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, values: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
  """Clip, then AdamW with ``schedule(values)`` (``values`` default: ``cfg``'s numbers)."""
  parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
  parts.append(optax.adamw(schedule(cfg if values is None else values), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
