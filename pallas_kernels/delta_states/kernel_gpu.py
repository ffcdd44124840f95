"""GPU kernels (Pallas, Triton lowering) of the delta rule's state pass.

The pass is serial over chunks but separable over the value columns of the state: column
block ``j`` of ``S`` evolves from column block ``j`` of ``S`` and ``U`` alone
(``S' = lam S + Kw^T (U - Wk S)``). The grid is ``(B, H, V / block_v)``: one program per head
and block of ``block_v`` value columns walks the head's ``N`` chunks in a ``fori_loop`` with its
``K x block_v`` float32 slice of the state on chip. Per chunk it reads ``U`` (its columns),
``Wk`` and ``Kw`` (``C x K``, every program of the head reads them), and writes ``W`` (its
columns) and the state entering the chunk. Two ``C x K x block_v`` products per chunk.

The backward kernel walks the chunks in reverse with the cotangent ``L`` of the state leaving
each chunk (separable the same way): ``dW~_n = dW_n + Kw_n L`` and
``L <- lam_n L - Wk_n^T dW~_n + dS_in[n]``. It writes ``dW~`` and every ``L_n``; the products
that sum over value columns (``dWk = -dW~ S_in^T``, ``dKw = W L^T``, ``dlam = <S_in, L>``)
are left to the caller, as batched matrix products over all chunks at once.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common

f32 = jnp.float32
PRECISIONS = {"highest": lax.Precision.HIGHEST, "tf32x3": lax.DotAlgorithmPreset.TF32_TF32_F32_X3}


def _dot(a, b, precision, ta=False):
  dims = (((0 if ta else 1,), (0,)), ((), ()))
  return lax.dot_general(a, b, dims, precision=PRECISIONS[precision], preferred_element_type=f32)


def _specs(N, C, K, block_v):
  cols = pl.BlockSpec((None, None, N, C, block_v), lambda b, h, j: (b, h, 0, 0, j))
  rows = pl.BlockSpec((None, None, N, C, K), lambda b, h, j: (b, h, 0, 0, 0))
  lam = pl.BlockSpec((None, N, 1, 1), lambda b, h, j: (h, 0, 0, 0))
  states = pl.BlockSpec((None, None, N, K, block_v), lambda b, h, j: (b, h, 0, 0, j))
  state = pl.BlockSpec((None, None, K, block_v), lambda b, h, j: (b, h, 0, j))
  return cols, rows, lam, states, state


def _fwd_kernel(U_ref, Wk_ref, Kw_ref, lam_ref, S0_ref, W_ref, S_in_ref, S_ref, *, N, precision):
  def body(n, S):
    S_in_ref[n] = S
    W = U_ref[n] - _dot(Wk_ref[n], S, precision)
    W_ref[n] = W
    return lam_ref[n] * S + _dot(Kw_ref[n], W, precision, ta=True)

  S_ref[...] = lax.fori_loop(0, N, body, S0_ref[...])


def _bwd_kernel(Wk_ref, Kw_ref, lam_ref, dW_ref, dS_in_ref, dS_ref, dWt_ref, L_ref, dS0_ref, *, N, precision):
  def body(i, L):
    n = N - 1 - i
    L_ref[n] = L
    dWt = dW_ref[n] + _dot(Kw_ref[n], L, precision)
    dWt_ref[n] = dWt
    return lam_ref[n] * L - _dot(Wk_ref[n], dWt, precision, ta=True) + dS_in_ref[n]

  dS0_ref[...] = lax.fori_loop(0, N, body, dS_ref[...])


def _call(kernel, B, H, V, block_v, in_specs, out_specs, out_shape, num_warps, num_stages, interpret):
  return pl.pallas_call(kernel, grid=(B, H, V // block_v), in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpret,
                        compiler_params=None if interpret else common.triton_params(num_warps, num_stages))


def forward(U, Wk, Kw, lam, S0, *, block_v, precision="highest", num_warps=4, num_stages=1, interpret=False):
  """``(W [B,H,N,C,V], S_in [B,H,N,K,V], S [B,H,K,V])`` (see ``reference.delta_states``)."""
  B, H, N, C, V = U.shape
  K = Wk.shape[-1]
  cols, rows, lam_spec, states, state = _specs(N, C, K, block_v)
  out_shape = [common.out_struct(s, f32, U) for s in (U.shape, (B, H, N, K, V), (B, H, K, V))]
  kernel = functools.partial(_fwd_kernel, N=N, precision=precision)
  return _call(kernel, B, H, V, block_v, [cols, rows, rows, lam_spec, state], [cols, states, state], out_shape,
               num_warps, num_stages, interpret)(U, Wk, Kw, lam.reshape(H, N, 1, 1), S0)


def backward(Wk, Kw, lam, dW, dS_in, dS, *, block_v, precision="highest", num_warps=4, num_stages=1,
             interpret=False):
  """``(dW~ [B,H,N,C,V], L [B,H,N,K,V], dS0 [B,H,K,V])``: the written vectors' total cotangent,
  the cotangent of the state leaving each chunk and of the entering state."""
  B, H, N, C, V = dW.shape
  K = Wk.shape[-1]
  cols, rows, lam_spec, states, state = _specs(N, C, K, block_v)
  out_shape = [common.out_struct(s, f32, dW) for s in (dW.shape, (B, H, N, K, V), (B, H, K, V))]
  kernel = functools.partial(_bwd_kernel, N=N, precision=precision)
  return _call(kernel, B, H, V, block_v, [rows, rows, lam_spec, cols, states, state], [cols, states, state],
               out_shape, num_warps, num_stages, interpret)(Wk, Kw, lam.reshape(H, N, 1, 1), dW, dS_in, dS)
