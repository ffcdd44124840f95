"""GPU kernels (Pallas, Triton lowering): one program per (batch, head), chunks in a loop.

Block layout: each program sees its head's whole stream in place, ``[T, D]`` slices of the
``[B, T, H, D]`` arrays (no transposes), and walks its ``N = T / C`` chunks in a
``fori_loop`` with the ``D x D`` float32 state (and the ``1 x D`` normaliser state) carried
on chip. The forward pass also writes the state entering each chunk (``[B, H, N, D, D]``);
the backward pass walks the chunks in reverse, recomputes each chunk from its saved state
and pulls the cotangents back through ``chunk.chunk_step`` (``jax.vjp`` in the kernel).

Shapes: ``q, k, v [B, T, H, D]`` (T a multiple of ``C``; any float dtype, read as float32),
``g [H, N, 1, C]`` log decays, ``eta [H, 1, 1]``, states ``A [B, H, D, D]``, ``z [B, H, 1, D]``.
``C`` and ``D`` must be powers of two of at least 16 (Triton's matrix products).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.memory_scan import chunk

f32 = jnp.float32


def _compiler_params(D: int):
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
  return cls(num_warps=4 if D <= 64 else 8, num_stages=1)


def _stream_spec(T, D):
  return pl.BlockSpec((None, T, None, D), lambda b, h: (b, 0, h, 0))


def _state_spec(*shape):
  return pl.BlockSpec((None, None) + shape, lambda b, h: (b, h) + (0,) * len(shape))


def _head_specs(N, C):
  return (pl.BlockSpec((None, N, 1, C), lambda b, h: (h, 0, 0, 0)),
          pl.BlockSpec((None, 1, 1), lambda b, h: (h, 0, 0)))


def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, A0_ref, z0_ref,
                r_ref, qz_ref, A_ref, z_ref, *saved_refs, rule, read_first, precision, C, N):
  eta = eta_ref[...]

  def body(n, carry):
    S, z = carry
    t = pl.ds(pl.multiple_of(n * C, C), C)
    if saved_refs:  # the state entering the chunk, for the backward pass
      saved_refs[0][n] = S
      saved_refs[1][n] = z
    r, qz, S, z = chunk.chunk_step(
        q_ref[t, :].astype(f32), k_ref[t, :].astype(f32), v_ref[t, :].astype(f32), g_ref[n], eta, S, z,
        rule=rule, read_first=read_first, precision=precision)
    r_ref[t, :] = r.astype(r_ref.dtype)
    qz_ref[t, :] = qz
    return S, z

  S, z = jax.lax.fori_loop(0, N, body, (A0_ref[...].astype(f32), z0_ref[...].astype(f32)))
  A_ref[...] = S
  z_ref[...] = z


def _bwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, Ss_ref, zs_ref, dr_ref, dqz_ref, dA_ref, dz_ref,
                dq_ref, dk_ref, dv_ref, dg_ref, deta_ref, dA0_ref, dz0_ref, *, rule, read_first, precision, C, N):
  eta = eta_ref[...]

  def body(i, carry):
    dS, dz, deta = carry
    n = N - 1 - i
    t = pl.ds(pl.multiple_of(n * C, C), C)
    grads = chunk.chunk_vjp(
        q_ref[t, :].astype(f32), k_ref[t, :].astype(f32), v_ref[t, :].astype(f32), g_ref[n], eta,
        Ss_ref[n], zs_ref[n], (dr_ref[t, :].astype(f32), dqz_ref[t, :], dS, dz),
        rule=rule, read_first=read_first, precision=precision)
    dq, dk, dv, dg, deta_c, dS, dz = grads
    dq_ref[t, :] = dq.astype(dq_ref.dtype)
    dk_ref[t, :] = dk.astype(dk_ref.dtype)
    dv_ref[t, :] = dv.astype(dv_ref.dtype)
    dg_ref[n] = dg
    return dS, dz, deta + deta_c

  init = (dA_ref[...].astype(f32), dz_ref[...].astype(f32), jnp.zeros((1, 1), f32))
  dS, dz, deta = jax.lax.fori_loop(0, N, body, init)
  dA0_ref[...] = dS
  dz0_ref[...] = dz
  deta_ref[...] = deta


def forward(q, k, v, g, eta, A0, z0, *, rule, read_first, precision="highest", save=True, interpret=False):
  """``(r [B,T,H,D], qz [B,T,H,1], A, z)`` and with ``save`` the states entering each chunk
  ``S_in [B,H,N,D,D]``, ``z_in [B,H,N,1,D]``; all float32."""
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  stream = _stream_spec(T, D)
  kernel = functools.partial(_fwd_kernel, rule=rule, read_first=read_first, precision=precision, C=C, N=N)
  out_shape = (jax.ShapeDtypeStruct((B, T, H, D), f32), jax.ShapeDtypeStruct((B, T, H, 1), f32),
               jax.ShapeDtypeStruct((B, H, D, D), f32), jax.ShapeDtypeStruct((B, H, 1, D), f32))
  out_specs = [stream, _stream_spec(T, 1), _state_spec(D, D), _state_spec(1, D)]
  if save:
    out_shape += (jax.ShapeDtypeStruct((B, H, N, D, D), f32), jax.ShapeDtypeStruct((B, H, N, 1, D), f32))
    out_specs += [_state_spec(N, D, D), _state_spec(N, 1, D)]
  return pl.pallas_call(
      kernel, grid=(B, H), out_shape=out_shape,
      in_specs=[stream, stream, stream, *_head_specs(N, C), _state_spec(D, D), _state_spec(1, D)],
      out_specs=out_specs,
      interpret=interpret, compiler_params=None if interpret else _compiler_params(D),
  )(q, k, v, g, eta, A0, z0)


def backward(q, k, v, g, eta, S_in, z_in, dr, dqz, dA, dz, *, rule, read_first, precision="highest", interpret=False):
  """``(dq, dk, dv)`` in the inputs' dtypes, ``dg [B,H,N,1,C]``, ``deta [B,H,1,1]``, ``dA0``,
  ``dz0``: per batch row (the caller sums ``dg`` and ``deta`` over ``B``)."""
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  stream = _stream_spec(T, D)
  kernel = functools.partial(_bwd_kernel, rule=rule, read_first=read_first, precision=precision, C=C, N=N)
  out_shape = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
               jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct((B, H, N, 1, C), f32),
               jax.ShapeDtypeStruct((B, H, 1, 1), f32), jax.ShapeDtypeStruct((B, H, D, D), f32),
               jax.ShapeDtypeStruct((B, H, 1, D), f32))
  return pl.pallas_call(
      kernel, grid=(B, H), out_shape=out_shape,
      in_specs=[stream, stream, stream, *_head_specs(N, C), _state_spec(N, D, D), _state_spec(N, 1, D),
                stream, _stream_spec(T, 1), _state_spec(D, D), _state_spec(1, D)],
      out_specs=[stream, stream, stream, _state_spec(N, 1, C), _state_spec(1, 1), _state_spec(D, D),
                 _state_spec(1, D)],
      interpret=interpret, compiler_params=None if interpret else _compiler_params(D),
  )(q, k, v, g, eta, S_in, z_in, dr, dqz, dA, dz)
