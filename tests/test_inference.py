"""Streaming fast paths: the L1 streaming op against a NumPy oracle, the evicted pairs of a
chunk, prefill at chunk size ``P = W`` against the parallel forward, cache donation, and
prefill memory that grows with ``T`` by the tokens and the requested outputs only.

Decode, ``P < W``, ``P > W`` and target scoring in the scan, for every mechanism, are in
test_model (``test_parallel_equals_decode_equals_prefill``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import cache as cache_lib, dispatch, inference, mechanisms
from tensorcache.model import GPT

from _util import (B, T, VOCAB, assert_close, assert_differs, attention_oracle, cache_positions, forward,
                   init_model, normal, small_config, tokens)
from test_model import CASE_IDS, MECH_CASES

W = 8  # small_config's window


# ------------------------------------------------------------------ L1 streaming op


STREAM_CASES = {  # size, num_sinks, window, pos, P, q_sink
    "decode": (8, 0, 8, 13, 1, False),
    "ring_not_full": (8, 0, 8, 5, 3, False),
    "P_eq_W": (8, 0, 8, 21, 8, False),
    "P_gt_W": (8, 0, 8, 21, 13, False),
    "sinks_absolute": (8, 2, 6, 17, 5, False),
    "sinks_cache": (8, 2, 6, 17, 5, True),
    "sinks_in_chunk": (8, 2, 6, 1, 3, True),
    "full": (24, 0, None, 10, 6, False),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_l1_stream_equals_oracle(case, impl):
  size, n, window, pos, P, sink = STREAM_CASES[case]
  H, D = 2, 16
  seed = 10 * list(STREAM_CASES).index(case)
  q, k, v = (normal(seed + i, (B, P, H, D)) for i in range(3))
  k_c, v_c = (normal(seed + 3 + i, (B, H, size, D)) for i in range(2))
  q_sink = normal(seed + 5, (B, P, H, D)) if sink else None
  pos_c = jnp.asarray(cache_positions(size, n, pos), jnp.int32)
  pos_p = pos + jnp.arange(P)
  out = dispatch.l1_stream(q, k_c, v_c, pos_c, k, v, pos_p, window=window, num_sinks=n, q_sink=q_sink, impl=impl)
  assert out.shape == (B, P, H, D) and out.dtype == jnp.float32
  want = attention_oracle(q, k_c, v_c, pos_c, k, v, pos_p, window, n, q_sink)
  assert_close(out, want, 1e-5, case)
  if case != "P_gt_W":  # there the cache is out of every query's window
    assert_differs(out, attention_oracle(q, k_c, v_c, pos_c, k, v, pos_p, window, n, q_sink, use_cache=False),
                   what="without the cache")


def test_l1_stream_bf16():
  """bf16 inputs: float32 statistics, bf16 probabilities in the value product."""
  size, n, window, pos, P, _ = STREAM_CASES["sinks_absolute"]
  q, k, v = (normal(90 + i, (B, P, 2, 16)).astype(jnp.bfloat16) for i in range(3))
  k_c, v_c = (normal(93 + i, (B, 2, size, 16)).astype(jnp.bfloat16) for i in range(2))
  pos_c = jnp.asarray(cache_positions(size, n, pos), jnp.int32)
  pos_p = pos + jnp.arange(P)
  out = dispatch.l1_stream(q, k_c, v_c, pos_c, k, v, pos_p, window=window, num_sinks=n, impl="xla")
  assert out.dtype == jnp.bfloat16
  assert_close(out, attention_oracle(q, k_c, v_c, pos_c, k, v, pos_p, window, n, None), 2e-2, "bf16")


# ------------------------------------------------------------------ evicted pairs


@pytest.mark.parametrize("pos,P", [(0, 11), (3, 2), (13, 1), (13, 5), (13, 8), (13, 19)])
def test_evicted_stream_positions(pos, P):
  """Keys and values that encode their position: step ``i`` gets ``pos + i - W`` (valid iff
  >= 0) from the ring for ``P <= W``, and from the chunk itself past the first ``W``."""
  held = cache_positions(W, 0, pos)
  code = lambda p: jnp.broadcast_to(jnp.asarray(p, jnp.float32)[None, :, None, None], (B, len(p), 2, 4))
  kv = cache_lib.KVCache(code(held).swapaxes(1, 2), -code(held).swapaxes(1, 2))  # [B, H, W, D]
  chunk = pos + np.arange(P)
  k_ev, v_ev, valid = mechanisms.evicted_stream(kv, jnp.int32(pos), code(chunk), -code(chunk))
  want = pos + np.arange(P) - W
  np.testing.assert_array_equal(valid, want >= 0)
  np.testing.assert_array_equal(np.asarray(k_ev)[:, want >= 0], code(want[want >= 0]))
  np.testing.assert_array_equal(np.asarray(v_ev)[:, want >= 0], -code(want[want >= 0]))


# ------------------------------------------------------------------ prefill == parallel


@pytest.mark.parametrize("case", ["full", "sinks_cache", "infini_delta", "tc_delta"])
def test_prefill_chunk_of_window_size(case):
  """``P = W``: every slot of the ring is evicted within one chunk (T = 37: a remainder of 5)."""
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=CASE_IDS.index(case) + 31)
  toks = tokens(CASE_IDS.index(case) + 31)
  logits, cache = inference.prefill(model, params, toks, chunk=W, all_logits=True)
  assert_close(logits, forward(model, params, toks), 1e-5, "prefill(chunk=W)")
  assert int(cache.pos) == T


def test_prefill_logprobs_rejects_mismatched_targets():
  model, params = init_model(small_config(mechanism="window"), seed=1)
  with pytest.raises(ValueError, match="must have one shape"):
    inference.prefill_logprobs(model, params, tokens(1), tokens(2)[:, :-1])


# ------------------------------------------------------------------ donation


def test_decode_and_prefill_consume_the_cache():
  """A Python decode loop over donated caches: each step consumes the cache it was given
  (a consumed cache cannot be used again) and the logits still equal the parallel forward."""
  cfg = small_config(mechanism="tc", rule="delta")
  model, params = init_model(cfg, seed=3)
  toks = tokens(5)
  parallel = forward(model, params, toks)
  _, cache = inference.prefill(model, params, toks[:, :20], chunk=5)
  steps = []
  for t in range(20, 24):
    old = cache
    logits, cache = inference.decode_step(model, params, cache, toks[:, t])
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old))
    steps.append(logits)
  assert_close(jnp.stack(steps, 1), parallel[:, 20:24], 1e-5, "decode after prefill")
  with pytest.raises((RuntimeError, ValueError), match="deleted"):
    inference.decode_step(model, params, old, toks[:, 24])
  before = cache
  last, cache = inference.prefill(model, params, toks[:, 24:], cache, chunk=5)
  assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(before))
  assert_close(last, parallel[:, -1], 1e-5, "continued prefill")


def test_compute_params_cast_once_changes_nothing():
  """Casting the weight matrices to the compute dtype once (``compute_params``) gives the same
  logits bit for bit as the model's own per-product casts, and leaves the float32
  parameters that are not multiplied in bf16 (norm scales, decay, write rate, gate) as they are."""
  cfg = small_config(mechanism="tc", rule="delta", dtype="bfloat16", per_token_gate=True)
  model, params = init_model(cfg, seed=6)
  cast = inference.compute_params(cfg, params)
  dtypes = {jax.tree_util.keystr(p): x.dtype for p, x in jax.tree_util.tree_leaves_with_path(cast)}
  names = lambda dt: {k for k, d in dtypes.items() if d == dt}
  assert names(jnp.bfloat16) and all(k.endswith(("['kernel']", "['embedding']")) for k in names(jnp.bfloat16))
  assert any("decay_logit" in k for k in names(jnp.float32)) and any("scale" in k for k in names(jnp.float32))
  toks = tokens(7)
  np.testing.assert_array_equal(np.asarray(forward(model, cast, toks)), np.asarray(forward(model, params, toks)))
  extend = lambda p: model.apply(p, toks[:, :5], inference.init_cache(cfg, B), method=GPT.extend)[0]
  np.testing.assert_array_equal(np.asarray(extend(cast)), np.asarray(extend(params)))
  _, cache = inference.prefill(model, params, toks[:, :5])
  own_step = jax.jit(lambda p, c: model.apply(p, toks[:, 5:6], c, method=GPT.extend)[0][:, 0])  # per-product casts
  own = own_step(params, jax.tree.map(jnp.copy, cache))
  np.testing.assert_array_equal(np.asarray(inference.decode_step(model, cast, cache, toks[:, 5])[0]), np.asarray(own))


# ------------------------------------------------------------------ bounded prefill memory


@pytest.mark.parametrize("mode", ["last", "targets"])
def test_prefill_memory_grows_only_with_tokens(mode):
  """Compiled buffers (XLA's memory analysis) of a prefill 16x longer grow by the token-sized
  arrays only (tokens, targets, per-token outputs: a few bytes a token), never by ``V`` floats a
  token; the all-logits prefill is the control."""
  cfg = small_config(mechanism="tc", rule="delta")
  model, params = init_model(cfg, seed=4)

  def nbytes(mode, length):
    toks = jax.ShapeDtypeStruct((B, length), jnp.int32)
    targets = toks if mode == "targets" else None
    cache = jax.eval_shape(lambda: inference.init_cache(cfg, B))
    stats = inference._stream_jit.lower(model, mode, 16, params, cache, toks, targets).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes

  short, long = 256, 4096
  per_token = (nbytes(mode, long) - nbytes(mode, short)) / (B * (long - short))
  assert per_token <= 32, f"{mode}: {per_token:.1f} bytes per token"
  control = (nbytes("all", long) - nbytes("all", short)) / (B * (long - short))
  assert control >= 4 * VOCAB, control
