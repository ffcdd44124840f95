"""Every config file under configs/ and experiments/ loads through the real command-line path (every
argument its ``sweep()`` lists), overrides with typos fail with a suggestion, and each run
config's tiny variant (``configs/base.py:smoke``) trains 2 steps on CPU."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from test_train import ROOT, StandInIterator
from tensorcache import checkpoint, optim, sharding, train, train_step
from tensorcache.config import ModelConfig

from configs import base  # noqa: E402  (test_train puts the repository root on sys.path)

CONFIG_DIR = ROOT / "configs"
# Run configs and experiment configs (one file per paper table/figure, arms from sweep()).
# A config file defines get_config (experiments/ also holds the runner, studies and plotter).
CONFIG_FILES = sorted(p for d in (CONFIG_DIR, ROOT / "experiments") for p in d.glob("**/*.py")
                      if p.name != "__init__.py" and "\ndef get_config(" in p.read_text())
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
# ml_collections' config_flags loads config files with the deprecated importlib load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module\\(\\) method is deprecated:DeprecationWarning")


def _module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cases():
  for path in CONFIG_FILES:
    module = _module(path)
    for arg in (module.sweep() if hasattr(module, "sweep") else [None]):
      yield pytest.param(path, arg, id=f"{path.relative_to(ROOT)}:{arg}")


def load(path: pathlib.Path, arg: str | None = None, *overrides: str):
  """The config as ``python -m tensorcache.main --config=path:arg overrides`` would see it."""
  argv = ["prog", f"--config={path}" + (f":{arg}" if arg else ""), *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def run_config(config):
  """A run config for any config file: run configs as they are; a model section (``models.py``)
  inside the base run config."""
  if "train" in config:
    return config
  run = base.get_config()
  with run.unlocked():
    run.model = config
  return run


def test_config_files_found():
  names = {p.name for p in CONFIG_FILES}
  assert {"base.py", "models.py"} <= names


@pytest.mark.parametrize("path,arg", list(_cases()))
def test_config_loads(path, arg):
  config = load(path, arg)
  run = run_config(config)
  assert set(run.model) == MODEL_FIELDS, "the model section must hold every ModelConfig field"
  cfg = train.model_config(run.model)  # the bridge validates the values
  assert isinstance(cfg, ModelConfig)
  ocfg = optim.optim_config(run.optim, run.train.steps)
  assert ocfg.decay_steps > 0 and (ocfg.b1, ocfg.b2, ocfg.weight_decay, ocfg.clip) == (0.9, 0.95, 0.1, 1.0)
  for field in ("steps", "batch_size", "seq_len", "seed", "log_every", "eval_every", "checkpoint_every",
                "keep", "profile_start", "profile_steps", "distributed", "mesh"):
    assert field in run.train, field
  assert run.train.batch_size % run.optim.accum_steps == 0
  if arg is not None and path.name == "base.py":
    preset, mechanism = arg.split(",")
    assert cfg.mechanism == mechanism
    if preset == "small":
      assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.window, run.train.seq_len) == (4, 4, 128, 128, 256)
    if preset == "medium":
      assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.window, run.train.seq_len) == (6, 6, 384, 256, 512)
    if preset == "gpt2":
      assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.window, run.train.seq_len) == (12, 12, 768, 512, 1024)
  assert config.is_locked


def test_override_applies_and_typo_fails_with_suggestion():
  path = CONFIG_DIR / "base.py"
  config = load(path, "small,window", "--config.model.window=32", "--config.train.mesh.fsdp=2",
                "--config.optim.lr=0.001")
  assert (config.model.window, config.train.mesh.fsdp, config.optim.lr) == (32, 2, 0.001)
  with pytest.raises(Exception, match=r"(?s)windw.*window"):
    load(path, "tiny,tc", "--config.model.windw=1")
  with pytest.raises(Exception, match=r"(?s)stpes.*steps"):
    load(path, "tiny,tc", "--config.train.stpes=1")
  with pytest.raises(Exception, match="Unknown model preset"):
    load(path, "huge,tc")
  with pytest.raises(Exception, match="Unknown mechanism"):
    load(path, "tiny,flash")


def _data_package():
  try:
    from tensorcache import data
    return data if hasattr(data, "make_train_iterator") else None
  except ImportError:
    return None


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tiny_variant_trains_two_steps(path, tmp_path, monkeypatch):
  """The real data pipeline when ``tensorcache.data`` is there (its default source, the
  CPython standard library, byte-level), the stand-in iterator otherwise."""
  config = base.smoke(run_config(load(path)), steps=2)
  data = _data_package()
  if data is not None:
    monkeypatch.setenv("TENSORCACHE_DATA", str(tmp_path / "data"))  # a fresh token cache
    state = train.train(config, str(tmp_path / "run"))
  else:
    state = train.train(config, str(tmp_path / "run"), make_iterator=StandInIterator)
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in leaves_of(state.params))
  cfg, _, step = checkpoint.load_model(str(tmp_path / "run"))
  assert step == 2 and cfg == train.model_config(config.model)
  if data is not None:  # smoke() evaluates at the end: validation loss on held-out windows
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(losses) == 1 and 0 < losses[0] < 10


def leaves_of(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("mechanism", ["full", "window", "sinks", "infini"])
def test_every_mechanism_traces_its_train_step(mechanism):
  """The other arms' train steps trace end to end (shapes, gradients, optimiser, sharding
  rules, internal metrics) without paying a compilation each; ``tc`` trains above."""
  config = base.smoke(base.get_config(f"tiny,{mechanism}"))
  spec = train.StepSpec(train.model_config(config.model), optim.optim_config(config.optim, 2),
                        sharding.make_mesh(-1, 1), True, True)
  abstract = jax.eval_shape(lambda: train.init_state(spec, 0))
  T, B = config.train.seq_len, config.train.batch_size
  batch = {k: jax.ShapeDtypeStruct((B, T), np.int32) for k in ("inputs", "targets")}
  batch["weights"] = jax.ShapeDtypeStruct((B, T), np.float32)
  sched = optim.schedule_values(spec.optim)
  new_state, metrics = jax.eval_shape(functools.partial(train_step._train_step, spec=spec), abstract, batch, sched)
  assert jax.tree.structure(new_state) == jax.tree.structure(abstract)
  assert {"loss", "grad_norm", "param_norm", "lr"} <= set(metrics)
  if mechanism == "infini":
    assert "infini/l0/beta" in metrics
