"""The model configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import difflib

MECHANISMS = ("full", "window", "sinks", "infini", "tc")
WINDOWED = ("window", "sinks", "infini", "tc")
RULES = ("outer", "delta", "wedge")
INFINI_RULES = ("linear", "delta")
MEMORY_MODES = ("exact", "reference", "chunk_mean")
FEEDS = ("evict", "insert")
COMPATS = ("exact", "reference")
SINK_POSITIONS = ("absolute", "cache")
DTYPES = ("float32", "bfloat16")
IMPLS = ("auto", "reference", "xla", "pallas")
REMATS = ("none", "memory", "block")


def check_fields(cls, given, what: str) -> None:
  """Raises on names that are not fields of dataclass ``cls``, suggesting the closest."""
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(given) - set(names))
  if unknown:
    hints = {u: difflib.get_close_matches(u, names, n=1) for u in unknown}
    raise ValueError(f"Unknown {what} field(s) {unknown}; closest: {hints}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A GPT with one long-context mechanism.

  Mechanisms: ``full`` (causal attention, growing cache of ``max_len``), ``window`` (L1
  only), ``sinks`` (StreamingLLM: ``num_sinks`` sinks + ring of ``window - num_sinks``),
  ``infini`` (Infini-attention beside the window), ``tc`` (Tensor Cache).

  Semantics (docs/method.md §5-§7):
    compat: ``exact`` (default) or ``reference``: the authors' W+1-key training window,
      read-then-write streaming order and per-token Infini streaming writes.
    memory_mode: how a *training* query reads the memory: ``exact`` (eviction-fed, equal
      to per-token writes), ``reference`` (write-on-insert chunk-start weighted scan) or
      ``chunk_mean`` (the shortcut; ``chunk_mean_feed`` picks evicted or inserted tokens).
    train_window: train L1 with the window (default) or dense causal, as the reference
      trains its ``full``/``window``/``sinks`` baselines; streaming always uses the window.
    remat: what the backward recomputes instead of storing (results are unchanged):
      ``none``; ``memory`` (the memory scan keeps only its inputs: the chunk-level
      intermediates of every layer are recomputed, one more memory forward per step);
      ``block`` (each block keeps only its input: about one more forward per step).
    loss_block: 0 (default) computes the training and evaluation loss from whole ``[B, T, V]``
      logits; ``L > 0`` runs the head on blocks of ``L`` positions, recomputed in the
      backward (``GPT.token_losses``): the same loss without the logits' memory, for long
      contexts, at the cost of one more head product per step.
  """

  vocab_size: int = 256
  n_layer: int = 2
  n_head: int = 2
  d_model: int = 64
  mechanism: str = "tc"
  window: int = 16
  train_window: bool = True
  max_len: int = 4096
  num_sinks: int = 4
  sink_positions: str = "absolute"
  rope_base: float = 10000.0
  rope_scaling: float = 1.0
  compat: str = "exact"
  # Tensor Cache.
  rule: str = "delta"
  memory_mode: str = "exact"
  chunk_mean_feed: str = "evict"
  chunk: int = 64
  memory_layers: int = -1
  decay_init: float = 0.995
  lr_init: float = 0.05
  gate_init: float = -2.0
  value_scale: float = 1.0
  normalize_q: bool = False
  per_token_gate: bool = False
  normalize_read: bool = False
  normalize_read_eps: float = 1.0
  two_timescales: bool = False
  decay_slow_init: float = 0.9995
  lr_slow_init: float = 0.01
  alpha_init: float = 0.5
  freeze_decay_lr: bool = False
  # Infini-attention.
  infini_rule: str = "delta"
  infini_segment: int = 256
  # Numerics and implementation.
  dtype: str = "float32"
  attn_block: int = 128
  impl: str = "auto"
  remat: str = "none"
  loss_block: int = 0
  # Sequence parallelism: the manual mesh axis the positions are split over (set by
  # tensorcache/sharding.py inside its shard_map; None on one device).
  seq_axis: str | None = None

  def __post_init__(self):
    def choice(name, options):
      value = getattr(self, name)
      if value not in options:
        hint = difflib.get_close_matches(str(value), options, n=1)
        raise ValueError(
            f"Unknown {name} {value!r}; choose one of {options}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "") + ".")

    for name, options in (
        ("mechanism", MECHANISMS), ("rule", RULES), ("infini_rule", INFINI_RULES),
        ("memory_mode", MEMORY_MODES), ("chunk_mean_feed", FEEDS), ("compat", COMPATS),
        ("sink_positions", SINK_POSITIONS), ("dtype", DTYPES), ("impl", IMPLS),
        ("remat", REMATS)):
      choice(name, options)
    for name in ("vocab_size", "n_layer", "n_head", "d_model", "chunk", "attn_block",
                 "infini_segment", "max_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
    if self.loss_block < 0:
      raise ValueError(f"loss_block must be 0 (whole logits) or a positive block length, got {self.loss_block}.")
    if self.d_model % self.n_head:
      raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}.")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE; change d_model or n_head.")
    if self.mechanism in WINDOWED and self.window <= 0:
      raise ValueError(
          f"mechanism {self.mechanism!r} needs window > 0 (got {self.window}); "
          "use mechanism='full' for unbounded attention.")
    if self.mechanism == "sinks" and not 0 < self.num_sinks < self.window:
      raise ValueError(
          f"sinks needs 0 < num_sinks < window (got num_sinks={self.num_sinks}, window={self.window}).")
    if self.normalize_read and self.two_timescales:
      raise ValueError("normalize_read is only defined for one timescale; set two_timescales=False.")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_head

  @property
  def n_sinks(self) -> int:
    """Sink slots in the cache (0 unless mechanism='sinks')."""
    return self.num_sinks if self.mechanism == "sinks" else 0

  @property
  def cache_size(self) -> int:
    """Key/value slots per layer in the streaming cache."""
    return self.max_len if self.mechanism == "full" else self.window

  def has_memory(self, layer: int) -> bool:
    """Tensor Cache in this layer: all layers (memory_layers < 0) or the top-k."""
    if self.mechanism != "tc":
      return False
    return self.memory_layers < 0 or layer >= self.n_layer - self.memory_layers

  @property
  def seq_balanced(self) -> bool:
    """Split the positions zigzag (balanced causal attention) rather than contiguously: only
    when training attends without a window and nothing scans the sequence in order."""
    return self.l1_window(training=True) is None and self.mechanism not in ("tc", "infini")

  def l1_window(self, training: bool) -> int | None:
    """Recent keys a query sees (None: unbounded). Sinks come on top of this."""
    if self.mechanism == "full" or (training and not self.train_window):
      return None
    recent = self.window - self.n_sinks
    if training and self.compat == "reference":
      return self.window + 1  # the reference's training mask keeps s in [t - W, t]
    return recent

  def replace(self, **changes) -> "ModelConfig":
    check_fields(ModelConfig, changes, "ModelConfig")
    return dataclasses.replace(self, **changes)
