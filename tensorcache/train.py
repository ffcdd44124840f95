"""The trainer's loop: one fixed shape (STYLE.md habit 7), resumable by rerunning it.

mesh -> ``jax.eval_shape(init)`` -> shardings (``sharding.py``) -> jitted init, or a restore
of the newest usable checkpoint into those shardings (``train_state.py``) -> a jitted,
donating ``train_step(state, batch) -> (state, metrics)`` (``train_step.py``) -> a loop that
dispatches step ``t + 1`` before it reads step ``t``'s metrics, stops on a non-finite loss /
gradient / parameter norm without saving (``train_report.py``), and saves parameters,
optimiser state, step, RNG and the data-iterator position together in one orbax
``CheckpointManager``. SIGINT / SIGTERM finish the current step, save it and raise
``Interrupted``; a second signal exits at once.

Entry point: ``train(config, workdir)`` with a run config of ``configs/base.py``;
``python -m tensorcache.main`` calls it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np

from tensorcache import checkpoint, sharding
from tensorcache.config import ModelConfig
from tensorcache.train_report import NonFiniteError, Profiler, Reporter
from tensorcache.train_state import (StepSpec, TrainState, abstract_train_state, create_train_state,
                                     init_state, model_config, restore_or_init, rng_to_json, step_spec)
from tensorcache.train_step import lower_train_step, make_train_step, make_validation_fn

__all__ = ["train", "Interrupted", "NonFiniteError", "StepSpec", "TrainState", "abstract_train_state",
           "create_train_state", "init_state", "lower_train_step", "make_train_step",
           "make_validation_fn", "model_config", "step_spec"]


class DataIterator(Protocol):
  """What the trainer needs from ``tensorcache.data.make_train_iterator``'s result."""

  def __next__(self) -> Mapping[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped training after saving the step reached (``step``)."""

  def __init__(self, step: int, signum: int):
    self.step, self.signum = step, signum
    super().__init__(f"interrupted at step {step}; saved; rerun the same command to resume")


class _StopOnSignal:
  """While active, the first SIGINT / SIGTERM only records a stop request (the loop saves
  and raises ``Interrupted`` after the current step; with several processes, at the next
  multiple of ``train.log_every``); a second one exits the process at once. Handlers can
  only be installed from the main thread; elsewhere this does nothing."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      print("second interrupt: exiting now; the last saved checkpoint is kept", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.signum = signum
    print(f"{signal.Signals(signum).name}: finishing the current step, then saving "
          "(interrupt again to exit at once)", file=sys.stderr, flush=True)

  def requested(self, step: int, every: int) -> bool:
    """Whether a process got a signal; the same answer on every process. With several
    processes the flags are all-gathered (a blocking collective) only every ``every`` steps,
    so the loop keeps dispatching ahead in between."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    if step % every:
      return False
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


def _default_iterator_factory():
  try:
    from tensorcache import data
    return data.make_train_iterator
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        "tensorcache.data is not importable, so train() has no data pipeline; pass "
        "make_iterator=... (same signature as tensorcache.data.make_train_iterator).") from e


def _check_vocab(data_config, cfg: ModelConfig) -> None:
  """The model's vocabulary must cover the data's (``tensorcache.data.vocab_size``)."""
  from tensorcache import data  # the default pipeline is in use, so the package exists

  need = data.vocab_size(data_config)
  if cfg.vocab_size < need:
    raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the data's vocabulary "
                     f"({need}, tokenizer / task of config.data); set --config.model.vocab_size={need}.")


def _check_batch(batch: Mapping[str, np.ndarray], rows: int, seq_len: int, vocab: int, step: int) -> None:
  """Host-side contract check of one local batch (cheap; catches tokenizer/vocab mismatches
  that the jitted model cannot)."""
  for key in ("inputs", "targets", "weights"):
    if key not in batch:
      raise KeyError(f"batch for step {step} lacks {key!r} (has {sorted(batch)}).")
    if np.shape(batch[key]) != (rows, seq_len):
      raise ValueError(f"batch[{key!r}] for step {step} has shape {np.shape(batch[key])}; "
                       f"expected (per-process batch, seq_len) = {(rows, seq_len)}.")
  for key in ("inputs", "targets"):
    t = np.asarray(batch[key])
    if not np.issubdtype(t.dtype, np.integer):
      raise TypeError(f"batch[{key!r}] must hold integer token ids, got {t.dtype}.")
    if t.size and (t.min() < 0 or t.max() >= vocab):
      raise ValueError(f"batch[{key!r}] for step {step} has ids in [{t.min()}, {t.max()}] but "
                       f"model.vocab_size={vocab}; match the model to the tokenizer.")


def train(config, workdir: str, *, make_iterator: Callable[..., DataIterator] | None = None,
          eval_fn: Callable[[TrainState, int], Mapping[str, float]] | None = None) -> TrainState:
  """Trains ``config`` (a run config of ``configs/base.py``) in ``workdir``; resumes from the
  newest usable checkpoint there. Returns the final ``TrainState``.

  Args:
    config: ``ConfigDict`` with sections ``model``, ``data``, ``optim``, ``train``.
    workdir: checkpoints, ``metrics.jsonl`` / ``metrics.csv``, TensorBoard events (``tb/``),
      ``config.json`` and profiler traces (``profile/``).
    make_iterator: the data factory, ``make_train_iterator(data_config, *, seq_len,
      global_batch_size, seed, process_index, process_count)`` returning an iterator with
      ``get_state`` / ``set_state`` of per-process batches ``{'inputs', 'targets':
      int32 [b, T], 'weights': float32 [b, T]}``; default ``tensorcache.data``'s.
    eval_fn: called as ``eval_fn(state, step)`` every ``train.eval_every`` steps; its scalars
      are logged under ``eval/``. Default (with the default data): ``make_validation_fn``,
      the loss on ``train.eval_windows`` held-out windows.

  Raises:
    NonFiniteError: a step's loss, gradient norm or parameter norm is NaN/Inf (that state
      is never saved; the previous checkpoint stays the newest).
    Interrupted: SIGINT or SIGTERM (on any process) arrived; the step reached was saved.
  """
  tc = config.train
  total_steps, seq_len, gbatch = int(tc.steps), int(tc.seq_len), int(tc.batch_size)
  spec = step_spec(config)
  cfg, mesh = spec.model, spec.mesh
  nproc, pidx = jax.process_count(), jax.process_index()

  if make_iterator is None:
    make_iterator = _default_iterator_factory()
    _check_vocab(config.data, cfg)
    if eval_fn is None and int(tc.eval_every) > 0:
      eval_fn = make_validation_fn(config, spec)
  elif eval_fn is None and int(tc.eval_every) > 0:
    logging.warning("train.eval_every is set, but with a custom make_iterator and no eval_fn "
                    "there is nothing to evaluate on.")
  it = make_iterator(config.data, seq_len=seq_len, global_batch_size=gbatch, seed=int(tc.seed),
                     process_index=pidx, process_count=nproc)
  for method in ("get_state", "set_state"):
    if not callable(getattr(it, method, None)):
      raise TypeError(f"the data iterator ({type(it).__name__}) has no {method}(); the trainer "
                      "checkpoints the data position with the model.")

  # mesh -> eval_shape(init) -> shardings -> restore into them, or the jitted init.
  mngr = checkpoint.manager(workdir, max_to_keep=int(tc.keep), async_save=bool(tc.async_checkpoint))
  try:
    state, start = restore_or_init(mngr, spec, int(tc.seed), it)
  except BaseException:
    mngr.close()
    raise
  if pidx == 0:  # only once the workdir is known to hold this model (or nothing)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    if start:
      print(f"resuming from the checkpoint of step {start} in {workdir}", flush=True)
  step_fn = make_train_step(spec)
  report = Reporter(workdir, tc, start, gbatch * seq_len, mngr)
  profiler = Profiler(workdir, int(tc.profile_start), int(tc.profile_steps))
  run_meta = json.loads(config.to_json_best_effort())

  pending = None  # (step, device metrics) not read yet
  with _StopOnSignal() as stop:  # also around the final wait: a second signal exits at once
    try:
      for step in range(start + 1, total_steps + 1):
        host = next(it)
        _check_batch(host, gbatch // nproc, seq_len, cfg.vocab_size, step)
        batch = sharding.shard_batch({k: host[k] for k in ("inputs", "targets", "weights")}, mesh)
        profiler.before(step)
        state, metrics = step_fn(state, batch)  # dispatch step t + 1 ...
        if pending is not None:
          report.read(*pending)  # ... then read step t
        pending = (step, metrics)
        profiler.after(step, state)
        # Every process reaches the same answer at the same step (orbax's preemption sync for
        # the JAX coordination service's SIGTERM notice; an all-gather of the local signals
        # every log_every steps).
        interrupted = stop.requested(step, int(tc.log_every)) or mngr.reached_preemption(step)
        save = step % int(tc.checkpoint_every) == 0 or step == total_steps or interrupted
        evaluate = eval_fn is not None and int(tc.eval_every) > 0 and step % int(tc.eval_every) == 0
        if save or evaluate:
          report.read(*pending)  # never save or evaluate a step that was not finite
          pending = None
        if save:
          meta = dict(step=step, rng=rng_to_json(state.rng), config=run_meta)
          checkpoint.save_train(mngr, step, cfg, state.params, state.opt_state, meta, it.get_state())
        if evaluate and not interrupted:
          report.write(step, {f"eval/{k}": v for k, v in eval_fn(state, step).items()})
        if interrupted:
          mngr.wait_until_finished()
          raise Interrupted(step, stop.signum or signal.SIGTERM)
      if pending is not None:
        report.read(*pending)
    finally:
      profiler.stop()
      mngr.wait_until_finished()  # an interrupted run still completes its last save
      mngr.close()
      report.close()
  return state
