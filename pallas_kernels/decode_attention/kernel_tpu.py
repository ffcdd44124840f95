"""TPU kernel (Pallas, Mosaic TPU): one query per ``(batch, head)`` against its cache.

Grid ``(B, H, S / block)``: the block axis is sequential (``arbitrary``) and carries the
online softmax of the head's slots in float32 VMEM scratch (running maximum ``m``, ``l =
sum exp(s - m)``, ``acc = sum exp(s - m) v``); each step reads one ``block x D`` tile of keys
and of values, once. The last step writes ``acc`` and ``(m, l)`` in the layout of
``kernel_gpu.partials`` with one split, so ``ops`` combines both kernels' results the same way
(a TPU core runs its grid in order: splitting the slots across programs would not add
parallelism, only the two cores of a megacore chip share the parallel axes).

Scores ``q k^T / sqrt(D)`` and the value product are MXU matrix products of one query row,
in float32 (``precision=HIGHEST``: the values are read as float32, as on GPU). The mask is
``tensorcache.attention.visible`` computed from the slot positions (causal, valid, in-window
or a sink); sink keys are scored against the sink query when one is given.

Shapes: ``q, q_sink [B, H, D]``, ``k, v [B, H, S, D]`` (any float dtype), ``slot_pos [S]`` and
``pos [1]`` int32; ``block`` divides ``S`` and is a multiple of 128 or all of ``S`` (Mosaic's
rule for the int32 slot-position tile).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common

f32 = jnp.float32
NEG = -1e30  # as kernel_gpu: a finite "minus infinity"
HIGHEST = jax.lax.Precision.HIGHEST


def block_for(S: int) -> int:
  """The largest of 512, 256 and 128 that divides ``S``; ``S`` itself when none does."""
  return next((b for b in (512, 256, 128) if S % b == 0), S)


def _row_dot(a, b, transpose_b: bool):
  dims = (((1,), (1,)), ((), ())) if transpose_b else (((1,), (0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, precision=HIGHEST, preferred_element_type=f32)


def _kernel(pos_ref, slot_ref, q_ref, qs_ref, k_ref, v_ref, acc_ref, ml_ref, m_scr, l_scr, acc_scr, *, window,
            num_sinks, sink_query):
  j = pl.program_id(2)

  @pl.when(j == 0)
  def _():
    m_scr[...] = jnp.full(m_scr.shape, NEG, f32)
    l_scr[...] = jnp.zeros(l_scr.shape, f32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, f32)

  pos = pos_ref[0]
  scale = 1.0 / (q_ref.shape[-1] ** 0.5)
  k = k_ref[...].astype(f32)  # [block, D]
  kp = slot_ref[...]  # [1, block]
  s = _row_dot(q_ref[...].astype(f32), k, transpose_b=True) * scale  # [1, block]
  if sink_query:
    s = jnp.where(kp < num_sinks, _row_dot(qs_ref[...].astype(f32), k, transpose_b=True) * scale, s)
  ok = (kp >= 0) & (kp <= pos)
  if window is not None:
    ok &= (kp > pos - window) | (kp < num_sinks)
  m = m_scr[...]  # [1, 1]
  m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, NEG), axis=1, keepdims=True))
  p = jnp.where(ok, jnp.exp(s - m_new), 0.0)
  alpha = jnp.exp(m - m_new)
  l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
  acc_scr[...] = alpha * acc_scr[...] + _row_dot(p, v_ref[...].astype(f32), transpose_b=False)
  m_scr[...] = m_new

  @pl.when(j == pl.num_programs(2) - 1)
  def _():
    acc_ref[...] = acc_scr[...]
    ml_ref[...] = jnp.where(jax.lax.broadcasted_iota(jnp.int32, (1, 2), 1) == 0, m_scr[...], l_scr[...])


def partials(q, q_sink, k, v, slot_pos, pos, *, window, num_sinks, block, interpret=False):
  """``(acc [B, H, 1, D], ml [B, H, 1, 2])`` float32: the weighted value sum over the whole
  cache and its softmax statistics ``(m, l)`` (``kernel_gpu.partials`` with one split)."""
  B, H, S, D = k.shape
  row = pl.BlockSpec((None, None, 1, D), lambda b, h, j: (b, h, 0, 0))
  tile = pl.BlockSpec((None, None, block, D), lambda b, h, j: (b, h, j, 0))
  kernel = functools.partial(_kernel, window=window, num_sinks=num_sinks, sink_query=q_sink is not None)
  rows = lambda x: x[:, :, None]  # [B, H, D] -> [B, H, 1, D]
  return pl.pallas_call(
      kernel, grid=(B, H, S // block),
      in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), pl.BlockSpec((1, block), lambda b, h, j: (0, j)),
                row, row, tile, tile],
      out_specs=[row, pl.BlockSpec((None, None, 1, 2), lambda b, h, j: (b, h, 0, 0))],
      out_shape=[jax.ShapeDtypeStruct((B, H, 1, D), f32), jax.ShapeDtypeStruct((B, H, 1, 2), f32)],
      scratch_shapes=[pltpu.VMEM((1, 1), f32), pltpu.VMEM((1, 1), f32), pltpu.VMEM((1, D), f32)],
      compiler_params=common.tpu_params("parallel", "parallel", "arbitrary"), interpret=interpret,
  )(pos, slot_pos[None], rows(q), rows(q if q_sink is None else q_sink), k, v)
