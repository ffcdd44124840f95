"""GPU kernels (Pallas, Triton lowering): a parallel pass over chunks, then a serial pass over
each head's chunks with the state on chip.

Forward, two kernels:

* local, grid ``(B, H, N)``: one program per chunk computes ``chunk.chunk_local`` (all that
  does not depend on the state entering the chunk: the delta rule's UT transform, the decayed
  scores, the linear rules' chunk reads and increments) and writes its fields
  (``[B, H, N, ., .]`` float32, contiguous per chunk);
* serial, grid ``(B, H)``: one program per head walks its ``N`` chunks in a ``fori_loop``
  with the ``D x D`` float32 state (and the ``1 x D`` normaliser) carried on chip, applying
  ``chunk.chunk_serial`` (delta: 4 matrix products per chunk; outer / wedge: 1), writing the
  reads into ``[B, T, H, D]`` in place and, for the backward pass, the state entering each chunk.

Backward, the same two in reverse order: the serial kernel walks the chunks backwards and
pulls the cotangents through ``chunk_serial`` (``jax.vjp`` in the kernel body) to the fields
and the carried state; the local kernel pulls the fields' cotangents through
``chunk_local`` to ``q, k, v``, the log decays and the write rate, in parallel.

Shapes: ``q, k, v [B, T, H, D]`` (T a multiple of ``C``; any float dtype, read as float32),
``g [H, N, 1, C]`` log decays, ``eta [H, 1, 1]``, states ``A [B, H, D, D]``, ``z [B, H, 1, D]``.
``C`` and ``D`` must be powers of two of at least 16 (Triton's matrix products).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels.memory_scan import chunk

f32 = jnp.float32


def _call(kernel, grid, in_specs, out_specs, out_shape, num_warps, interpret):
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                        interpret=interpret, compiler_params=None if interpret else common.triton_params(num_warps))


# Grid (B, H, N): one chunk.
def _chunk_specs(C, D):
  x = pl.BlockSpec((None, C, None, D), lambda b, h, n: (b, n, h, 0))
  g = pl.BlockSpec((None, None, 1, C), lambda b, h, n: (h, n, 0, 0))
  eta = pl.BlockSpec((None, 1, 1), lambda b, h, n: (h, 0, 0))
  return x, g, eta


def _field_spec(shape):
  return pl.BlockSpec((None, None, None) + shape, lambda b, h, n: (b, h, n, 0, 0))


# Grid (B, H): one head's whole stream.
def _head_spec(*shape):
  return pl.BlockSpec((None, None) + shape, lambda b, h: (b, h) + (0,) * len(shape))


def _stream_spec(T, F):
  return pl.BlockSpec((None, T, None, F), lambda b, h: (b, 0, h, 0))


def _local_fwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, *field_refs, statics):
  fields = chunk.chunk_local(q_ref[...].astype(f32), k_ref[...].astype(f32), v_ref[...].astype(f32),
                             g_ref[...], eta_ref[...], **statics)
  for ref, x in zip(field_refs, fields):
    ref[...] = x


def _local_bwd_kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, *refs, statics):
  *dfield_refs, dq_ref, dk_ref, dv_ref, dg_ref, deta_ref = refs
  primals = (q_ref[...].astype(f32), k_ref[...].astype(f32), v_ref[...].astype(f32), g_ref[...], eta_ref[...])
  dq, dk, dv, dg, deta = chunk.pullback(functools.partial(chunk.chunk_local, **statics), primals,
                                        tuple(ref[...] for ref in dfield_refs))
  dq_ref[...] = dq.astype(dq_ref.dtype)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  dg_ref[...] = dg
  deta_ref[...] = deta


def _serial_fwd_kernel(*refs, n_fields, rule, precision, C, N):
  field_refs, (A0_ref, z0_ref, r_ref, qz_ref, A_ref, z_ref, *saved_refs) = refs[:n_fields], refs[n_fields:]

  def body(n, carry):
    S, z = carry
    t = pl.ds(pl.multiple_of(n * C, C), C)
    if saved_refs:  # the state entering the chunk, for the backward pass
      saved_refs[0][n] = S
      saved_refs[1][n] = z
    fields = tuple(ref[n] for ref in field_refs)
    r, qz, S, z = chunk.chunk_serial(fields, S, z, rule=rule, precision=precision)
    r_ref[t, :] = r
    qz_ref[t, :] = qz
    return S, z

  S, z = jax.lax.fori_loop(0, N, body, (A0_ref[...], z0_ref[...]))
  A_ref[...] = S
  z_ref[...] = z


def _serial_bwd_kernel(*refs, n_fields, rule, precision, C, N):
  field_refs, rest = refs[:n_fields], refs[n_fields:]
  (Ss_ref, zs_ref, dr_ref, dqz_ref, dA_ref, dz_ref), rest = rest[:6], rest[6:]
  dfield_refs, (dA0_ref, dz0_ref) = rest[:n_fields], rest[n_fields:]
  serial = functools.partial(chunk.chunk_serial, rule=rule, precision=precision)

  def body(i, carry):
    dS, dz = carry
    n = N - 1 - i
    t = pl.ds(pl.multiple_of(n * C, C), C)
    fields = tuple(ref[n] for ref in field_refs)
    dfields, dS, dz = chunk.pullback(serial, (fields, Ss_ref[n], zs_ref[n]), (dr_ref[t, :], dqz_ref[t, :], dS, dz))
    for ref, x in zip(dfield_refs, dfields):
      ref[n] = x
    return dS, dz

  dS, dz = jax.lax.fori_loop(0, N, body, (dA_ref[...], dz_ref[...]))
  dA0_ref[...] = dS
  dz0_ref[...] = dz


def _field_shapes(rule, B, H, N, C, D):
  return [jax.ShapeDtypeStruct((B, H, N) + s, f32) for s in chunk.local_shapes(rule, C, D)]


def forward(q, k, v, g, eta, A0, z0, *, rule, read_first, precision="highest", save=True, interpret=False):
  """``(r [B,T,H,D], qz [B,T,H,1], A, z)`` in float32, and with ``save`` the residuals of the
  backward pass: the chunks' fields and the states entering each chunk."""
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  x, g_spec, eta_spec = _chunk_specs(C, D)
  shapes = _field_shapes(rule, B, H, N, C, D)
  statics = dict(rule=rule, read_first=read_first, precision=precision)
  fields = _call(functools.partial(_local_fwd_kernel, statics=statics), (B, H, N), [x, x, x, g_spec, eta_spec],
                 [_field_spec(s.shape[3:]) for s in shapes], shapes, 4, interpret)(q, k, v, g, eta)
  out_shape = [jax.ShapeDtypeStruct((B, T, H, D), f32), jax.ShapeDtypeStruct((B, T, H, 1), f32),
               jax.ShapeDtypeStruct((B, H, D, D), f32), jax.ShapeDtypeStruct((B, H, 1, D), f32)]
  out_specs = [_stream_spec(T, D), _stream_spec(T, 1), _head_spec(D, D), _head_spec(1, D)]
  if save:
    out_shape += [jax.ShapeDtypeStruct((B, H, N, D, D), f32), jax.ShapeDtypeStruct((B, H, N, 1, D), f32)]
    out_specs += [_head_spec(N, D, D), _head_spec(N, 1, D)]
  kernel = functools.partial(_serial_fwd_kernel, n_fields=len(shapes), rule=rule, precision=precision, C=C, N=N)
  r, qz, A, z, *states = _call(
      kernel, (B, H), [_head_spec(*s.shape[2:]) for s in shapes] + [_head_spec(D, D), _head_spec(1, D)],
      out_specs, out_shape, 4 if D <= 64 else 8, interpret)(*fields, A0, z0)
  return (r, qz, A, z, (tuple(fields), *states)) if save else (r, qz, A, z)


