"""Checkpoints: one orbax ``CheckpointManager`` per workdir, items saved together.

Items of a step: ``model`` (the ``ModelConfig`` as JSON) and ``params`` always; the trainer
adds ``opt_state`` (optimiser state), ``train`` (JSON: step, RNG, the run config) and
``data`` (the data-iterator position: one JSON file per JAX process). ``load_model`` reads
``model`` and ``params`` only, so it works on converted and trainer checkpoints alike.

A step is usable when orbax finalised it (its ``commit_success.txt`` marker is there;
half-written saves live in ``*.orbax-checkpoint-tmp-*`` directories that orbax never lists)
and when it restores (a truncated or deleted file fails the restore). ``restore_latest``
walks back from the newest step to the first usable one, with a warning for each skipped
step. The trainer then moves skipped steps newer than the one it resumed from to
``<workdir>/checkpoints_unusable/`` (kept for inspection, never deleted) so that it can save
those step numbers again.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tensorcache.config import ModelConfig

CHECKPOINT_DIR = "checkpoints"
UNUSABLE_DIR = "checkpoints_unusable"
COMMIT_MARKER = "commit_success.txt"  # written by orbax when a step is finalised


class IncompatibleCheckpointError(ValueError):
  """The workdir holds checkpoints of a different model: never skipped as 'corrupt'."""


def manager(workdir: str, max_to_keep: int | None = 3, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  root = workdir if "://" in workdir else os.path.abspath(workdir)  # gs://... stays a URL
  path = os.path.join(root, CHECKPOINT_DIR)
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save))


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


def step_path(mngr: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(mngr.directory) / str(step)


def is_committed(mngr: ocp.CheckpointManager, step: int) -> bool:
  """Whether orbax finalised ``step`` (its commit marker exists)."""
  return (step_path(mngr, step) / COMMIT_MARKER).exists()


def restore_latest(mngr: ocp.CheckpointManager, make_args: Callable[[int], Any],
                   skipped: list[int] | None = None):
  """Restores the newest step that restores cleanly: ``(step, items)`` or ``(None, None)``.

  Steps without the commit marker (when the directory's other steps have one) or whose
  restore raises are skipped (and appended to ``skipped`` when given);
  ``IncompatibleCheckpointError`` from ``make_args`` propagates.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  # An orbax that writes no commit markers at all (older releases) must not make every step
  # look half-written: require the marker only where some step has one.
  require_marker = any(is_committed(mngr, step) for step in steps)
  for step in steps:
    if require_marker and not is_committed(mngr, step):
      logging.warning("checkpoint step %d in %s has no %s (half-written); trying the previous one",
                      step, mngr.directory, COMMIT_MARKER)
    else:
      try:
        return step, mngr.restore(step, args=make_args(step))
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
        logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                        step, mngr.directory, type(e).__name__, e)
    if skipped is not None:
      skipped.append(step)
  return None, None


def init_tokens():
  """Tokens to build parameters with (their shapes do not depend on the length)."""
  import jax.numpy as jnp

  return jnp.zeros((1, 1), jnp.int32)


def abstract_params(cfg: ModelConfig):
  """The parameter tree's shapes and dtypes for ``cfg`` (no allocation)."""
  from tensorcache.model import GPT  # layer above the config; imported lazily

  return jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0), init_tokens()))


