"""GPU kernel (Pallas, Triton lowering): one decode step of the memory.

Grid ``(B, H)``: program ``(b, h)`` loads the head's raw query, key and value ``[D]`` and its
``D x D`` float32 state, normalises the key (``k / (|k| + eps)``; a zero key, a step that
writes nothing, stays zero), writes the pair by the rule and reads the state:

* outer ``A' = lam A + eta k (x) v``; wedge ``... + eta (k (x) v - v (x) k)``; delta
  ``... + eta k (x) (v - k A)``;
* ``r = q A'`` (``q A`` with ``read_first``), and with the normaliser ``z' = lam z + eta k``,
  ``qz = <q, z'>`` (``<q, z>``).

The new state is declared to share the old one's buffer (``input_output_aliases``), so the
kernel reads and writes the state once each (whether XLA adds a copy around the call depends
on the program it sits in). Products are elementwise multiplies and sums in float32 on the
CUDA cores (a one-row matrix product is below Triton's 16-row minimum).

Shapes: ``q, k, v [B, H, D]`` (any float dtype), ``g, eta [H]`` float32, ``A [B, H, D, D]``,
``z [B, H, D]`` float32; ``D`` a power of two.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels.memory_step import body

f32 = jnp.float32


def _kernel(q_ref, k_ref, v_ref, g_ref, eta_ref, A_ref, *refs, **statics):
  h = pl.program_id(1)
  body.step(q_ref, k_ref, v_ref, jnp.exp(g_ref[h]), eta_ref[h], A_ref, refs, **statics,
            row_times=lambda a, M: jnp.sum(a[:, None] * M, axis=0), outer=lambda a, b: a[:, None] * b[None, :])


def step(q, k, v, g, eta, A, z, *, rule, read_first, normalize_q, eps, interpret=False):
  """``(r [B, H, D], qz [B, H] or None, A, z)`` in float32; ``A`` (and ``z``) updated in place."""
  B, H, D = q.shape
  with_z = z is not None
  vec = pl.BlockSpec((None, None, D), lambda b, h: (b, h, 0))
  mat = pl.BlockSpec((None, None, D, D), lambda b, h: (b, h, 0, 0))
  head = pl.BlockSpec((H,), lambda b, h: (0,))
  in_specs = [vec, vec, vec, head, head, mat] + [vec] * with_z
  out_specs = [vec, mat] + [pl.BlockSpec((None, None, 2), lambda b, h: (b, h, 0)), vec] * with_z
  shapes = [jax.ShapeDtypeStruct((B, H, D), f32), jax.ShapeDtypeStruct((B, H, D, D), f32)]
  shapes += [jax.ShapeDtypeStruct((B, H, 2), f32), jax.ShapeDtypeStruct((B, H, D), f32)] * with_z
  kernel = functools.partial(_kernel, rule=rule, read_first=read_first, normalize_q=normalize_q, eps=eps,
                             with_z=with_z)
  aliases = {5: 1, 6: 3} if with_z else {5: 1}
  args = (q, k, v, g.astype(f32), eta.astype(f32), A.astype(f32)) + ((z.astype(f32),) if with_z else ())
  outs = pl.pallas_call(kernel, grid=(B, H), in_specs=in_specs, out_specs=out_specs, out_shape=shapes,
                        input_output_aliases=aliases, interpret=interpret,
                        compiler_params=None if interpret else common.triton_params(4 if D <= 64 else 8))(*args)
  if with_z:
    r, A, qz, z = outs
    return r, qz[..., 0], A, z
  r, A = outs
  return r, None, A, None
