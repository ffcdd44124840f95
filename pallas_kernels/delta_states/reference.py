"""The pure-jnp reference of the delta rule's state pass: a ``lax.scan`` over chunks.

Shapes (chunked layout): ``U [B, H, N, C, V]``, ``Wk, Kw [B, H, N, C, K]``, chunk decays
``lam [H, N]`` and the entering state ``S0 [B, H, K, V]``, all float32. From the state ``S``
entering chunk ``n`` the chunk writes ``W_n = U_n - Wk_n S`` and leaves
``lam_n S + Kw_n^T W_n``. Returns ``(W, S_in, S)``: the written vectors, the state entering
each chunk ``[B, H, N, K, V]`` and the final state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


def delta_states(U, Wk, Kw, lam, S0):
  mm = lambda spec, a, b: jnp.einsum(spec, a, b, precision=HIGHEST, preferred_element_type=f32)

  def step(S, xs):
    U_n, Wk_n, Kw_n, lam_n = xs
    W_n = U_n - mm("bhck,bhkv->bhcv", Wk_n, S)
    return lam_n[None, :, None, None] * S + mm("bhck,bhcv->bhkv", Kw_n, W_n), (W_n, S)

  chunks = lambda x: jnp.moveaxis(x, 2, 0)
  S, (W, S_in) = jax.lax.scan(step, S0.astype(f32), (chunks(U), chunks(Wk), chunks(Kw), lam.T))
  return jnp.moveaxis(W, 0, 2), jnp.moveaxis(S_in, 0, 2), S
