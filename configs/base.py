"""The base run config: model preset x mechanism, data, optimiser, training loop, mesh.

  python -m tensorcache.main --config=configs/base.py:small,tc --workdir=/tmp/run \
      --config.model.window=256 --config.train.steps=5000

``arg`` is ``preset[,mechanism]``: presets ``tiny`` (CPU), ``small`` (4L/4H/128, block 256,
W 128), ``medium`` (6L/6H/384, block 512, W 256), ``gpt2`` (12L/12H/768, block 1024, W 512);
mechanisms ``full | window | sinks | infini | tc``. The config is locked, so an override
with a typo (``--config.model.windw=1``) fails and names the closest field.

Experiment configs derive from this one (``base.get_config(arg)`` then change the few
fields they study) and enumerate their arms with ``sweep()``; ``smoke(config)`` turns any
run config into its CPU-sized two-step variant, which the config test trains.
"""

from __future__ import annotations

import os
import sys

import ml_collections

# config_flags loads this file by path; make the sibling files importable as ``configs.*``.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.append(_ROOT)

from configs import models  # noqa: E402

DEFAULT_ARG = "tiny,tc"


def data_config() -> ml_collections.ConfigDict:
  """The data section: ``tensorcache.data.default_data_config()`` when that package exists."""
  try:
    from tensorcache import data
    default = data.default_data_config
  except (ImportError, AttributeError):  # no data package yet: an empty section (train()
    return ml_collections.ConfigDict()  # needs make_iterator=... then)
  return default()


def optim_config() -> ml_collections.ConfigDict:
  """AdamW as in the reference (docs/method.md §3); see ``tensorcache.optim``."""
  return ml_collections.ConfigDict(dict(
      lr=6e-4,  # peak learning rate, reached after warmup_steps
      min_lr=6e-5,  # end of the cosine
      warmup_steps=100,
      decay_steps=-1,  # cosine length; -1: train.steps
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,  # on parameters with ndim >= 2 only
      clip=1.0,  # global-norm clip; 0 disables
      accum_steps=1,  # micro-batches per step (lax.scan); batch_size must divide evenly
  ))


def train_config(preset: str) -> ml_collections.ConfigDict:
  if preset not in models.TRAIN:
    raise ValueError(f"Unknown model preset {preset!r}; choose one of {sorted(models.TRAIN)}.")
  return ml_collections.ConfigDict(dict(
      steps=200 if preset == "tiny" else 5000,
      seed=0,  # parameters, data order and the stored RNG
      log_every=10,
      eval_every=0,  # 0: off; else validation loss every eval_every steps (train.eval_fn)
      eval_windows=32,  # held-out windows of seq_len tokens per evaluation
      checkpoint_every=200,
      keep=3,  # checkpoints kept (orbax max_to_keep)
      async_checkpoint=True,
      profile_start=10,  # trace steps (profile_start, profile_start + profile_steps]
      profile_steps=0,  # 0: no trace; traces go to <workdir>/profile
      progress=True,  # tqdm bar (process 0 only)
      internal_metrics=True,  # per-layer gate, lambda, eta and read share of tc layers
      fast_compile=False,  # XLA backend optimisation level 0: quick compiles, slow steps (CPU smoke)
      distributed=False,  # jax.distributed.initialize() first (multi-host: TPU pods)
      # device mesh; -1 takes the devices left over; seq splits the positions (seq_len)
      mesh=dict(data=-1, fsdp=1, seq=1),
      # batch_size (global: all processes and micro-batches) and seq_len (the context):
      **models.TRAIN[preset],
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset, _, mechanism = (arg or DEFAULT_ARG).partition(",")
  config = ml_collections.ConfigDict()
  config.model = models.get_config(f"{preset},{mechanism or 'tc'}")
  config.data = data_config()
  config.optim = optim_config()
  config.train = train_config(preset)
  config.lock()
  return config


def sweep() -> list[str]:
  """Every preset x mechanism argument (the config test loads them all)."""
  return models.sweep()


def smoke(config: ml_collections.ConfigDict, steps: int = 2) -> ml_collections.ConfigDict:
  """The CPU-sized variant of any run config: the tiny model dims and batch, ``steps``
  steps, everything else (mechanism, rule, memory options, optimiser) kept."""
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  config.model.update(models.PRESETS["tiny"])
  config.model.max_len = max(config.model.max_len, models.TRAIN["tiny"]["seq_len"])
  if config.model.mechanism == "sinks":
    config.model.num_sinks = min(config.model.num_sinks, config.model.window - 1)
  if config.model.memory_layers > config.model.n_layer:
    config.model.memory_layers = config.model.n_layer
  config.train.update(models.TRAIN["tiny"])
  config.train.update(steps=steps, log_every=1, checkpoint_every=steps, eval_every=steps,
                      eval_windows=8, progress=False,
                      profile_steps=0, fast_compile=True, mesh=dict(data=-1, fsdp=1, seq=1))
  config.optim.update(warmup_steps=1, accum_steps=1)
  config.lock()
  return config
