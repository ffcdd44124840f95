"""The step both memory-step kernels run on their refs (the maths of ``reference``).

The kernels differ only in how they multiply: ``row_times(a, M)`` is the row ``a`` times the
``D x D`` state, ``outer(a, b)`` the outer product ``a^T b`` (GPU: elementwise products and
sums on ``[D]`` vectors; TPU: MXU products on ``[1, D]`` rows). Everything is float32.
"""

from __future__ import annotations

import jax.numpy as jnp

f32 = jnp.float32


def unit(x, eps):
  """``x / (|x| + eps)`` over the last axis; a zero key (nothing written) stays zero."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return x / (norm + eps)


def step(q_ref, k_ref, v_ref, lam, eta, A_ref, refs, *, row_times, outer, rule, read_first, normalize_q, eps,
         with_z):
  """Normalises the key (and the query), writes the pair by ``rule`` into ``A_ref``'s state
  with decay ``lam`` and rate ``eta``, and writes the read ``r``, the new state and, with the
  normaliser, ``q . z`` (broadcast over its block) and the new ``z`` to ``refs``."""
  if with_z:
    z_ref, r_ref, A_out, qz_ref, z_out = refs
  else:
    r_ref, A_out = refs
  q = q_ref[...].astype(f32)
  q = unit(q, eps) if normalize_q else q
  k = unit(k_ref[...].astype(f32), eps)
  v = v_ref[...].astype(f32)
  A = A_ref[...]
  if rule == "delta":
    v = v - row_times(k, A)
  upd = outer(k, v)
  if rule == "wedge":
    upd = upd - outer(v, k)
  A_new = lam * A + eta * upd
  r_ref[...] = row_times(q, A if read_first else A_new)
  A_out[...] = A_new
  if with_z:
    z = z_ref[...]
    z_new = lam * z + eta * k
    qz_ref[...] = jnp.broadcast_to(jnp.sum(q * (z if read_first else z_new), axis=-1, keepdims=True), qz_ref.shape)
    z_out[...] = z_new
