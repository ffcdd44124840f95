"""L1: causal softmax attention over a sliding window (optionally with sink tokens).

A query at position ``t`` sees the keys ``s`` with ``t - window < s <= t`` (``window`` recent
keys; ``None`` means unbounded causal attention) plus, for StreamingLLM, the sink keys
``s < num_sinks``. Logits, softmax statistics and accumulation are float32.

Two implementations of the parallel form:

* ``dense_attention``: the ``T x T`` masked oracle (``Impl.REFERENCE``);
* ``chunked_window_attention``: ``lax.scan`` over query blocks, each block reading only the
  ``block + window - 1`` keys it can see (plus the sinks), so memory is ``O(T * (W + block))``
  and no ``T x T`` array exists (``Impl.XLA``).

The other libraries' kernels that ``Impl.AUTO`` prefers on GPU and TPU (cuDNN, splash) are
in ``fast_attention.py``; both forms here are their oracles.

``attend`` is the shared core. Streaming (``stream_attention``) scores a chunk against the
ring buffer (keys with explicit slot positions) and against itself as two blocks under one
softmax; ``concat_stream_attention``, its oracle, concatenates them and calls ``attend``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from tensorcache.blocks import from_blocks, to_blocks
from tensorcache.shapes import NEG_INF


def visible(
    q_pos: Int[Array, "*T 1"] | Int[Array, "T"],
    k_pos: Int[Array, "*S"],
    window: int | None,
    num_sinks: int = 0,
) -> Bool[Array, "T S"]:
  """Which keys each query sees: causal, valid (position >= 0), in-window or a sink."""
  q_pos = jnp.asarray(q_pos)[..., :, None]
  k_pos = jnp.asarray(k_pos)[..., None, :]
  ok = (k_pos >= 0) & (k_pos <= q_pos)
  if window is not None:
    ok &= (k_pos > q_pos - window) | (k_pos < num_sinks)
  return ok


def attend(
    q_BTHD: Float[Array, "B T H D"],
    k_BSHD: Float[Array, "B S H D"],
    v_BSHD: Float[Array, "B S H D"],
    mask: Bool[Array, "*B T S"],
    q_alt_BTHD: Float[Array, "B T H D"] | None = None,
    use_alt: Bool[Array, "*B S"] | None = None,
) -> Float[Array, "B T H D"]:
  """Masked softmax attention with scale ``1/sqrt(D)`` and float32 statistics.

  ``q_alt``/``use_alt``: keys flagged in ``use_alt`` are scored against ``q_alt`` instead of
  ``q`` (sinks with in-cache RoPE positions). A row with no visible key returns zeros.
  """
  scale = 1.0 / jnp.sqrt(jnp.float32(q_BTHD.shape[-1]))
  # float32 inputs get float32 products (not TF32 / one bf16 pass); half-precision inputs
  # multiply exactly on tensor cores with float32 accumulation either way.
  prec = jax.lax.Precision.HIGHEST if q_BTHD.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  logits = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD, preferred_element_type=jnp.float32, precision=prec)
  if q_alt_BTHD is not None:
    alt = jnp.einsum("bthd,bshd->bhts", q_alt_BTHD, k_BSHD, preferred_element_type=jnp.float32, precision=prec)
    logits = jnp.where(use_alt[..., None, None, :], alt, logits)
  logits = jnp.where(mask[..., None, :, :] if mask.ndim == 3 else mask, logits * scale, NEG_INF)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  p = jnp.where(logits > NEG_INF / 2, p, 0.0)
  denom = jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  out = jnp.einsum("bhts,bshd->bthd", p / denom, v_BSHD.astype(jnp.float32), precision=prec)
  return out.astype(q_BTHD.dtype)


def dense_attention(
    q_BTHD: Float[Array, "B T H D"],
    k_BTHD: Float[Array, "B T H D"],
    v_BTHD: Float[Array, "B T H D"],
    window: int | None,
    num_sinks: int = 0,
    q_sink_BTHD: Float[Array, "B T H D"] | None = None,
) -> Float[Array, "B T H D"]:
  """The ``T x T`` oracle: every query against every key under the L1 mask."""
  pos = jnp.arange(q_BTHD.shape[1])
  mask = visible(pos, pos, window, num_sinks)
  return attend(q_BTHD, k_BTHD, v_BTHD, mask, q_sink_BTHD, pos < num_sinks)


def chunked_window_attention(
    q_BTHD: Float[Array, "B T H D"],
    k_BTHD: Float[Array, "B T H D"],
    v_BTHD: Float[Array, "B T H D"],
    window: int | None,
    num_sinks: int = 0,
    q_sink_BTHD: Float[Array, "B T H D"] | None = None,
    block: int = 128,
) -> Float[Array, "B T H D"]:
  """``lax.scan`` over query blocks; block ``i`` reads keys ``[i*Q - window + 1, (i+1)*Q)``.

  With ``window=None`` (full causal attention) each block reads all keys. Sinks that fall
  outside a block's key span are appended to it, so every key is counted once.
  """
  B, T, H, D = q_BTHD.shape
  Q = min(block, T)
  nb = -(-T // Q)
  pad_t = nb * Q - T
  span = nb * Q if window is None else Q + window - 1
  front = 0 if window is None else window - 1

  def pad(x, front_pad):
    return jnp.pad(x, ((0, 0), (front_pad, pad_t), (0, 0), (0, 0)))

  k_pad, v_pad = pad(k_BTHD, front), pad(v_BTHD, front)
  k_pos_pad = jnp.arange(-front, nb * Q) if window is not None else jnp.arange(nb * Q)
  k_pos_pad = jnp.where(k_pos_pad < T, k_pos_pad, -1)  # padded tail keys are invalid
  q_blocks = to_blocks(q_BTHD, Q)
  qs_blocks = None if q_sink_BTHD is None else to_blocks(q_sink_BTHD, Q)
  num_sinks = min(num_sinks, T)  # a sequence shorter than the sinks holds only T of them
  sink_pos = jnp.arange(num_sinks)
  k_sink, v_sink = k_BTHD[:, :num_sinks], v_BTHD[:, :num_sinks]

  def body(_, xs):
    i, q_blk, qs_blk = xs
    start = i * Q if window is not None else 0
    k_blk = jax.lax.dynamic_slice_in_dim(k_pad, start, span, axis=1)
    v_blk = jax.lax.dynamic_slice_in_dim(v_pad, start, span, axis=1)
    kp = jax.lax.dynamic_slice_in_dim(k_pos_pad, start, span)
    qp = i * Q + jnp.arange(Q)
    mask = visible(qp, kp, window)  # recent keys only
    use_alt = kp < num_sinks
    if num_sinks:
      # Sinks outside the recent span of this query.
      sink_mask = visible(qp, sink_pos, None) & ~visible(qp, sink_pos, window)
      k_blk = jnp.concatenate([k_sink, k_blk], axis=1)
      v_blk = jnp.concatenate([v_sink, v_blk], axis=1)
      mask = jnp.concatenate([sink_mask, mask], axis=1)
      use_alt = jnp.concatenate([sink_pos < num_sinks, use_alt])
    out = attend(q_blk, k_blk, v_blk, mask, qs_blk, use_alt if qs_blk is not None else None)
    return None, out

  xs = (jnp.arange(nb), q_blocks, qs_blocks)
  _, out = jax.lax.scan(body, None, xs)
  return from_blocks(out, T)


def _stream_block(q_BPHD, q_sink_BPHD, k_BHSD, q_pos_P, k_pos_S, window, num_sinks):
  """Scaled float32 scores ``[B, H, P, S]`` of a chunk's queries against one key block, and
  the block's L1 mask ``[P, S]`` (sink keys scored against ``q_sink`` when it is given)."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q_BPHD.shape[-1]))
  prec = jax.lax.Precision.HIGHEST if q_BPHD.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  score = lambda q: jnp.einsum("bphd,bhsd->bhps", q, k_BHSD, preferred_element_type=jnp.float32, precision=prec)
  s = score(q_BPHD)
  if q_sink_BPHD is not None:
    s = jnp.where(k_pos_S < num_sinks, score(q_sink_BPHD), s)
  return s * scale, visible(q_pos_P, k_pos_S, window, num_sinks)


