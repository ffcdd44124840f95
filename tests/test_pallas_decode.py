"""The decode-attention kernel (``pallas_kernels/decode_attention``) in Pallas interpret mode:
against the library's streaming attention (its reference) and a NumPy oracle, over caches
that are empty, filling and full, sinks with and without a sink query, full attention,
several splits of the cache, D = 16 / 32 / 64 / 128, float32 and bf16; through
``dispatch.l1_stream`` and a model's decode steps; and its Triton lowering for CUDA.

On a machine whose default JAX backend is a GPU the kernel cases run compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_attention import ops, reference
from tensorcache import dispatch, inference
from tests._util import assert_close, assert_differs, forward, init_model, normal, small_config, tokens
from tests.test_inference import _cache_positions, _oracle

ON_GPU = jax.devices()[0].platform == "gpu"
B = 2

CASES = {  # size, num_sinks, window, pos, q_sink, D, (block, n_split) or None for ops.plan
    "empty": (32, 0, 32, 0, False, 16, None),
    "filling": (32, 0, 32, 11, False, 16, (8, 2)),
    "ring": (32, 0, 32, 75, False, 32, (8, 4)),
    "ring_narrower_window": (64, 0, 40, 150, False, 16, (16, 2)),
    "sinks_absolute": (32, 2, 30, 75, False, 64, (16, 2)),
    "sinks_cache": (32, 2, 30, 75, True, 16, (8, 4)),
    "sink_token_itself": (32, 2, 30, 1, True, 16, None),
    "full": (48, 0, None, 29, False, 128, (16, 3)),
}


def _inputs(case: str, dtype=jnp.float32):
  size, n, window, pos, sink, D, _ = CASES[case]
  H = 3
  seed = 20 * list(CASES).index(case)
  q, k, v = (normal(seed + i, (B, H, D)).astype(dtype) for i in range(3))
  k_c, v_c = (normal(seed + 3 + i, (B, H, size, D)).astype(dtype) for i in range(2))
  q_sink = normal(seed + 5, (B, H, D)).astype(dtype) if sink else None
  return (q, k_c, v_c, jnp.asarray(_cache_positions(size, n, pos), jnp.int32), k, v, pos), q_sink


def _kernel(case: str, dtype=jnp.float32):
  size, n, window, pos, _, _, split = CASES[case]
  args, q_sink = _inputs(case, dtype)
  block, n_split = split or (None, None)
  return ops.decode_attention(*args, window=window, num_sinks=n, q_sink_BHD=q_sink, block=block, n_split=n_split,
                              interpret=not ON_GPU)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_reference_and_oracle(case):
  size, n, window, pos, _, _, _ = CASES[case]
  args, q_sink = _inputs(case)
  out = _kernel(case)
  assert out.shape == args[0].shape and out.dtype == jnp.float32
  assert_close(out, reference.decode_attention(*args, window=window, num_sinks=n, q_sink_BHD=q_sink), 1e-5, case)
  q, k_c, v_c, pos_c, k, v, _ = args
  chunk = lambda x: None if x is None else x[:, None]
  want = _oracle(chunk(q), k_c, v_c, pos_c, chunk(k), chunk(v), [pos], window, n, chunk(q_sink))[:, 0]
  assert_close(out, want, 1e-5, f"{case} vs oracle")
  if pos:  # the cache matters
    alone = _oracle(chunk(q), k_c, v_c, pos_c, chunk(k), chunk(v), [pos], window, n, chunk(q_sink), use_cache=False)
    assert_differs(out, alone[:, 0], what="without the cache")


@pytest.mark.parametrize("case", ["ring", "sinks_cache", "full"])
def test_kernel_bf16(case):
  """bf16 cache and queries: float32 statistics and sums; the reference rounds its
  probabilities to bf16 before the value product, the kernel does not."""
  size, n, window, pos, _, _, _ = CASES[case]
  args, q_sink = _inputs(case, jnp.bfloat16)
  out = _kernel(case, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  assert_close(out, reference.decode_attention(*args, window=window, num_sinks=n, q_sink_BHD=q_sink), 2e-2, case)


def test_plan_fills_the_gpu_and_tiles_the_cache():
  assert ops.plan(1, 12, 1024) == (128, 8)  # 96 programs of one 128-slot block
  assert ops.plan(64, 12, 1024) == (128, 1)  # 768 programs already
  assert ops.plan(1, 12, 1008) == (16, 1)  # 1008 = 63 x 16: no power-of-two split tiles it
  for B, H, S in [(1, 12, 1024), (3, 5, 48), (2, 2, 4096)]:
    block, n_split = ops.plan(B, H, S)
    assert S % (block * n_split) == 0
  assert not ops.supported(1000, 64) and not ops.supported(1024, 48) and ops.supported(1024, 64)
  args, _ = _inputs("ring")
  with pytest.raises(ValueError, match="do not tile"):
    ops.decode_attention(*args, window=32, block=16, n_split=3, interpret=True)


@pytest.mark.parametrize("mechanism", ["tc", "sinks", "full"])
def test_model_decode_through_the_kernel(mechanism, monkeypatch):
  """``impl="pallas"`` decode steps run the kernel (counted) and equal the parallel forward."""
  calls = []
  real = ops.decode_attention
  monkeypatch.setattr(ops, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
  cfg = small_config(mechanism=mechanism, window=16, rule="delta", impl="pallas")
  model, params = init_model(cfg, seed=8)
  toks = tokens(9, length=24)
  want = forward(model, params, toks)
  _, cache = inference.prefill(model, params, toks[:, :19], chunk=19)
  got = []
  for t in range(19, 24):
    logits, cache = inference.decode_step(model, params, cache, toks[:, t])
    got.append(logits)
  assert calls, "the decode steps did not run the kernel"
  assert_close(jnp.stack(got, 1), want[:, 19:], 1e-5, mechanism)


def test_dispatch_takes_the_kernel_for_one_token_only(monkeypatch):
  """``PALLAS`` runs the kernel for a one-token chunk, ``XLA`` never, ``AUTO`` on GPU only;
  a longer chunk stays on XLA."""
  size, n, window, pos, _, D, _ = CASES["ring"]
  q, k_c, v_c, pos_c, k, v, _ = _inputs("ring")[0]
  calls = []
  real = ops.decode_attention
  monkeypatch.setattr(ops, "decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  stream = lambda impl, P=1: dispatch.l1_stream(
      q[:, None].repeat(P, 1), k_c, v_c, pos_c, k[:, None].repeat(P, 1), v[:, None].repeat(P, 1),
      pos + jnp.arange(P), window=window, impl=impl)
  out = stream("pallas")
  assert len(calls) == 1
  stream("xla"), stream("pallas", P=2)
  assert len(calls) == 1
  stream("auto")
  assert len(calls) == 1 + ON_GPU
  assert_close(out[:, 0], reference.decode_attention(q, k_c, v_c, pos_c, k, v, pos, window=window), 1e-5)


def test_kernel_lowers_for_cuda():
  """The kernel passes the Pallas Triton lowering for CUDA at the GPT-124M decode shapes
  (run on this CPU host: lowering to Triton IR needs no GPU)."""
  s = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
  for batch in (1, 64):
    args = [s((batch, 12, 64)), s((batch, 12, 1024, 64)), s((batch, 12, 1024, 64)), s((1024,), jnp.int32),
            s((batch, 12, 64)), s((batch, 12, 64)), s((), jnp.int32)]
    lowered = jax.jit(lambda *a: ops.decode_attention(*a, window=1024)).trace(*args).lower(
        lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1
