"""One chunk of the exact memory scan, written for a kernel body.

Every array is 2-D and float32 (``[C, D]`` chunks, ``[1, C]`` log decays, ``[1, 1]`` write
rate, ``[D, D]`` state, ``[1, D]`` normaliser state); the only operations are matrix
products, elementwise maths, iota masks and axis sums, which Pallas lowers on GPU (Triton)
and TPU (Mosaic) alike. ``chunk_local`` is the part that does not depend on the state entering
the chunk (parallel over chunks), ``chunk_serial`` the part that does, ``chunk_step`` both.
The backward kernels differentiate these functions with ``jax.vjp`` inside the kernel body,
so forward and backward share one definition of the maths.

From the state ``S`` entering the chunk, with ``G_i = sum_{j<=i} g_j`` (``G`` in the chunk's
own frame, so every power ``exp(G_i - G_j)`` has a non-positive exponent):

* outer: ``r_i = sum_{j<=i} eta e^{G_i-G_j} <q_i,k_j> v_j + e^{G_i} q_i S``;
* wedge: the same with the two pairs ``(k, v)`` and ``(v, -k)``;
* delta: the written vectors ``w_i = eta (v_i - k_i A_{i-1})`` solve the unit
  lower-triangular system ``(I + M) W = eta V - eta e^{G_{i-1}} K S`` with
  ``M_ij = eta e^{G_{i-1}-G_j} <k_i,k_j>`` (``j < i``); since ``M`` is nilpotent,
  ``(I + M)^-1 = prod_l (I + (-M)^(2^l))`` (``log2 C - 1`` squarings, no substitution);
* normaliser: ``z_i = e^{g_i} z_{i-1} + eta k_i``, ``qz_i = <q_i, z_i>``.

``read_first`` reads ``A_{i-1}`` instead of ``A_i`` (strict masks, ``G_{i-1}``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

f32 = jnp.float32
RULES = ("outer", "delta", "wedge")


PRECISIONS = {
    # float32 products (IEEE on GPU: no tensor cores; multi-pass on TPU)
    "highest": lax.Precision.HIGHEST,
    # three TF32 passes on GPU tensor cores (about float32 accuracy; GPU compiles only)
    "tf32x3": lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
}


def _dot(a, b, ta: bool = False, tb: bool = False, precision: str = "highest"):
  """``a @ b`` (``a.T`` / ``b.T`` if asked) with float32 accumulation."""
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=PRECISIONS[precision], preferred_element_type=f32)


def unit_lower_inverse(M_CC, precision: str = "highest"):
  """``(I + M)^-1`` for strictly lower-triangular ``M``: ``sum_n (-M)^n`` as the product
  ``(I - M)(I + M^2)(I + M^4)...`` (``M^C = 0``)."""
  C = M_CC.shape[0]
  eye = jnp.where(lax.broadcasted_iota(jnp.int32, (C, C), 0) == lax.broadcasted_iota(jnp.int32, (C, C), 1),
                  1.0, 0.0).astype(f32)
  power = -M_CC
  inv = eye + power
  span = 2
  while span < C:
    power = _dot(power, power, precision=precision)
    inv = inv + _dot(inv, power, precision=precision)
    span *= 2
  return inv


def local_shapes(rule: str, C: int, D: int):
  """Shapes of ``chunk_local``'s fields, in order."""
  if rule == "delta":  # U, Wk, P, q_read, Kw, lam, qz_local, dz
    return [(C, D), (C, D), (C, C), (C, D), (C, D), (1, 1), (C, 1), (1, D)]
  return [(C, D), (C, D), (D, D), (1, 1), (C, 1), (1, D)]  # o, q_read, dS, lam, qz_local, dz


