"""Rotary position embedding with interleaved pairs ``(2i, 2i+1)`` (GPT-J style)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rope_inv_freq(head_dim: int, base: float = 10000.0, scaling: float = 1.0) -> Float[Array, "D/2"]:
  """Inverse frequencies ``base'^(-2i/D)``; NTK scaling ``base' = base * s^(D/(D-2))`` when s > 1."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}; change n_head or d_model.")
  if scaling > 1.0:
    base = base * scaling ** (head_dim / (head_dim - 2))
  return 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(
    x_BTHD: Float[Array, "B T H D"],
    positions: Int[Array, "T"] | Int[Array, "B T"],
    base: float = 10000.0,
    scaling: float = 1.0,
) -> Float[Array, "B T H D"]:
  """Rotates each pair ``(x_2i, x_2i+1)`` by ``pos * inv_freq_i`` (angles in float32).

  ``out_2i = x_2i cos - x_2i+1 sin``, ``out_2i+1 = x_2i+1 cos + x_2i sin``.
  """
  inv_freq = rope_inv_freq(x_BTHD.shape[-1], base, scaling)
  pos = jnp.asarray(positions, jnp.float32)
  if pos.ndim == 1:
    pos = pos[None]
  angles = pos[..., None] * inv_freq  # [B|1, T, D/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_BTHD.astype(jnp.float32)
  x_even, x_odd = x[..., 0::2], x[..., 1::2]
  out = jnp.stack([x_even * cos - x_odd * sin, x_odd * cos + x_even * sin], axis=-1)
  return out.reshape(x_BTHD.shape).astype(x_BTHD.dtype)