def _existing_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager for reading ``workdir``'s checkpoints; creates nothing on disk. Raises
  ``FileNotFoundError`` when ``workdir`` holds no checkpoint directory."""
  path = os.path.join(workdir, CHECKPOINT_DIR)
  if "://" not in workdir and not os.path.isdir(path):
    what = "does not exist" if not os.path.exists(workdir) else f"has no {CHECKPOINT_DIR}/ directory"
    raise FileNotFoundError(f"--workdir {workdir} {what}; train (tensorcache.main) or convert "
                            "(tensorcache.convert) into it first.")
  return manager(workdir, max_to_keep=None, create=False)


def load_model(workdir: str) -> tuple[ModelConfig, Any, int]:
  """``(config, params, step)`` of the newest usable checkpoint in ``workdir``."""
  mngr = _existing_manager(workdir)

  def args(step):
    meta = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))
    abstract = abstract_params(config_from_json(meta["model"]))
    return ocp.args.Composite(model=ocp.args.JsonRestore(), params=ocp.args.StandardRestore(abstract))

  step, items = restore_latest(mngr, args)
  if step is None:
    raise FileNotFoundError(
        f"No usable checkpoint under {os.path.join(workdir, CHECKPOINT_DIR)}; train or convert one first.")
  return config_from_json(items["model"]), items["params"], step


# ------------------------------------------------------------------ trainer items


def encode_data_state(state: Any) -> str:
  """A data-iterator state as JSON text (grain states are dicts or bytes)."""
  if isinstance(state, (bytes, bytearray)):
    return json.dumps({"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")})

  def default(x):
    if isinstance(x, np.generic):
      return x.item()
    if isinstance(x, np.ndarray):
      return x.tolist()
    raise TypeError(f"data-iterator state holds a {type(x).__name__}, which is not JSON-serialisable")

  return json.dumps(state, default=default)


def decode_data_state(text: str) -> Any:
  state = json.loads(text)
  if isinstance(state, dict) and set(state) == {"__bytes_b64__"}:
    return base64.b64decode(state["__bytes_b64__"])
  return state


class DataStateHandler:
  """Orbax handler for the data-iterator position: ``process_<i>-of-<n>.json`` per process
  (every process saves its own, as grain's handler does). The state is captured as text when
  the save is requested, so the background write never sees a later position."""

  def save(self, directory: epath.Path, args: "DataStateSave"):
    index, count = jax.process_index(), jax.process_count()
    (directory / f"process_{index}-of-{count}.json").write_text(args.state)

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    del args
    index, count = jax.process_index(), jax.process_count()
    path = directory / f"process_{index}-of-{count}.json"
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
      raise FileNotFoundError(
          f"{path} is missing (found {found}): the checkpoint was written by a different number "
          "of processes or is incomplete.")
    return decode_data_state(path.read_text())  # a cut file fails here, inside the restore

  def metadata(self, directory: epath.Path):
    del directory
    return None

  def finalize(self, directory: epath.Path):
    del directory

  def close(self):
    pass

  @classmethod
  def typestr(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: str  # encode_data_state(iterator.get_state())


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def save_train(mngr: ocp.CheckpointManager, step: int, cfg: ModelConfig, params, opt_state,
               meta: dict, data_state: Any) -> None:
  """Requests an (async) save of one training step: every item together, one directory."""
  mngr.save(step, force=True, args=ocp.args.Composite(
      model=ocp.args.JsonSave(config_to_json(cfg)),
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      train=ocp.args.JsonSave(meta),
      data=DataStateSave(encode_data_state(data_state))))


def _check_same_model(saved: dict, cfg: ModelConfig, mine_abstract, where: str) -> None:
  """Raises ``IncompatibleCheckpointError`` when the saved model has other parameter shapes;
  warns about changed fields that leave the shapes alone (e.g. ``impl`` or ``dtype``)."""
  mine = config_to_json(cfg)
  changed = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
  if not changed:
    return
  try:
    theirs = abstract_params(config_from_json(saved))
  except Exception as e:  # noqa: BLE001 - e.g. a field this version does not know
    raise IncompatibleCheckpointError(f"{where} holds a model this config cannot describe ({e}).") from e
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, str(x.dtype)), t)
  if jax.tree.structure(theirs) != jax.tree.structure(mine_abstract) or shapes(theirs) != shapes(mine_abstract):
    raise IncompatibleCheckpointError(
        f"{where} holds checkpoints of a different model (changed fields, saved -> now: {changed}). "
        "Use a new --workdir, or restore the saved values of these fields.")
  logging.warning("resuming %s with changed model fields (saved -> now): %s", where, changed)


def restore_train(mngr: ocp.CheckpointManager, cfg: ModelConfig, abstract_params, abstract_opt_state):
  """The newest usable training step: ``(step, items)`` with items ``params``, ``opt_state``,
  ``train`` (meta dict) and ``data_state``; ``(None, None)`` when there is none.

  Unusable steps newer than the restored one are moved to ``checkpoints_unusable/``.
  """

  def make_args(step):
    saved = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
    _check_same_model(saved, cfg, abstract_params, str(mngr.directory))
    return ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        train=ocp.args.JsonRestore(),
        data=DataStateRestore())

  skipped: list[int] = []
  step, items = restore_latest(mngr, make_args, skipped)
  if skipped:
    set_aside(mngr, skipped)
  if step is None:
    return None, None
  return step, dict(params=items["params"], opt_state=items["opt_state"], train=items["train"],
                    data_state=items["data"])


def set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unusable steps out of the manager's directory (process 0), then reloads it."""
  if jax.process_index() == 0:
    root = epath.Path(mngr.directory)
    dest = root.parent / UNUSABLE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      src = step_path(mngr, step)
      if src.exists():
        target = dest / f"{step}-{stamp}"
        shutil.move(os.fspath(src), os.fspath(target))
        logging.warning("moved unusable checkpoint step %d to %s", step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("tensorcache_set_aside_checkpoints")
  mngr.reload()


def load_run_config(workdir: str) -> dict | None:
  """The run config (``configs/base.py`` layout, as a dict) saved with the newest trainer
  checkpoint in ``workdir``; None for checkpoints without one (e.g. converted)."""
  mngr = _existing_manager(workdir)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(train=ocp.args.JsonRestore()))["train"]
    except Exception:  # noqa: BLE001 - no trainer record at this step
      continue
    return meta.get("config")
  return None