def chunk_local(q, k, v, g_1C, eta_11, *, rule: str, read_first: bool, precision: str = "highest"):
  """Everything about a chunk that does not depend on the state entering it.

  delta: ``U = T^-1 eta V`` and ``Wk = T^-1 eta e^{G_prev} K`` (so the written vectors are
  ``W = U - Wk S``), the decayed scores ``P``, ``q_read = e^{G_read} q``, ``Kw = e^{G_C-G} k``;
  outer / wedge: the chunk's own reads ``o`` and state increment ``dS``; every rule: the
  chunk's decay ``lam = e^{G_C}`` and the normaliser's own read and increment.
  """
  C = q.shape[0]
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  g_C1 = jnp.sum(jnp.where(row == col, g_1C, 0.0), axis=1, keepdims=True)
  G_C1 = jnp.sum(jnp.where(col <= row, g_1C, 0.0), axis=1, keepdims=True)  # G_i as a column
  G_1C = jnp.sum(jnp.where(row <= col, g_C1, 0.0), axis=0, keepdims=True)  # G_j as a row
  G_last = jnp.sum(g_1C, axis=1, keepdims=True)  # [1, 1]
  G_prev = G_C1 - g_C1
  G_read = G_prev if read_first else G_C1
  causal = (col < row) if read_first else (col <= row)

  def decay(rows_C1, mask):  # exp(rows_i - G_j) on the mask, 0 elsewhere
    return jnp.where(mask, jnp.exp(jnp.where(mask, rows_C1 - G_1C, 0.0)), 0.0)

  dot = functools.partial(_dot, precision=precision)
  read_decay = decay(G_read, causal)
  w_last = jnp.exp(G_last - G_C1)  # [C, 1]
  lam = jnp.exp(G_last)
  q_read = q * jnp.exp(G_read)
  P = dot(q, k, tb=True) * read_decay
  Kw = k * w_last
  qz_local = eta_11 * jnp.sum(P, axis=1, keepdims=True)
  dz = eta_11 * jnp.sum(Kw, axis=0, keepdims=True)
  if rule == "delta":
    M = dot(k, k, tb=True) * decay(G_prev, col < row) * eta_11
    Tinv = unit_lower_inverse(M, precision)
    U = dot(Tinv, eta_11 * v)
    Wk = dot(Tinv, eta_11 * jnp.exp(G_prev) * k)
    return U, Wk, P, q_read, Kw, lam, qz_local, dz
  o = eta_11 * dot(P, v)
  dS = dot(Kw, v, ta=True)
  if rule == "wedge":
    o = o - eta_11 * dot(dot(q, v, tb=True) * read_decay, k)
    dS = dS - dot(v * w_last, k, ta=True)
  return o, q_read, eta_11 * dS, lam, qz_local, dz


def chunk_serial(fields, S_DD, z_1D, *, rule: str, precision: str = "highest"):
  """From the state entering the chunk and its ``chunk_local`` fields: the reads and the
  state after it, ``(r [C,D], qz [C,1], S [D,D], z [1,D])``."""
  dot = functools.partial(_dot, precision=precision)
  if rule == "delta":
    U, Wk, P, q_read, Kw, lam, qz_local, dz = fields
    W = U - dot(Wk, S_DD)  # the written vectors w_i = eta (v_i - k_i A_{i-1})
    r = dot(P, W) + dot(q_read, S_DD)
    S_new = lam * S_DD + dot(Kw, W, ta=True)
  else:
    o, q_read, dS, lam, qz_local, dz = fields
    r = o + dot(q_read, S_DD)
    S_new = lam * S_DD + dS
  qz = qz_local + jnp.sum(q_read * z_1D, axis=1, keepdims=True)
  return r, qz, S_new, lam * z_1D + dz


def chunk_step(q, k, v, g_1C, eta_11, S_DD, z_1D, *, rule: str, read_first: bool, precision: str = "highest"):
  """Reads of one chunk and the state after it: ``(r [C,D], qz [C,1], S [D,D], z [1,D])``."""
  fields = chunk_local(q, k, v, g_1C, eta_11, rule=rule, read_first=read_first, precision=precision)
  return chunk_serial(fields, S_DD, z_1D, rule=rule, precision=precision)


def pullback(f, primals, cotangents):
  """Cotangents of ``f``'s inputs from those of its outputs (``jax.vjp`` in a kernel body)."""
  return jax.vjp(f, *primals)[1](cotangents)
