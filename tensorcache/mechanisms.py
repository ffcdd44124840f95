"""Per-layer mechanism math as pure functions: parallel (training) and extend (streaming).

``extend`` processes a chunk of ``P`` new tokens against a layer's cache; ``P = 1`` is the
decode step and a ``lax.scan`` of chunks is the prefill, so every streaming path runs the
same code. Within a chunk, step ``i`` (position ``pos + i``) evicts the token at position
``pos + i - W``: the ring's oldest entries, then (chunks longer than ``W``) the chunk's own.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from tensorcache import cache as cache_lib, dispatch, memory, seq_parallel
from tensorcache.config import ModelConfig
from tensorcache.rope import apply_rope

f32 = jnp.float32


class MemoryParams(NamedTuple):
  """Decay and write rate per head (log lam, eta), for one or two timescales."""
  log_lam: Float[Array, "H"]
  eta: Float[Array, "H"]
  log_lam_slow: Float[Array, "H"] | None = None
  eta_slow: Float[Array, "H"] | None = None
  alpha: Float[Array, "H"] | None = None  # sigma(alpha): weight of the slow read


def sink_query(q_raw_BTHD, positions, cfg: ModelConfig):
  """StreamingLLM's in-cache positions: a query scores the sinks from position
  ``min(t, W - 1)``, its slot once the cache is full. None for absolute positions."""
  if cfg.mechanism != "sinks" or cfg.sink_positions != "cache":
    return None
  return apply_rope(q_raw_BTHD, jnp.minimum(positions, cfg.window - 1), cfg.rope_base, cfg.rope_scaling)


def train_positions(T: int, cfg: ModelConfig):
  """Global positions of the ``T`` tokens a training forward sees: ``0..T-1``, or this
  shard's under sequence parallelism (``cfg.seq_axis``)."""
  if cfg.seq_axis is None:
    return jnp.arange(T)
  return seq_parallel.positions(T, cfg.seq_axis, cfg.seq_balanced)


# ------------------------------------------------------------------ L1


def l1_parallel(q, k, v, cfg: ModelConfig, q_sink=None):
  window = cfg.l1_window(training=True)
  if cfg.seq_axis is not None:  # this shard's queries; the keys come from the ring or the halo
    if window is None:
      return seq_parallel.ring_attention(q, k, v, axis=cfg.seq_axis, block=cfg.attn_block, balanced=cfg.seq_balanced)
    return seq_parallel.window_attention(q, k, v, axis=cfg.seq_axis, window=window, num_sinks=cfg.n_sinks,
                                         q_sink=q_sink, block=cfg.attn_block, impl=cfg.impl)
  return dispatch.l1_attention(
      q, k, v, window=window, num_sinks=cfg.n_sinks if window is not None else 0,
      q_sink=q_sink if window is not None else None, block=cfg.attn_block, impl=cfg.impl)


def l1_extend(q, k, v, kv: cache_lib.KVCache, slot_pos, positions, cfg: ModelConfig, q_sink=None):
  """Chunk queries against the cache as it was before the chunk plus the chunk's own keys."""
  return dispatch.l1_stream(q, kv.k, kv.v, slot_pos, k, v, positions, window=cfg.l1_window(training=False),
                            num_sinks=cfg.n_sinks, q_sink=q_sink, impl=cfg.impl)


# ------------------------------------------------------------------ Tensor Cache (L2)


def _scaled_values(v, cfg: ModelConfig):
  """``value_scale * v`` (the reference's option), in the compute dtype."""
  return v if cfg.value_scale == 1.0 else v * jnp.asarray(cfg.value_scale, v.dtype)


def _normalize_read(r, qz, cfg: ModelConfig):
  return r / jnp.maximum(jnp.abs(qz), cfg.normalize_read_eps)[..., None]


def _timescales(mp: MemoryParams, state: cache_lib.MemoryState):
  yield mp.log_lam, mp.eta, state.A, state.z
  if mp.alpha is not None:
    yield mp.log_lam_slow, mp.eta_slow, state.A_slow, None


def _combine(mp: MemoryParams, reads):
  r = reads[0]
  if mp.alpha is not None:
    r = r + mp.alpha[None, None, :, None] * reads[1]
  return r


