"""Model presets: the reference's three sizes plus a CPU-sized one.

``get_config("small")`` returns the model section of a run config for a preset (every
``ModelConfig`` field, the preset's values over the dataclass defaults); ``TRAIN`` holds the
train-section values that belong to a preset (context length, batch). The sizes are those of
the authors' PyTorch reference (docs/method.md §3): 4L/4H/128 with block 256 and W=128; 6L/6H/384
with block 512 and W=256; 12L/12H/768 ("124M" with the GPT-2 vocabulary) with block 1024 and
W=512. ``block`` is the training context, ``train.seq_len``.

The vocabulary stays at the dataclass default (256, the byte-level tokenizer of the data
pipeline); set ``--config.model.vocab_size`` to match another tokenizer (the reference's
GPT-2 BPE is 50304).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from tensorcache.config import MECHANISMS, ModelConfig

# Model fields per preset, over the ModelConfig defaults.
PRESETS: dict[str, dict] = {
    # CPU: tests, smoke arms, the demo. float32 (bf16 matmuls are slow on CPU).
    "tiny": dict(n_layer=2, n_head=2, d_model=64, window=16, chunk=16, attn_block=16,
                 infini_segment=16, max_len=256, dtype="float32"),
    "small": dict(n_layer=4, n_head=4, d_model=128, window=128, dtype="bfloat16"),
    "medium": dict(n_layer=6, n_head=6, d_model=384, window=256, dtype="bfloat16"),
    "gpt2": dict(n_layer=12, n_head=12, d_model=768, window=512, dtype="bfloat16"),
}

# Train fields that come with a preset: context length (the reference's block) and batch.
TRAIN: dict[str, dict] = {
    "tiny": dict(seq_len=64, batch_size=8),
    "small": dict(seq_len=256, batch_size=64),
    "medium": dict(seq_len=512, batch_size=32),
    "gpt2": dict(seq_len=1024, batch_size=32),
}


def model_fields(preset: str = "tiny", mechanism: str = "tc") -> dict:
  """Every ``ModelConfig`` field: dataclass defaults, then the preset, then the mechanism."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown model preset {preset!r}; choose one of {sorted(PRESETS)}.")
  if mechanism not in MECHANISMS:
    raise ValueError(f"Unknown mechanism {mechanism!r}; choose one of {MECHANISMS}.")
  fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  fields.update(PRESETS[preset], mechanism=mechanism)
  return fields


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``preset[,mechanism]``, e.g. ``small,tc``; returns the model section."""
  preset, _, mechanism = (arg or "tiny").partition(",")
  return ml_collections.ConfigDict(model_fields(preset, mechanism or "tc"))


def sweep() -> list[str]:
  """Every argument this file accepts (the config test loads them all)."""
  return [f"{p},{m}" for p in PRESETS for m in MECHANISMS]
