"""Checkpoints: one orbax ``CheckpointManager`` per workdir, items saved together.

Items of a step: ``model`` (the ``ModelConfig`` as JSON) and ``params`` always; the trainer
adds its optimiser state and a JSON record of step, RNG and data-iterator position. A
checkpoint that fails to restore (interrupted write, corrupt file) is skipped with a
warning and the previous step is used; nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from tensorcache.config import ModelConfig

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def config_to_json(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def config_from_json(data: dict) -> ModelConfig:
  return ModelConfig(**data)


def save_model(workdir: str, cfg: ModelConfig, params, step: int = 0) -> None:
  """Writes ``model`` and ``params`` at ``step`` (what ``evaluate`` and ``sample`` load)."""
  mngr = manager(workdir)
  mngr.save(step, args=ocp.args.Composite(
      model=ocp.args.JsonSave(config_to_json(cfg)), params=ocp.args.StandardSave(params)))
  mngr.wait_until_finished()
  mngr.close()


def restore_latest(mngr: ocp.CheckpointManager, make_args: Callable[[int], Any]):
  """Restores the newest step that restores cleanly: ``(step, items)`` or ``(None, None)``."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, mngr.restore(step, args=make_args(step))
    except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
      logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                      step, mngr.directory, type(e).__name__, e)
  return None, None


def load_model(workdir: str) -> tuple[ModelConfig, Any, int]:
  """``(config, params, step)`` of the newest usable checkpoint in ``workdir``."""
  from tensorcache.model import GPT  # layer above the config; imported lazily
  import jax.numpy as jnp

  mngr = manager(workdir, max_to_keep=None)

  def args(step):
    meta = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))
    cfg = config_from_json(meta["model"])
    abstract = jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    return ocp.args.Composite(model=ocp.args.JsonRestore(), params=ocp.args.StandardRestore(abstract))

  step, items = restore_latest(mngr, args)
  if step is None:
    raise FileNotFoundError(
        f"No usable checkpoint under {os.path.join(workdir, CHECKPOINT_DIR)}; train or convert one first.")
  return config_from_json(items["model"]), items["params"], step
