"""Infini-attention (Munkhdalai et al., 2024): compressive memory beside windowed attention.

Per head ``M`` (``D x D``) and ``z`` (``D``), feature map ``phi = ELU + 1``, no decay:

* read: ``phi(q) M / (phi(q) . z + 1e-5)``;
* write a segment ``(K, V)``: linear ``M += phi(K)^T V``, or delta
  ``M += phi(K)^T (V - phi(K) M / (phi(K) z + 1e-5))``; ``z += sum_t phi(K_t)``.

Every token of segment ``s`` reads the state left by segments ``< s``. Streaming keeps the
current segment's writes pending (computed against the committed state, as the segment
write would) and commits them when the segment is complete, so streaming with the
training segment equals the parallel form; a segment of 1 is the reference's streaming
(read, then write the current token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from tensorcache.blocks import from_blocks, to_blocks
from tensorcache.cache import InfiniState
from tensorcache.shapes import INFINI_EPS

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST  # float32 math on GPU and TPU too


def feature_map(x):
  return jax.nn.elu(x.astype(f32)) + 1.0


def read(phi_q_BSHD, M_BHDD, z_BHD) -> Float[Array, "B S H D"]:
  """``phi(q) M / (phi(q) . z + eps)``."""
  num = jnp.einsum("bshd,bhde->bshe", phi_q_BSHD, M_BHDD, precision=HIGHEST)
  den = jnp.einsum("bshd,bhd->bsh", phi_q_BSHD, z_BHD, precision=HIGHEST)[..., None] + INFINI_EPS
  return num / den


def write_terms(phi_k_BSHD, v_BSHD, M_BHDD, z_BHD, rule: str):
  """``(phi(K)^T U, sum phi(K))`` of a write against the committed state (``U`` per rule)."""
  u = v_BSHD.astype(f32)
  if rule == "delta":
    u = u - read(phi_k_BSHD, M_BHDD, z_BHD)
  return jnp.einsum("bshd,bshe->bhde", phi_k_BSHD, u, precision=HIGHEST), phi_k_BSHD.sum(1)


def segment_scan(q_BTHD, k_BTHD, v_BTHD, rule: str, segment: int, state: InfiniState):
  """Parallel (training) form: ``lax.scan`` over segments. Returns reads and the new state."""
  T = q_BTHD.shape[1]
  S = min(segment, T)
  valid = to_blocks(jnp.ones((T,), f32), S, axis=0)

  def body(carry, xs):
    M, z = carry
    q, k, v, ok = xs
    r = read(feature_map(q), M, z)
    dM, dz = write_terms(feature_map(k) * ok[None, :, None, None], v, M, z, rule)
    return (M + dM, z + dz), r

  xs = tuple(to_blocks(x, S) for x in (q_BTHD, k_BTHD, v_BTHD)) + (valid,)
  (M, z), r = jax.lax.scan(body, (state.M, state.z), xs)
  r = from_blocks(r, T)
  return r, InfiniState(M, z, state.M_pend, state.z_pend)


def stream(q_BPHD, k_BPHD, v_BPHD, positions, rule: str, segment: int, state: InfiniState):
  """A chunk of ``P`` tokens at consecutive ``positions`` from ``state``: every token reads
  the committed state, adds its write to the pending segment, and a segment is committed
  after its last position (``(p + 1) % segment == 0``).

  The committed state changes only at segment ends, so the chunk is laid out on the segment
  grid (``J`` whole segments, the chunk at offset ``positions[0] % segment``, the rest
  masked) and runs as a ``lax.scan`` over those segments, each in parallel: one step for a
  decode token, ``P / segment + 1`` for a prefill chunk (``P`` when ``segment`` is 1)."""
  B, P, H, D = q_BPHD.shape
  J = -(-(P + segment - 1) // segment)
  offset = positions[0] % segment
  first = positions[0] // segment

  def on_grid(x):  # [B, P, ...] -> [J, B, segment, ...]
    x = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((B, J * segment) + x.shape[2:], x.dtype), x, offset, axis=1)
    return jnp.moveaxis(x.reshape((B, J, segment) + x.shape[2:]), 1, 0)

  def step(st, xs):
    j, q, k, v, ok = xs
    r = read(feature_map(q), st.M, st.z)
    dM, dz = write_terms(feature_map(k) * ok[..., None, None], v, st.M, st.z, rule)
    M_pend, z_pend = st.M_pend + dM, st.z_pend + dz
    commit = (first + j + 1) * segment - 1 <= positions[-1]  # the segment's last position is in the chunk
    st = InfiniState(
        jnp.where(commit, st.M + M_pend, st.M), jnp.where(commit, st.z + z_pend, st.z),
        jnp.where(commit, 0.0, M_pend), jnp.where(commit, 0.0, z_pend))
    return st, r

  ok = jnp.ones((B, P), f32)
  xs = (jnp.arange(J),) + tuple(on_grid(x) for x in (q_BPHD, k_BPHD, v_BPHD, ok))
  state, r = jax.lax.scan(step, state, xs)
  r = jnp.moveaxis(r, 0, 1).reshape((B, J * segment, H, D))
  return jax.lax.dynamic_slice_in_dim(r, offset, P, axis=1), state
