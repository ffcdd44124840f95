"""Trainer invariants: resume is bit-identical, unusable checkpoints are skipped, NaNs stop
the run without saving, gradient accumulation equals one big batch, logs are written.

Every run uses the tiny smoke config (``configs/base.py:smoke``) and one compiled train
step, shared by all tests through the trainer's compilation cache; data come from
``StandInIterator`` (the ``tensorcache.data.make_train_iterator`` contract: per-process
batches, ``get_state`` / ``set_state``), so these tests do not depend on the data package.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import base  # noqa: E402
from tensorcache import checkpoint, optim, sharding, train  # noqa: E402

STEPS = 4


class Interrupted(Exception):
  """Stands in for a kill: raised by the data iterator while fetching a batch."""


class StandInIterator:
  """Deterministic random batches; position = batches served (``get_state``/``set_state``).

  ``stop_at``: raise ``Interrupted`` when asked for batch ``stop_at`` (0-based), i.e. after
  ``stop_at`` steps. ``poison_at``: batch index whose weights are NaN.
  """

  def __init__(self, data_config=None, *, seq_len, global_batch_size, seed, process_index=0,
               process_count=1, vocab=256, stop_at=None, poison_at=None):
    del data_config
    self.rows = global_batch_size // process_count
    self.seq_len, self.seed, self.process_index, self.vocab = seq_len, seed, process_index, vocab
    self.stop_at, self.poison_at = stop_at, poison_at
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.stop_at is not None and self.index == self.stop_at:
      raise Interrupted(f"killed before batch {self.index}")
    rng = np.random.default_rng([self.seed, self.process_index, self.index])
    tokens = rng.integers(0, self.vocab, (self.rows, self.seq_len + 1), dtype=np.int32)
    weights = (rng.random((self.rows, self.seq_len)) < 0.9).astype(np.float32)
    if self.index == self.poison_at:
      weights[0, 0] = np.nan
    self.index += 1
    return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], weights=weights)

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


def factory(**options):
  return lambda *args, **kwargs: StandInIterator(*args, **kwargs, **options)


def smoke_config(steps: int = STEPS, **train_overrides):
  config = base.smoke(base.get_config("tiny,tc"), steps=steps)
  with config.unlocked():
    config.train.update({"checkpoint_every": 1, "keep": 10, "eval_every": 0, **train_overrides})
  return config


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_bit_identical(a, b):
  la, lb = leaves(a), leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of STEPS steps (with a profiler trace of step 2)."""
  workdir = tmp_path_factory.mktemp("reference")
  config = smoke_config(profile_start=1, profile_steps=1, eval_every=2)
  probe = lambda state, step: {"step_seen": float(step), "param_step": float(state.step)}
  state = train.train(config, str(workdir), make_iterator=factory(), eval_fn=probe)
  return workdir, jax.device_get(state)


def test_reference_run_writes_logs_trace_and_loadable_checkpoint(reference):
  workdir, state = reference
  assert int(state.step) == STEPS
  all_rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in all_rows if "loss" in r]  # training rows (evaluation rows carry eval/*)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for key in ("loss", "grad_norm", "param_norm", "lr", "tokens_per_s", "tc/l0/gate",
              "tc/l1/lambda", "tc/l0/eta", "tc/l1/read_share", "tc/l0/memory_norm"):
    assert key in rows[-1], key
  assert rows[-1]["tc/l0/memory_norm"] > 0  # sequences longer than W evict into the memory
  assert all(np.isfinite(r["loss"]) for r in rows)
  evals = [(r["step"], r["eval/step_seen"], r["eval/param_step"]) for r in all_rows if "eval/step_seen" in r]
  assert evals == [(2, 2.0, 2.0), (4, 4.0, 4.0)]  # eval_fn sees the state after that step
  assert 0 < rows[-1]["tc/l0/read_share"] < 1
  np.testing.assert_allclose(rows[-1]["tc/l0/gate"], 1 / (1 + np.exp(2.0)), rtol=1e-2)
  header = (workdir / "metrics.csv").read_text().splitlines()[0].split(",")
  assert header[0] == "step" and "loss" in header and "eval/step_seen" in header
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tb").iterdir())
  assert any(p.is_file() for p in (workdir / "profile").rglob("*")), "no profiler trace"
  # checkpoint.load_model reads trainer checkpoints (model JSON + params).
  cfg, params, step = checkpoint.load_model(str(workdir))
  assert step == STEPS and cfg == train.model_config(smoke_config().model)
  assert_bit_identical(params, state.params)


