"""TPU kernels (Pallas, Mosaic TPU): grid ``(B, H, N)``, one chunk per grid step.

Block layout: the streams are read heads-major, ``[B, H, T, D]`` (one transpose in and out:
Mosaic wants the last two block dimensions to be ``(C, D)``, which the ``[B, T, H, D]``
layout cannot give), one ``C x D`` block per grid step; the chunk axis is sequential
(``arbitrary``) and the ``D x D`` float32 state lives in VMEM scratch between its steps. The
forward pass writes the state entering each chunk; the backward pass runs the chunk axis in
reverse (index maps ``N - 1 - n``), recomputes each chunk from its saved state and pulls the
cotangents back through ``chunk.chunk_step`` with ``jax.vjp`` in the kernel body.

Same arguments and results as ``kernel_gpu`` (``[B, T, H, D]`` streams, ``g [H, N, 1, C]``,
``eta [H, 1, 1]``); ``C`` a multiple of 8.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common
from pallas_kernels.memory_scan import chunk

f32 = jnp.float32


def _specs(N, C, D, reverse: bool):
  at = (lambda n: N - 1 - n) if reverse else (lambda n: n)
  stream = pl.BlockSpec((None, None, C, D), lambda b, h, n: (b, h, at(n), 0))
  column = pl.BlockSpec((None, None, C, 1), lambda b, h, n: (b, h, at(n), 0))
  g = pl.BlockSpec((None, None, 1, C), lambda b, h, n: (h, at(n), 0, 0))
  eta = pl.BlockSpec((None, 1, 1), lambda b, h, n: (h, 0, 0))
  saved = [pl.BlockSpec((None, None, None) + s, lambda b, h, n: (b, h, at(n), 0, 0)) for s in ((D, D), (1, D))]
  state = [pl.BlockSpec((None, None) + s, lambda b, h, n: (b, h, 0, 0)) for s in ((D, D), (1, D), (1, 1))]
  return stream, column, g, eta, saved, state


def _heads_major(x):
  return x.transpose(0, 2, 1, 3)


def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, A0_ref, z0_ref, r_ref, qz_ref, A_ref, z_ref, *refs,
                rule, read_first, precision, N):
  *saved_refs, S_scr, z_scr = refs
  n = pl.program_id(2)

  @pl.when(n == 0)
  def _():
    S_scr[...] = A0_ref[...].astype(f32)
    z_scr[...] = z0_ref[...].astype(f32)

  S, z = S_scr[...], z_scr[...]
  if saved_refs:  # the state entering the chunk, for the backward pass
    saved_refs[0][...] = S
    saved_refs[1][...] = z
  r, qz, S, z = chunk.chunk_step(q_ref[...].astype(f32), k_ref[...].astype(f32), v_ref[...].astype(f32),
                                 g_ref[...], eta_ref[...], S, z, rule=rule, read_first=read_first, precision=precision)
  r_ref[...] = r
  qz_ref[...] = qz
  S_scr[...] = S
  z_scr[...] = z

  @pl.when(n == N - 1)
  def _():
    A_ref[...] = S
    z_ref[...] = z


def _bwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, Ss_ref, zs_ref, dr_ref, dqz_ref, dA_ref, dz_ref,
                dq_ref, dk_ref, dv_ref, dg_ref, deta_ref, dA0_ref, dz0_ref, dS_scr, dz_scr, deta_scr,
                *, rule, read_first, precision, N):
  i = pl.program_id(2)

  @pl.when(i == 0)
  def _():
    dS_scr[...] = dA_ref[...].astype(f32)
    dz_scr[...] = dz_ref[...].astype(f32)
    deta_scr[...] = jnp.zeros_like(deta_scr)

  step = functools.partial(chunk.chunk_step, rule=rule, read_first=read_first, precision=precision)
  primals = (q_ref[...].astype(f32), k_ref[...].astype(f32), v_ref[...].astype(f32), g_ref[...], eta_ref[...],
             Ss_ref[...], zs_ref[...])
  grads = chunk.pullback(step, primals, (dr_ref[...], dqz_ref[...], dS_scr[...], dz_scr[...]))
  dq, dk, dv, dg, deta, dS, dz = grads
  dq_ref[...] = dq.astype(dq_ref.dtype)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dg_ref[...] = dg
  dS_scr[...] = dS
  dz_scr[...] = dz
  deta_scr[...] += deta

  @pl.when(i == N - 1)
  def _():
    dA0_ref[...] = dS
    dz0_ref[...] = dz
    deta_ref[...] = deta_scr[...]


def forward(q, k, v, g, eta, A0, z0, *, rule, read_first, precision="highest", save=True, interpret=False):
  """As ``kernel_gpu.forward``."""
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  stream, column, g_spec, eta_spec, saved, state = _specs(N, C, D, reverse=False)
  out_shape = (jax.ShapeDtypeStruct((B, H, T, D), f32), jax.ShapeDtypeStruct((B, H, T, 1), f32),
               jax.ShapeDtypeStruct((B, H, D, D), f32), jax.ShapeDtypeStruct((B, H, 1, D), f32))
  out_specs = [stream, column, state[0], state[1]]
  if save:
    out_shape += (jax.ShapeDtypeStruct((B, H, N, D, D), f32), jax.ShapeDtypeStruct((B, H, N, 1, D), f32))
    out_specs += saved
  r, qz, A, z, *saved_states = pl.pallas_call(
      functools.partial(_fwd_kernel, rule=rule, read_first=read_first, precision=precision, N=N),
      grid=(B, H, N), out_shape=out_shape,
      in_specs=[stream, stream, stream, g_spec, eta_spec, state[0], state[1]],
      out_specs=out_specs,
      scratch_shapes=[pltpu.VMEM((D, D), f32), pltpu.VMEM((1, D), f32)],
      compiler_params=common.tpu_params("parallel", "parallel", "arbitrary"), interpret=interpret,
  )(_heads_major(q), _heads_major(k), _heads_major(v), g, eta, A0, z0)
  r, qz = _heads_major(r), _heads_major(qz)
  return (r, qz, A, z, tuple(saved_states)) if save else (r, qz, A, z)


def backward(q, k, v, g, eta, saved, dr, dqz, dA, dz, *, rule, read_first, precision="highest", interpret=False):
  """As ``kernel_gpu.backward`` (``saved``: the states entering each chunk; ``deta [B,H,1,1]``)."""
  S_in, z_in = saved
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  stream, column, g_spec, eta_spec, saved, state = _specs(N, C, D, reverse=True)
  dg_spec = pl.BlockSpec((None, None, None, 1, C), lambda b, h, n: (b, h, N - 1 - n, 0, 0))
  out_shape = (jax.ShapeDtypeStruct((B, H, T, D), q.dtype), jax.ShapeDtypeStruct((B, H, T, D), k.dtype),
               jax.ShapeDtypeStruct((B, H, T, D), v.dtype), jax.ShapeDtypeStruct((B, H, N, 1, C), f32),
               jax.ShapeDtypeStruct((B, H, 1, 1), f32), jax.ShapeDtypeStruct((B, H, D, D), f32),
               jax.ShapeDtypeStruct((B, H, 1, D), f32))
  dq, dk, dv, dg, deta, dA0, dz0 = pl.pallas_call(
      functools.partial(_bwd_kernel, rule=rule, read_first=read_first, precision=precision, N=N),
      grid=(B, H, N), out_shape=out_shape,
      in_specs=[stream, stream, stream, g_spec, eta_spec, saved[0], saved[1], stream, column, state[0], state[1]],
      out_specs=[stream, stream, stream, dg_spec, state[2], state[0], state[1]],
      scratch_shapes=[pltpu.VMEM((D, D), f32), pltpu.VMEM((1, D), f32), pltpu.VMEM((1, 1), f32)],
      compiler_params=common.tpu_params("parallel", "parallel", "arbitrary"), interpret=interpret,
  )(*(_heads_major(x) for x in (q, k, v)), g, eta, S_in, z_in, _heads_major(dr), _heads_major(dqz), dA, dz)
  return _heads_major(dq), _heads_major(dk), _heads_major(dv), dg, deta, dA0, dz0
