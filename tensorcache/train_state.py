"""The trainer's state: what a step depends on (``StepSpec``), the ``TrainState`` pytree, its
shardings, a fresh init compiled straight into them, and the restore of a checkpoint into them.

``step_spec(config)`` turns a run config (``configs/base.py``) into a ``StepSpec``;
``restore_or_init`` returns the newest usable checkpoint's state or a fresh one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tensorcache import checkpoint, optim, sharding
from tensorcache.config import ModelConfig, check_fields
from tensorcache.model import GPT


def model_config(section: Mapping[str, Any]) -> ModelConfig:
  """The one bridge from a run config's ``model`` section to the frozen ``ModelConfig``."""
  values = dict(section.items())
  check_fields(ModelConfig, values, "model")
  return ModelConfig(**values)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything the compiled train step depends on besides its arrays (hashable: the step
  is compiled once per distinct spec and reused across ``train`` calls)."""
  model: ModelConfig
  optim: optim.OptimConfig
  mesh: Mesh
  internal_metrics: bool = True
  fast_compile: bool = False  # XLA backend optimisation level 0: quick compiles, slower steps

  @property
  def compiler_options(self) -> dict | None:
    return compiler_options(self.fast_compile)


def compiler_options(fast_compile: bool) -> dict | None:
  return {"xla_backend_optimization_level": 0} if fast_compile else None


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """``fn`` called with ``mesh`` in scope (``jax.set_mesh``). XLA cannot partition a Mosaic
  kernel, so splash attention must see the mesh while tracing to run per batch shard
  (``fast_attention.splash_attention``); without it a multi-chip TPU step fails to lower."""

  def run(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return run


def check_train_section(tc, accum: int, shards: int, seq_pieces: int = 1) -> None:
  """Raises ``ValueError`` on a non-positive count or a batch or context that does not
  divide (``seq_pieces``: pieces the positions are split into, ``seq_len`` must divide)."""
  for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every", "keep"):
    if int(tc[name]) < 1:
      raise ValueError(f"train.{name} must be >= 1, got {tc[name]}.")
  batch, nproc = int(tc.batch_size), jax.process_count()
  if batch % (accum * shards) or batch % nproc:
    raise ValueError(
        f"train.batch_size={batch} must be divisible by optim.accum_steps x batch shards "
        f"({accum} x {shards}, mesh data x fsdp) and by the {nproc} processes.")
  if int(tc.seq_len) % seq_pieces:
    raise ValueError(f"train.seq_len={tc.seq_len} must be divisible by {seq_pieces} (mesh seq, x 2 for zigzag).")


def step_spec(config, devices=None) -> StepSpec:
  """The ``StepSpec`` of a run config (``configs/base.py``): its model, optimiser and mesh
  over ``devices`` (default: every device; ``tensorcache.compile_tpu`` passes a TPU
  topology's). Raises ``ValueError`` when ``train.batch_size`` does not divide as
  ``check_train_section`` requires."""
  tc = config.train
  cfg = model_config(config.model)
  ocfg = optim.optim_config(config.optim, int(tc.steps))
  mesh = sharding.make_mesh(tc.mesh.data, tc.mesh.fsdp, devices, seq=tc.mesh.seq)
  pieces = sharding.seq_shards(mesh) * (2 if cfg.seq_balanced and sharding.seq_shards(mesh) > 1 else 1)
  check_train_section(tc, ocfg.accum_steps, sharding.batch_shards(mesh), pieces)
  return StepSpec(cfg, ocfg, mesh, bool(tc.internal_metrics), bool(tc.fast_compile))


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimiser steps taken
  params: Any  # {'params': ...}, float32
  opt_state: Any
  rng: jax.Array  # uint32 [2]: raw PRNG key (no layer draws from it yet; stored and restored)


def init_state(spec: StepSpec, seed: int) -> TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = GPT(spec.model).init(init_rng, checkpoint.init_tokens())
  opt_state = optim.make_optimizer(spec.optim).init(params)
  return TrainState(jnp.zeros((), jnp.int32), params, opt_state, rng)


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
  """Parameters and optimiser state by ``sharding.RULES``; step and RNG replicated."""
  rep = sharding.replicated(mesh)
  return TrainState(step=rep, params=sharding.tree_shardings(abstract.params, mesh),
                    opt_state=sharding.tree_shardings(abstract.opt_state, mesh), rng=rep)


def _init_fn(spec: StepSpec, seed: int):
  """``(jitted init, abstract state, shardings)``: shapes by ``eval_shape``, shardings by rule,
  then an init compiled straight into them (no device holds the whole unsharded model).
  Cached on what the initial state depends on (model, optimiser-state structure, mesh)."""
  key = dataclasses.replace(spec, optim=optim.OptimConfig(clip=spec.optim.clip), internal_metrics=True)
  return _init_fn_cached(key, seed)


@functools.lru_cache(maxsize=16)
def _init_fn_cached(spec: StepSpec, seed: int):
  abstract = jax.eval_shape(functools.partial(init_state, spec, seed))
  shardings = state_shardings(abstract, spec.mesh)
  init = jax.jit(functools.partial(init_state, spec, seed), out_shardings=shardings,
                 compiler_options=spec.compiler_options)
  return on_mesh(init, spec.mesh), abstract, shardings


def abstract_train_state(spec: StepSpec, seed: int = 0) -> TrainState:
  """The train state as ``jax.ShapeDtypeStruct``s carrying their rule shardings (nothing is
  materialised): restore targets and ahead-of-time compile arguments."""
  _, abstract, shardings = _init_fn(spec, seed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def create_train_state(spec: StepSpec, seed: int) -> tuple[TrainState, TrainState]:
  """``(state, shardings)`` of a fresh run."""
  init, _, shardings = _init_fn(spec, seed)
  return init(), shardings


def rng_to_json(rng) -> list[int]:
  return [int(x) for x in np.asarray(jax.device_get(rng)).reshape(-1)]


def restore_or_init(mngr, spec: StepSpec, seed: int, it) -> tuple[TrainState, int]:
  """The newest usable checkpoint's state (and the data position, set on the data iterator
  ``it``), or a fresh state: ``(state, step)``. Restored arrays land directly in the rule
  shardings."""
  init, _, shardings = _init_fn(spec, seed)
  target = abstract_train_state(spec, seed)
  step, items = checkpoint.restore_train(mngr, spec.model, target.params, target.opt_state)
  if step is None:
    return init(), 0
  meta = items["train"]
  if int(meta["step"]) != step:
    raise ValueError(f"checkpoint {step} in {mngr.directory} records step {meta['step']}.")
  it.set_state(items["data_state"])
  logging.info("resumed from step %d in %s", step, mngr.directory)
  rng = jax.device_put(np.asarray(meta["rng"], np.uint32), shardings.rng)
  return TrainState(jax.device_put(np.int32(step), shardings.step), items["params"], items["opt_state"], rng), step
