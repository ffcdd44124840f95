"""Splitting the time axis into equal blocks for a ``lax.scan`` over them, and back.

``to_blocks`` pads the time axis with zeros to a multiple of the block size and moves the
block index to the front (what ``lax.scan`` iterates); ``from_blocks`` joins a scan's
stacked per-block outputs back into one time axis and cuts the padding off. The query
blocks of the chunked window attention, the chunks of the memory scans and the segments of
Infini-attention all go through this pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_blocks(length: int, size: int) -> int:
  return -(-length // size)


def to_blocks(x: jax.Array, size: int, axis: int = 1) -> jax.Array:
  """``[..., T, ...] -> [N, ..., size, ...]`` with ``N = ceil(T / size)``; the time axis
  (``axis``) is zero-padded to ``N * size`` first."""
  T = x.shape[axis]
  n = num_blocks(T, size)
  if n * size != T:
    x = jnp.pad(x, [(0, 0)] * axis + [(0, n * size - T)] + [(0, 0)] * (x.ndim - axis - 1))
  x = x.reshape(x.shape[:axis] + (n, size) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def from_blocks(y: jax.Array, length: int, axis: int = 1) -> jax.Array:
  """The inverse of ``to_blocks``: ``[N, ..., size, ...] -> [..., length, ...]``."""
  y = jnp.moveaxis(y, 0, axis)
  y = y.reshape(y.shape[:axis] + (-1,) + y.shape[axis + 2:])
  return jax.lax.slice_in_dim(y, 0, length, axis=axis)