def test_kill_and_resume_is_bit_identical(reference, tmp_path):
  _, expected = reference
  config = smoke_config()
  with pytest.raises(Interrupted):
    train.train(config, str(tmp_path), make_iterator=factory(stop_at=2))
  assert checkpoint.manager(str(tmp_path)).latest_step() == 2
  state = train.train(config, str(tmp_path), make_iterator=factory())  # the same call again
  assert int(state.step) == STEPS
  assert_bit_identical(state.params, expected.params)
  assert_bit_identical(state.opt_state, expected.opt_state)
  # The log describes one history: no duplicate steps after the resume.
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, STEPS + 1))


def _largest_file(path: pathlib.Path) -> pathlib.Path:
  return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "params_file_truncated": lambda d: _truncate(_largest_file(d / "params")),
    "params_file_deleted": lambda d: _largest_file(d / "params").unlink(),
    "opt_state_metadata_deleted": lambda d: (d / "opt_state" / "_METADATA").unlink(),
    "data_state_truncated": lambda d: _truncate(d / "data" / "process_0-of-1.json"),
    "train_meta_truncated": lambda d: _truncate(_largest_file(d / "train")),
    "commit_marker_missing": lambda d: (d / checkpoint.COMMIT_MARKER).unlink(),
}


@pytest.fixture(scope="module")
def interrupted_after_3(tmp_path_factory):
  """A run killed after step 3 (checkpoints 1, 2, 3); tests copy it and damage step 3."""
  workdir = tmp_path_factory.mktemp("interrupted")
  with pytest.raises(Interrupted):
    train.train(smoke_config(), str(workdir), make_iterator=factory(stop_at=3))
  return workdir


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_unusable_latest_checkpoint_falls_back_to_previous(reference, interrupted_after_3, tmp_path,
                                                           corruption):
  _, expected = reference
  workdir = tmp_path / "run"
  shutil.copytree(interrupted_after_3, workdir)
  ckpt = workdir / checkpoint.CHECKPOINT_DIR
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [1, 2, 3]
  CORRUPTIONS[corruption](ckpt / "3")
  state = train.train(smoke_config(), str(workdir), make_iterator=factory())
  # Resumed from step 2 (not 3, not from scratch): retraining steps 3-4 from step 2's state
  # and data position reproduces the uninterrupted run exactly.
  assert_bit_identical(state.params, expected.params)
  set_aside = [p.name for p in (workdir / checkpoint.UNUSABLE_DIR).iterdir()]
  assert len(set_aside) == 1 and set_aside[0].startswith("3-"), set_aside
  assert checkpoint.manager(str(workdir)).all_steps() == [1, 2, 3, 4]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  # Batch 2 (step 3) is poisoned; step 3 is not a checkpoint step, so its metrics are read
  # after step 4 was dispatched: the guard must still stop before anything is saved.
  config = smoke_config(checkpoint_every=2)
  with pytest.raises(train.NonFiniteError, match=r"step 3: loss=nan.*last good checkpoint, step 2"):
    train.train(config, str(tmp_path), make_iterator=factory(poison_at=2))
  assert checkpoint.manager(str(tmp_path)).all_steps() == [2]
  _, params, step = checkpoint.load_model(str(tmp_path))
  assert step == 2 and all(np.isfinite(x).all() for x in leaves(params))


