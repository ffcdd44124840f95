"""GPU kernel (Pallas, Triton lowering): one query per ``(batch, head)`` against its cache.

Grid ``(B, H, n_split)``: program ``(b, h, j)`` reads slots ``[j S/n, (j+1) S/n)`` of the
head's keys and values in blocks of ``block`` slots, each exactly once, and keeps the online
softmax of those slots in float32 registers: the running maximum ``m``, the sum ``l`` of
``exp(s - m)`` and the weighted value sum ``acc [D]``. It writes ``acc`` and ``(m, l)``;
``ops`` combines the splits and the token's own key. Splitting the slots gives a batch of one
enough programs to keep the GPU's memory system busy (12 heads alone use 12 of 132 SMs).

Scores are ``<q, k> / sqrt(D)`` by elementwise products and a sum over ``D`` (a one-row
matrix product is below Triton's 16-row minimum); the L1 mask is the one of
``tensorcache.attention.visible`` (causal, valid, in-window or a sink), computed from the
slot positions. A slot that is masked contributes nothing; a split with no visible slot
leaves ``m = NEG``, ``l = 0``, ``acc = 0``.

Shapes: ``q, q_sink [B, H, D]``, ``k, v [B, H, S, D]`` (any float dtype, read as float32),
``slot_pos [S]`` and ``pos [1]`` int32. ``block`` and ``D`` are powers of two, ``block``
divides ``S / n_split``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import common

f32 = jnp.float32
NEG = -1e30  # finite "minus infinity": exp(NEG - NEG) stays 1, never NaN


def _kernel(pos_ref, slot_ref, q_ref, qs_ref, k_ref, v_ref, acc_ref, ml_ref, *, block, per_split, window,
            num_sinks, sink_query):
  j = pl.program_id(2)
  pos = pos_ref[0]
  scale = 1.0 / (q_ref.shape[-1] ** 0.5)
  q = q_ref[...].astype(f32)
  qs = qs_ref[...].astype(f32)

  def body(i, carry):
    m, l, acc = carry
    t = pl.ds(pl.multiple_of(j * per_split + i * block, block), block)
    kp = slot_ref[t]
    k = k_ref[t, :].astype(f32)
    s = jnp.sum(k * q[None, :], axis=1) * scale
    if sink_query:  # sink keys are scored against the sink query
      s = jnp.where(kp < num_sinks, jnp.sum(k * qs[None, :], axis=1) * scale, s)
    ok = (kp >= 0) & (kp <= pos)
    if window is not None:
      ok &= (kp > pos - window) | (kp < num_sinks)
    m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, NEG)))
    p = jnp.where(ok, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m - m_new)
    v = v_ref[t, :].astype(f32)
    return m_new, alpha * l + jnp.sum(p), alpha * acc + jnp.sum(p[:, None] * v, axis=0)

  init = (jnp.asarray(NEG, f32), jnp.asarray(0.0, f32), jnp.zeros(q.shape, f32))
  m, l, acc = jax.lax.fori_loop(0, per_split // block, body, init)
  acc_ref[...] = acc
  ml_ref[...] = jnp.where(jnp.arange(2) == 0, m, l)


def partials(q, q_sink, k, v, slot_pos, pos, *, window, num_sinks, block, n_split, num_warps=4, num_stages=2,
             interpret=False):
  """``(acc [B, H, n_split, D], ml [B, H, n_split, 2])`` float32: each split's weighted value
  sum and its softmax statistics ``(m, l)``."""
  B, H, S, D = k.shape
  per_split = S // n_split
  head = lambda *shape: pl.BlockSpec((None, None) + shape, lambda b, h, j: (b, h) + (0,) * len(shape))
  whole = lambda n: pl.BlockSpec((n,), lambda b, h, j: (0,))
  split = lambda n: pl.BlockSpec((None, None, None, n), lambda b, h, j: (b, h, j, 0))
  kernel = functools.partial(_kernel, block=block, per_split=per_split, window=window, num_sinks=num_sinks,
                             sink_query=q_sink is not None)
  return pl.pallas_call(
      kernel, grid=(B, H, n_split),
      in_specs=[whole(1), whole(S), head(D), head(D), head(S, D), head(S, D)],
      out_specs=[split(D), split(2)],
      out_shape=[jax.ShapeDtypeStruct((B, H, n_split, D), f32), jax.ShapeDtypeStruct((B, H, n_split, 2), f32)],
      interpret=interpret, compiler_params=None if interpret else common.triton_params(num_warps, num_stages),
  )(pos, slot_pos, q, q if q_sink is None else q_sink, k, v)