def tc_parallel(q, k, v, mp: MemoryParams, cfg: ModelConfig):
  """Training reads of the memory for every position, per ``cfg.memory_mode``, and the
  memory state after the last position (its mean Frobenius norm, for monitoring).

  exact: the write stream is the eviction stream (token ``s`` written at step ``s + W``,
  before the read; ``W + 1`` under the reference's read-then-write order), run by the exact
  scan on queries shifted by that delay. reference: write-on-insert chunk-start scan.
  chunk_mean: the chunk-mean shortcut on the evicted or inserted stream.
  """
  B, T, H, D = q.shape
  mode = cfg.memory_mode
  if mode == "exact":
    shift = cfg.window + (cfg.compat == "reference")
  elif mode == "chunk_mean" and cfg.chunk_mean_feed == "evict":
    shift = cfg.window
  else:
    shift = 0
  if cfg.seq_axis is None:  # the stream stops at the last token that is evicted
    qs, k, v = memory.eviction_stream(q, k, v, shift)
    valid = jnp.ones(qs.shape[1], bool)
  elif mode == "exact":  # this shard's step i writes the token `shift` before its query i
    qs, k, v = q, seq_parallel.delayed(k, shift, cfg.seq_axis), seq_parallel.delayed(v, shift, cfg.seq_axis)
    valid = train_positions(T, cfg) >= shift
    k = k * valid[None, :, None, None].astype(k.dtype)
  else:
    raise NotImplementedError(f"memory_mode={mode!r} under sequence parallelism; use 'exact'.")
  v = _scaled_values(v, cfg)
  state = cache_lib.empty_memory(B, H, D, cfg.normalize_read, mp.alpha is not None)
  reads, finals = [], []

  def scan(qs, k, v, log_lam, eta, A, z):
    if mode == "exact" and cfg.seq_axis is not None:
      return seq_parallel.memory_scan(
          qs, k, v, memory.log_decay(log_lam, valid), eta, normalizer=z is not None, axis=cfg.seq_axis,
          rule=cfg.rule, chunk=cfg.chunk, normalize_q=cfg.normalize_q, impl=cfg.impl)
    if mode == "exact":
      return dispatch.l2_scan(
          qs, k, v, memory.log_decay(log_lam, valid), eta, A, z, rule=cfg.rule, chunk=cfg.chunk,
          normalize_q=cfg.normalize_q, impl=cfg.impl)
    return dispatch.l2_chunk_start(
        qs, k, v, log_lam, valid, eta, A, z, rule=cfg.rule, chunk=cfg.chunk, mean=mode == "chunk_mean",
        normalize_q=cfg.normalize_q, impl=cfg.impl)

  if cfg.remat == "memory":  # the backward recomputes the scan from its inputs
    scan = jax.checkpoint(scan, policy=jax.checkpoint_policies.nothing_saveable)
  for log_lam, eta, A, z in _timescales(mp, state):
    if qs.shape[1] == 0:  # T <= shift: no query reads an evicted token yet
      r, qz = jnp.zeros(q.shape, f32), None
    else:
      r, qz, A, _ = scan(qs, k, v, log_lam, eta, A, z)
    r = memory.unshift_reads(r, T)
    if qz is not None:
      r = _normalize_read(r, memory.unshift_reads(qz, T), cfg)
    reads.append(r)
    finals.append(A)
  return _combine(mp, reads), jnp.sqrt(jnp.sum(finals[0] ** 2, axis=(-2, -1))).mean()


def tc_extend(q, k_evict, v_evict, valid, mp: MemoryParams, state: cache_lib.MemoryState, cfg: ModelConfig):
  """Per-token memory semantics over a chunk: step ``i`` writes evicted pair ``i`` (if
  ``valid``) and reads ``q_i``, after the write (exact) or before it (reference order)."""
  k = k_evict * valid[None, :, None, None].astype(k_evict.dtype)  # nothing evicted: write nothing
  v = _scaled_values(v_evict, cfg)
  reads, new = [], []
  for log_lam, eta, A, z in _timescales(mp, state):
    r, qz, A, z = dispatch.l2_scan(
        q, k, v, memory.log_decay(log_lam, valid), eta, A, z, rule=cfg.rule, chunk=cfg.chunk,
        read_first=cfg.compat == "reference", normalize_q=cfg.normalize_q, impl=cfg.impl)
    if qz is not None:
      r = _normalize_read(r, qz, cfg)
    reads.append(r)
    new.append((A, z))
  state = cache_lib.MemoryState(new[0][0], new[0][1], new[1][0] if len(new) > 1 else None)
  return _combine(mp, reads), state


def evicted_stream(kv: cache_lib.KVCache, pos, k_BPHD, v_BPHD):
  """Pairs evicted at a chunk's steps from a sink-free ring of ``W`` slots, before the chunk
  is inserted: step ``i`` evicts position ``e_i = pos + i - W`` (``valid``: ``e_i >= 0``).

  The first ``min(P, W)`` are in the ring at slot ``e_i mod W``: only those slots are
  gathered. For ``P > W`` the rest are the chunk's own first ``P - W`` tokens.
  """
  P, W = k_BPHD.shape[1], kv.k.shape[2]
  e = pos - W + jnp.arange(P)
  slots = e[:min(P, W)] % W
  k_ev = kv.k[:, :, slots].swapaxes(1, 2).astype(k_BPHD.dtype)
  v_ev = kv.v[:, :, slots].swapaxes(1, 2).astype(v_BPHD.dtype)
  if P > W:
    k_ev = jnp.concatenate([k_ev, k_BPHD[:, :P - W]], axis=1)
    v_ev = jnp.concatenate([v_ev, v_BPHD[:, :P - W]], axis=1)
  return k_ev, v_ev, e >= 0


# ------------------------------------------------------------------ Infini-attention


def infini_segment(cfg: ModelConfig, streaming: bool) -> int:
  return 1 if streaming and cfg.compat == "reference" else cfg.infini_segment


def infini_mix(local, mem, beta):
  """Per-head fusion before ``c_proj``: ``sigma(beta) mem + (1 - sigma(beta)) local``."""
  g = jax.nn.sigmoid(jnp.asarray(beta, f32))[None, None, :, None]
  return (g * mem + (1.0 - g) * local.astype(f32)).astype(local.dtype)


def infini_parallel(q, k, v, cfg: ModelConfig):
  B, T, H, D = q.shape
  if cfg.seq_axis is not None:
    return seq_parallel.infini_scan(q, k, v, axis=cfg.seq_axis, rule=cfg.infini_rule,
                                    segment=infini_segment(cfg, False), impl=cfg.impl)
  r, _ = dispatch.infini_scan(q, k, v, cache_lib.empty_infini(B, H, D), rule=cfg.infini_rule,
                              segment=infini_segment(cfg, False), impl=cfg.impl)
  return r


def infini_extend(q, k, v, positions, state: cache_lib.InfiniState, cfg: ModelConfig):
  return dispatch.infini_stream(q, k, v, positions, state, rule=cfg.infini_rule,
                                segment=infini_segment(cfg, True), impl=cfg.impl)