def backward(q, k, v, g, eta, saved, dr, dqz, dA, dz, *, rule, read_first, precision="highest", interpret=False):
  """``(dq, dk, dv)`` in the inputs' dtypes, ``dg [B,H,N,1,C]``, ``deta [B,H,1,1]``, ``dA0``,
  ``dz0``: per batch row (the caller sums ``dg`` and ``deta`` over ``B``)."""
  fields, S_in, z_in = saved
  B, T, H, D = q.shape
  N, C = g.shape[1], g.shape[3]
  shapes = _field_shapes(rule, B, H, N, C, D)
  kernel = functools.partial(_serial_bwd_kernel, n_fields=len(shapes), rule=rule, precision=precision, C=C, N=N)
  head_fields = [_head_spec(*s.shape[2:]) for s in shapes]
  *dfields, dA0, dz0 = _call(
      kernel, (B, H),
      head_fields + [_head_spec(N, D, D), _head_spec(N, 1, D), _stream_spec(T, D), _stream_spec(T, 1),
                     _head_spec(D, D), _head_spec(1, D)],
      head_fields + [_head_spec(D, D), _head_spec(1, D)],
      shapes + [jax.ShapeDtypeStruct((B, H, D, D), f32), jax.ShapeDtypeStruct((B, H, 1, D), f32)],
      4 if D <= 64 else 8, interpret)(*fields, S_in, z_in, dr, dqz, dA, dz)
  x, g_spec, eta_spec = _chunk_specs(C, D)
  statics = dict(rule=rule, read_first=read_first, precision=precision)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
               jax.ShapeDtypeStruct(v.shape, v.dtype), jax.ShapeDtypeStruct((B, H, N, 1, C), f32),
               jax.ShapeDtypeStruct((B, H, N, 1, 1), f32)]
  dq, dk, dv, dg, deta = _call(
      functools.partial(_local_bwd_kernel, statics=statics), (B, H, N),
      [x, x, x, g_spec, eta_spec] + [_field_spec(s.shape[3:]) for s in shapes],
      [x, x, x, _field_spec((1, C)), _field_spec((1, 1))], out_shape, 4, interpret)(q, k, v, g, eta, *dfields)
  return dq, dk, dv, dg, deta.sum(2), dA0, dz0