def stream_attention(
    q_BPHD: Float[Array, "B P H D"],
    k_cache_BHSD: Float[Array, "B H S D"],
    v_cache_BHSD: Float[Array, "B H S D"],
    cache_pos_S: Int[Array, "S"],
    k_BPHD: Float[Array, "B P H D"],
    v_BPHD: Float[Array, "B P H D"],
    positions_P: Int[Array, "P"],
    window: int | None,
    num_sinks: int = 0,
    q_sink_BPHD: Float[Array, "B P H D"] | None = None,
) -> Float[Array, "B P H D"]:
  """A chunk of ``P`` queries against a streaming cache (as it was before the chunk) and
  against the chunk itself, under the L1 mask (``visible``; cache slots at -1 are empty).

  The cache block ``s_c [P, S]`` and the chunk block ``s_p [P, P]`` share one softmax:
  ``o = (e_c V_c + e_p V_p) / (sum e_c + sum e_p)``, ``e = exp(s - m)``, ``m`` the row max
  over both blocks. The cache is read in place: nothing of ``S + P`` keys is built, and its
  heads-major layout batches both products over ``(B, H)`` as stored (no transposed copy).
  Scores, max and sums are float32, float32 inputs multiply at HIGHEST precision (as in
  ``attend``). The probabilities enter the value product in the values' dtype with a float32
  result: exact for float32, and for bf16 the flash-attention practice, cheaper than a
  float32 copy of the cache.
  """
  k_BHPD, v_BHPD = k_BPHD.swapaxes(1, 2), v_BPHD.swapaxes(1, 2)
  s_c, ok_c = _stream_block(q_BPHD, q_sink_BPHD, k_cache_BHSD, positions_P, cache_pos_S, window, num_sinks)
  s_p, ok_p = _stream_block(q_BPHD, q_sink_BPHD, k_BHPD, positions_P, positions_P, window, num_sinks)
  row_max = lambda s, ok: jnp.max(jnp.where(ok, s, NEG_INF), axis=-1, keepdims=True)
  m = jnp.maximum(row_max(s_c, ok_c), row_max(s_p, ok_p))
  e_c = jnp.where(ok_c, jnp.exp(s_c - m), 0.0)
  e_p = jnp.where(ok_p, jnp.exp(s_p - m), 0.0)
  denom = jnp.maximum(e_c.sum(-1, keepdims=True) + e_p.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  prec = jax.lax.Precision.HIGHEST if v_cache_BHSD.dtype == jnp.float32 else jax.lax.Precision.DEFAULT

  def values(e, v_BHSD):
    return jnp.einsum("bhps,bhsd->bphd", (e / denom).astype(v_BHSD.dtype), v_BHSD,
                      preferred_element_type=jnp.float32, precision=prec)

  return (values(e_c, v_cache_BHSD) + values(e_p, v_BHPD)).astype(q_BPHD.dtype)


def concat_stream_attention(q_BPHD, k_cache_BHSD, v_cache_BHSD, cache_pos_S, k_BPHD, v_BPHD, positions_P,
                            window, num_sinks=0, q_sink_BPHD=None) -> Float[Array, "B P H D"]:
  """The oracle of ``stream_attention`` (``Impl.REFERENCE``): cache and chunk concatenated
  into ``S + P`` keys under one masked softmax (``attend``)."""
  keys = jnp.concatenate([k_cache_BHSD.swapaxes(1, 2).astype(k_BPHD.dtype), k_BPHD], axis=1)
  values = jnp.concatenate([v_cache_BHSD.swapaxes(1, 2).astype(v_BPHD.dtype), v_BPHD], axis=1)
  k_pos = jnp.concatenate([cache_pos_S, positions_P])
  use_alt = k_pos < num_sinks if q_sink_BPHD is not None else None
  return attend(q_BPHD, keys, values, visible(positions_P, k_pos, window, num_sinks), q_sink_BPHD, use_alt)
