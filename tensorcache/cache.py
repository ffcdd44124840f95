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
  k: Float[Array, "B S H D"]  # post-RoPE keys
  v: Float[Array, "B S H D"]


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


def write_slots(positions: Int[Array, "P"], size: int, num_sinks: int) -> Int[Array, "P"]:
  """Slots to write a chunk into; a token overwritten later in the same chunk gets ``size``
  (out of bounds, dropped by the scatter) so every slot is written at most once."""
  ring = size - num_sinks
  last = positions[-1]
  overwritten = (positions >= num_sinks) & (positions + ring <= last)
  return jnp.where(overwritten, size, slot_of(positions, size, num_sinks))


def insert(kv: KVCache, k_BPHD, v_BPHD, slots) -> KVCache:
  """Writes a chunk's keys and values into their slots (from ``write_slots``)."""
  k = kv.k.at[:, slots].set(k_BPHD.astype(kv.k.dtype), mode="drop")
  v = kv.v.at[:, slots].set(v_BPHD.astype(kv.v.dtype), mode="drop")
  return KVCache(k, v)


def record(slot_pos, slots, positions) -> Int[Array, "S"]:
  """The positions the slots hold after ``insert`` (shared by all layers)."""
  return slot_pos.at[slots].set(positions, mode="drop")


def chronological(kv: KVCache, slot_pos, pos) -> tuple[Float[Array, "B W H D"], Float[Array, "B W H D"], Int[Array, "W"]]:
  """The ``W`` most recent tokens before ``pos`` of a sink-free ring, oldest first."""
  W = slot_pos.shape[0]
  slots = (pos - W + jnp.arange(W)) % W
  return kv.k[:, slots], kv.v[:, slots], slot_pos[slots]


def empty_kv(batch: int, size: int, heads: int, head_dim: int, dtype) -> KVCache:
  shape = (batch, size, heads, head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def empty_memory(batch: int, heads: int, head_dim: int, normalize_read: bool, two_timescales: bool) -> MemoryState:
  A = jnp.zeros((batch, heads, head_dim, head_dim), jnp.float32)
  z = jnp.zeros((batch, heads, head_dim), jnp.float32) if normalize_read else None
  return MemoryState(A, z, jnp.zeros_like(A) if two_timescales else None)


def empty_infini(batch: int, heads: int, head_dim: int) -> InfiniState:
  M = jnp.zeros((batch, heads, head_dim, head_dim), jnp.float32)
  z = jnp.zeros((batch, heads, head_dim), jnp.float32)
  return InfiniState(M, z, M, z)
