"""TPU kernel (Pallas, Mosaic TPU): one decode step of the memory, as ``kernel_gpu``.

Grid ``(B, H)``, both axes parallel: program ``(b, h)`` holds the head's ``D x D`` float32
state in VMEM with its query, key and value rows ``[1, D]``, normalises the key, writes the
pair by the rule and reads the state (the maths of ``kernel_gpu``). The outer products
``k^T v`` are MXU products contracting a length-1 axis, the reads ``q A`` and ``k A`` one-row
products, all float32 (``precision=HIGHEST``). The new state is declared to share the old
one's buffer (``input_output_aliases``).

Shapes: ``q, k, v [B, H, D]`` (any float dtype), ``g, eta [H]``, ``A [B, H, D, D]``, ``z [B,
H, D]``; a block is a whole row or state of one head, so Mosaic takes any ``D`` (``ops``
passes powers of two from 16 to 128).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels.memory_step import body

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


def _dot(a, b, contract):
  return jax.lax.dot_general(a, b, (contract, ((), ())), precision=HIGHEST, preferred_element_type=f32)


def _kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, A_ref, *refs, **statics):
  rows, outer = ((1,), (0,)), ((0,), (0,))  # q A: a row times the state; a^T b: an outer product
  body.step(q_ref, k_ref, v_ref, jnp.exp(g_ref[...]), eta_ref[...], A_ref, refs, **statics,  # lam, eta [1, 1]
            row_times=lambda a, M: _dot(a, M, rows), outer=lambda a, b: _dot(a, b, outer))


def step(q, k, v, g, eta, A, z, *, rule, read_first, normalize_q, eps, interpret=False):
  """``(r [B, H, D], qz [B, H] or None, A, z)`` in float32, as ``kernel_gpu.step``."""
  B, H, D = q.shape
  with_z = z is not None
  row = pl.BlockSpec((None, None, 1, D), lambda b, h: (b, h, 0, 0))
  mat = pl.BlockSpec((None, None, D, D), lambda b, h: (b, h, 0, 0))
  head = pl.BlockSpec((None, 1, 1), lambda b, h: (h, 0, 0))
  one = pl.BlockSpec((None, None, 1, 1), lambda b, h: (b, h, 0, 0))
  in_specs = [row, row, row, head, head, mat] + [row] * with_z
  out_specs = [row, mat] + [one, row] * with_z
  shapes = [jax.ShapeDtypeStruct((B, H, 1, D), f32), jax.ShapeDtypeStruct((B, H, D, D), f32)]
  shapes += [jax.ShapeDtypeStruct((B, H, 1, 1), f32), jax.ShapeDtypeStruct((B, H, 1, D), f32)] * with_z
  kernel = functools.partial(_kernel, rule=rule, read_first=read_first, normalize_q=normalize_q, eps=eps,
                             with_z=with_z)
  rows = lambda x: x[:, :, None]  # [B, H, D] -> [B, H, 1, D]
  scalars = lambda x: x.astype(f32).reshape(H, 1, 1)
  args = (rows(q), rows(k), rows(v), scalars(g), scalars(eta), A.astype(f32))
  args += (rows(z.astype(f32)),) if with_z else ()
  outs = pl.pallas_call(kernel, grid=(B, H), in_specs=in_specs, out_specs=out_specs, out_shape=shapes,
                        input_output_aliases={5: 1, 6: 3} if with_z else {5: 1}, interpret=interpret,
                        compiler_params=common.tpu_params("parallel", "parallel"))(*args)
  if with_z:
    r, A, qz, z = outs
    return r[:, :, 0], qz[:, :, 0, 0], A, z[:, :, 0]
  r, A = outs
  return r[:, :, 0], None, A, None
