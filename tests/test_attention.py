"""L1 attention (METHOD.md §5, §8): the chunked scan against the dense oracle and against a
numpy softmax whose window / sink mask is built by hand (independent of ``visible``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import attention

from _util import assert_close, assert_differs

B, T, H, D, BLOCK = 2, 37, 2, 16, 8  # T is not a multiple of the block


def _qkv(seed: int):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return tuple(jax.random.normal(k, (B, T, H, D)) for k in ks)  # q, k, v, q_sink


def _numpy_attention(q, k, v, window, num_sinks=0, q_sink=None):
  """float64 softmax attention; query t sees key s iff s <= t and (t - s < window or s < n)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  T_ = q.shape[1]
  mask = np.zeros((T_, T_), bool)
  for t in range(T_):
    for s in range(t + 1):
      if window is None or t - s < window or s < num_sinks:
        mask[t, s] = True
  logits = np.einsum("bthd,bshd->bhts", q, k)
  if q_sink is not None:
    alt = np.einsum("bthd,bshd->bhts", np.asarray(q_sink, np.float64), k)
    logits[..., :num_sinks] = alt[..., :num_sinks]
  logits = np.where(mask, logits / np.sqrt(q.shape[-1]), -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", p, v)


SINK_CASES = {"no_sinks": (0, False), "sinks2": (2, False), "sinks2_qsink": (2, True)}
CASES = [(w, s) for w in (1, 3, 8, None) for s in SINK_CASES if w is not None or s == "no_sinks"]


@pytest.mark.parametrize("window,sinks", CASES, ids=[f"window{w}-{s}" for w, s in CASES])
def test_chunked_equals_dense_and_numpy(window, sinks):
  num_sinks, use_qsink = SINK_CASES[sinks]
  q, k, v, qs = _qkv(seed=(window or 0) * 10 + num_sinks + use_qsink)
  qs = qs if use_qsink else None
  dense = attention.dense_attention(q, k, v, window, num_sinks, qs)
  chunked = jax.jit(attention.chunked_window_attention, static_argnums=(3, 4, 6))(
      q, k, v, window, num_sinks, qs, BLOCK)
  ref = _numpy_attention(q, k, v, window, num_sinks, qs)
  assert chunked.shape == dense.shape == (B, T, H, D)
  assert_close(dense, ref, 1e-5, "dense vs numpy")
  assert_close(chunked, ref, 1e-5, "chunked vs numpy")
  assert_close(chunked, dense, 1e-5, "chunked vs dense")
  if window is not None:  # the window mask matters at this T
    assert_differs(ref, _numpy_attention(q, k, v, None), what="window vs full")
  if num_sinks:
    assert_differs(ref, _numpy_attention(q, k, v, window), what="sinks vs no sinks")
  if use_qsink:
    assert_differs(ref, _numpy_attention(q, k, v, window, num_sinks), what="q_sink vs q")


def test_window_one_returns_own_value():
  q, k, v, _ = _qkv(seed=5)
  out = attention.chunked_window_attention(q, k, v, 1, block=BLOCK)
  assert_close(out, v, 1e-6, "window 1")


@pytest.mark.parametrize("window", [T, T + 5, 4 * T])
def test_window_at_least_sequence_equals_full(window):
  q, k, v, _ = _qkv(seed=7)
  full = attention.dense_attention(q, k, v, None)
  assert_close(attention.dense_attention(q, k, v, window), full, 1e-6, "dense")
  assert_close(attention.chunked_window_attention(q, k, v, window, block=BLOCK), full, 1e-5, "chunked")
  assert_differs(attention.dense_attention(q, k, v, T - 5), full, what="window < T")


@pytest.mark.parametrize("block", [1, 5, 8, 64])
def test_chunked_any_block_size(block):
  q, k, v, qs = _qkv(seed=9)
  ref = _numpy_attention(q, k, v, 6, 2, qs)
  assert_close(attention.chunked_window_attention(q, k, v, 6, 2, qs, block), ref, 1e-5, f"block {block}")


@pytest.mark.parametrize("window,num_sinks,qsink", [(8, 0, False), (None, 0, False), (8, 2, True)],
                         ids=["window8", "full", "sinks2_qsink"])
def test_chunked_gradients_equal_dense(window, num_sinks, qsink):
  q, k, v, qs = _qkv(seed=11)
  qs = qs if qsink else None
  cot = jax.random.normal(jax.random.PRNGKey(12), (B, T, H, D))

  def loss(fn, q, k, v, qs):
    return jnp.sum(fn(q, k, v, qs) * cot)

  dense = lambda q, k, v, qs: attention.dense_attention(q, k, v, window, num_sinks, qs)
  chunked = lambda q, k, v, qs: attention.chunked_window_attention(q, k, v, window, num_sinks, qs, BLOCK)
  argnums = (1, 2, 3, 4) if qsink else (1, 2, 3)
  g_dense = jax.grad(loss, argnums)(dense, q, k, v, qs)
  g_chunk = jax.jit(jax.grad(loss, argnums), static_argnums=0)(chunked, q, k, v, qs)
  for name, a, b in zip("qkvs", g_chunk, g_dense):
    assert_close(a, b, 1e-5, f"d{name}")


@pytest.mark.parametrize("length", [1, 3])
def test_sequence_shorter_than_sinks(length):
  """A sequence of fewer tokens than sinks: every key is a sink (chunked == dense == numpy)."""
  q, k, v, qs = (x[:, :length] for x in _qkv(seed=13))
  ref = _numpy_attention(q, k, v, 6, 4, qs)
  assert_close(attention.dense_attention(q, k, v, 6, 4, qs), ref, 1e-5, "dense")
  assert_close(attention.chunked_window_attention(q, k, v, 6, 4, qs, BLOCK), ref, 1e-5, "chunked")
