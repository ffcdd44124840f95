"""Streaming state: ring-buffer key/value caches and memory states, as pytrees.

Every shape is fixed by the config (``W`` slots for windowed mechanisms, ``max_len`` for
``full``), so the cache after 100 tokens and after 10^6 tokens has the same pytree.

Slot of the token at position ``p``: ``p`` for the ``n`` sinks, else
``n + (p - n) mod (S - n)``: the sinks stay forever and the ring overwrites its oldest
entry. ``slot_pos`` records which position each slot holds (-1: empty).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


class KVCache(NamedTuple):
  """Keys (post-RoPE) and values, heads-major: attention products batched over ``(B, H)``
  read the cache as stored."""
  k: Float[Array, "B H S D"]
  v: Float[Array, "B H S D"]


class MemoryState(NamedTuple):
  """Tensor Cache state of one layer (float32)."""
  A: Float[Array, "B H D D"]
  z: Float[Array, "B H D"] | None = None  # read normaliser (normalize_read)
  A_slow: Float[Array, "B H D D"] | None = None  # second timescale


class InfiniState(NamedTuple):
  """Infini-attention state: committed memory and the current segment's pending writes."""
  M: Float[Array, "B H D D"]
  z: Float[Array, "B H D"]
  M_pend: Float[Array, "B H D D"]
  z_pend: Float[Array, "B H D"]


class LayerCache(NamedTuple):
  kv: KVCache
  mem: MemoryState | InfiniState | None


class Cache(NamedTuple):
  pos: Int[Array, ""]  # position of the next token
  slot_pos: Int[Array, "S"]  # position held by each slot, -1 if empty
  layers: tuple[LayerCache, ...]


def slot_of(p: Int[Array, "*P"], size: int, num_sinks: int) -> Int[Array, "*P"]:
  """Slot of position ``p`` in a cache of ``size`` slots whose first ``num_sinks`` are sinks."""
  return jnp.where(p < num_sinks, p, num_sinks + (p - num_sinks) % (size - num_sinks))


class Writes(NamedTuple):
  """Where a chunk goes: its tokens ``[first:]`` into ``slots``. ``first`` and ``drop`` are
  static; ``drop``: some slots are ``size`` (out of bounds), to be skipped by the scatter."""
  first: int
  slots: Int[Array, "N"]
  drop: bool


def write_slots(positions: Int[Array, "P"], size: int, num_sinks: int) -> Writes:
  """Slots a chunk's tokens are written to, every slot at most once: a token overwritten
  later in the same chunk is not written. Only a chunk longer than the ring of a cache with
  sinks needs dropped writes (which of its tokens are sinks depends on the traced position);
  otherwise every index is in bounds and the write updates a donated cache in place.
  """
  P, ring = positions.shape[0], size - num_sinks
  if P <= ring:
    return Writes(0, slot_of(positions, size, num_sinks), False)
  if not num_sinks:  # only the last ``ring`` tokens survive
    return Writes(P - ring, slot_of(positions[P - ring:], size, 0), False)
  overwritten = (positions >= num_sinks) & (positions + ring <= positions[-1])
  return Writes(0, jnp.where(overwritten, size, slot_of(positions, size, num_sinks)), True)


def _set(x, index, values, w: Writes):
  """``x[index] = values``: a scatter of unique in-bounds indices unless ``w.drop``."""
  mode = "drop" if w.drop else "promise_in_bounds"
  return x.at[index].set(values.astype(x.dtype), mode=mode, unique_indices=not w.drop)


def insert(kv: KVCache, k_BPHD, v_BPHD, w: Writes) -> KVCache:
  """Writes a chunk's keys and values into their slots (``write_slots``)."""
  slots = (slice(None), slice(None), w.slots)
  return KVCache(_set(kv.k, slots, k_BPHD[:, w.first:].swapaxes(1, 2), w),
                 _set(kv.v, slots, v_BPHD[:, w.first:].swapaxes(1, 2), w))


def record(slot_pos, w: Writes, positions) -> Int[Array, "S"]:
  """The positions the slots hold after ``insert`` (shared by all layers)."""
  return _set(slot_pos, w.slots, positions[w.first:], w)


def empty_kv(batch: int, size: int, heads: int, head_dim: int, dtype) -> KVCache:
  shape = (batch, heads, size, head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def empty_memory(batch: int, heads: int, head_dim: int, normalize_read: bool, two_timescales: bool) -> MemoryState:
  A = jnp.zeros((batch, heads, head_dim, head_dim), jnp.float32)
  z = jnp.zeros((batch, heads, head_dim), jnp.float32) if normalize_read else None
  return MemoryState(A, z, jnp.zeros_like(A) if two_timescales else None)


def empty_infini(batch: int, heads: int, head_dim: int) -> InfiniState:
  M = jnp.zeros((batch, heads, head_dim, head_dim), jnp.float32)
  z = jnp.zeros((batch, heads, head_dim), jnp.float32)
  return InfiniState(M, z, jnp.zeros_like(M), jnp.zeros_like(z))  # distinct buffers: caches are donated