def test_batch_outside_the_vocabulary_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match=r"step 1 has ids in \[\d+, \d+\] but model.vocab_size=256"):
    train.train(smoke_config(), str(tmp_path), make_iterator=factory(vocab=1000))
  assert checkpoint.manager(str(tmp_path)).all_steps() == []


def test_model_mismatch_in_workdir_raises_instead_of_discarding(interrupted_after_3, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(interrupted_after_3, workdir)
  config = smoke_config()
  with config.unlocked():
    config.model.d_model = 32
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="d_model"):
    train.train(config, str(workdir), make_iterator=factory())
  assert checkpoint.manager(str(workdir)).all_steps() == [1, 2, 3]  # nothing set aside


def step_config(accum_steps: int = 1):
  """The smoke config with the full learning rate (6e-4) from the first step."""
  config = smoke_config()
  with config.unlocked():
    config.optim.update(warmup_steps=0, accum_steps=accum_steps)
  return config


def fixed_batch(config, seed: int = 5):
  return next(StandInIterator(seq_len=config.train.seq_len,
                              global_batch_size=config.train.batch_size, seed=seed))


def one_step(config, batch, mesh):
  """``(initial params, state after one train_step, metrics)`` on ``mesh``, on the host."""
  spec = train.StepSpec(train.model_config(config.model),
                        optim.optim_config(config.optim, config.train.steps), mesh,
                        bool(config.train.internal_metrics), bool(config.train.fast_compile))
  state, shardings = train.create_train_state(spec, int(config.train.seed))
  init = jax.device_get(state.params)
  state, metrics = train.make_train_step(spec)(state, sharding.shard_batch(batch, mesh))
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(f"{x.sharding} != {s}"),
               state.params, shardings.params)
  return init, jax.device_get(state), jax.device_get(metrics)


def single_device_mesh():
  return sharding.make_mesh(1, 1, jax.devices()[:1])


def adam_mu(state):
  """Adam's first moment after one step: ``(1 - b1) * clipped gradient``."""
  return [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0][: len(jax.tree.leaves(state.params))]


def test_gradient_accumulation_equals_full_batch():
  batch = fixed_batch(step_config())
  init, full, m_full = one_step(step_config(1), batch, single_device_mesh())
  _, accum, m_accum = one_step(step_config(2), batch, single_device_mesh())
  np.testing.assert_allclose(m_accum["loss"], m_full["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_accum["grad_norm"], m_full["grad_norm"], rtol=1e-5)
  # The gradient the optimiser saw (Adam's first moment) matches tightly.
  for a, b in zip(adam_mu(accum), adam_mu(full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
  # Parameters. Adam's first step is lr * g / (|g| + eps), about lr * sign(g): float rounding
  # in a gradient entry near zero can move that entry by a fraction of lr (6e-4), never more.
  moved = max(np.abs(a - b).max() for a, b in zip(leaves(full.params), leaves(init)))
  assert moved > 5e-4  # the updates are much larger than the tolerance
  for a, b in zip(leaves(accum.params), leaves(full.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_schedule_warmup_then_cosine():
  cfg = optim.OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
  fn = optim.schedule(cfg)
  np.testing.assert_allclose([float(fn(s)) for s in (0, 9, 10, 60, 110, 500)],
                             [0.1, 1.0, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)
  mask = optim.decay_mask({"kernel": np.zeros((2, 3)), "scale": np.zeros(3), "gate": np.zeros(1)})
  assert mask == {"kernel": True, "scale": False, "gate": False}


def test_importing_config_and_trainer_leaves_jax_backends_alone():
  """``main`` may call ``jax.distributed.initialize()`` after loading the config and
  importing the trainer: neither may have started a backend."""
  code = (
      "import tensorcache.main\n"
      "from absl import flags\n"
      "flags.FLAGS(['x', '--config=configs/base.py:small,tc', '--workdir=/tmp/unused'])\n"
      "assert flags.FLAGS.config.model.d_model == 128\n"
      "import tensorcache.train\n"
      "from jax._src import xla_bridge\n"
      "assert not xla_bridge.backends_are_initialized()\n")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
