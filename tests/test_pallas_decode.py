"""The decode-step kernels in Pallas interpret mode.

* ``pallas_kernels/decode_attention``, its GPU and TPU kernels: against the library's
  streaming attention (its reference) and a NumPy oracle, over caches that are empty, filling
  and full, sinks with and without a sink query, full attention, several splits (GPU) and
  blocks (TPU) of the cache, D = 16 / 32 / 64 / 128, float32 and bf16; the TPU kernel also
  compiled ahead of time for v5e, v4 and v5p (with libtpu).
* ``pallas_kernels/memory_step``, its GPU and TPU kernels: against the library's one-step
  update (its reference) and a NumPy oracle, every rule and read order, with and without the
  normaliser and query normalisation, a step that writes nothing, D = 16 / 32 / 64 / 128,
  float32 and bf16; the TPU kernel also compiled ahead of time for v5e, v4 and v5p.

Both through ``dispatch`` (``l1_stream``, ``l2_step``) and a model's decode steps, and their
Triton lowering for CUDA. On a machine whose default JAX backend is a GPU the kernel cases
run compiled.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.decode_attention import ops, reference
from pallas_kernels.memory_step import ops as step_ops, reference as step_reference
from tensorcache import dispatch, inference
from tensorcache.model import GPT
from _util import (assert_close, assert_differs, attention_oracle, cache_positions, forward, init_model, normal,
                   small_config, tokens)

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
    "long_ring": (256, 0, 200, 700, False, 32, (32, 2)),  # the TPU kernel's 128-slot blocks: two
}


def _inputs(case: str, dtype=jnp.float32):
  size, n, window, pos, sink, D, _ = CASES[case]
  H = 3
  seed = 20 * list(CASES).index(case)
  q, k, v = (normal(seed + i, (B, H, D)).astype(dtype) for i in range(3))
  k_c, v_c = (normal(seed + 3 + i, (B, H, size, D)).astype(dtype) for i in range(2))
  q_sink = normal(seed + 5, (B, H, D)).astype(dtype) if sink else None
  return (q, k_c, v_c, jnp.asarray(cache_positions(size, n, pos), jnp.int32), k, v, pos), q_sink


def _kernel(case: str, dtype=jnp.float32, backend="gpu"):
  """The GPU kernel (compiled on a GPU, else interpreted) with the case's split, or the TPU
  kernel in interpret mode with 128-slot blocks where they tile the cache."""
  size, n, window, pos, _, _, split = CASES[case]
  args, q_sink = _inputs(case, dtype)
  if backend == "tpu":
    block, n_split, interpret = (128 if size % 128 == 0 else None), None, True
  else:
    (block, n_split), interpret = split or (None, None), not ON_GPU
  return ops.decode_attention(*args, window=window, num_sinks=n, q_sink_BHD=q_sink, block=block, n_split=n_split,
                              backend=backend, interpret=interpret)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_reference_and_oracle(case, backend):
  size, n, window, pos, _, _, _ = CASES[case]
  args, q_sink = _inputs(case)
  out = _kernel(case, backend=backend)
  assert out.shape == args[0].shape and out.dtype == jnp.float32
  assert_close(out, reference.decode_attention(*args, window=window, num_sinks=n, q_sink_BHD=q_sink), 1e-5, case)
  q, k_c, v_c, pos_c, k, v, _ = args
  chunk = lambda x: None if x is None else x[:, None]
  want = attention_oracle(chunk(q), k_c, v_c, pos_c, chunk(k), chunk(v), [pos], window, n, chunk(q_sink))[:, 0]
  assert_close(out, want, 1e-5, f"{case} vs oracle")
  if pos:  # the cache matters
    alone = attention_oracle(chunk(q), k_c, v_c, pos_c, chunk(k), chunk(v), [pos], window, n, chunk(q_sink),
                             use_cache=False)
    assert_differs(out, alone[:, 0], what="without the cache")


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("case", ["ring", "sinks_cache", "full", "long_ring"])
def test_kernel_bf16(case, backend):
  """bf16 cache and queries: float32 statistics and sums, so the kernel is the float64 softmax
  of the bf16 inputs up to the output's bf16 rounding; the reference rounds its
  probabilities to bf16 before the value product, the kernel does not."""
  size, n, window, pos, _, _, _ = CASES[case]
  args, q_sink = _inputs(case, jnp.bfloat16)
  out = _kernel(case, jnp.bfloat16, backend)
  assert out.dtype == jnp.bfloat16
  q, k_c, v_c, pos_c, k, v, _ = args
  chunk = lambda x: None if x is None else x[:, None].astype(jnp.float32)
  want = attention_oracle(chunk(q), k_c.astype(jnp.float32), v_c.astype(jnp.float32), pos_c, chunk(k), chunk(v),
                          [pos], window, n, chunk(q_sink))[:, 0]
  assert_close(out.astype(jnp.float32), want, 8e-3, f"{case} vs float64 oracle")
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
  with pytest.raises(ValueError, match="multiple of 128"):
    ops.decode_attention(*args, window=32, block=16, backend="tpu", interpret=True)


@pytest.mark.parametrize("variant", [
    dict(mechanism="tc", rule="delta", normalize_read=True), dict(mechanism="tc", rule="outer", two_timescales=True),
    dict(mechanism="tc", rule="wedge", compat="reference"), dict(mechanism="sinks"), dict(mechanism="full")], ids=str)
def test_model_decode_through_the_kernels(variant, monkeypatch):
  """``impl="pallas"`` decode steps run both kernels (counted; the memory step under ``tc``,
  for both timescales and the reference's read-first order too) and equal XLA's decode
  steps and, where training sees the same window, the parallel forward."""
  calls = {"attention": 0, "memory": 0}

  def count(module, name, key):
    real = getattr(module, name)

    def counted(*a, **kw):
      calls[key] += 1
      return real(*a, **kw)
    monkeypatch.setattr(module, name, counted)

  count(ops, "decode_attention", "attention")
  count(step_ops, "memory_step", "memory")
  cfg = small_config(window=16, impl="pallas", **variant)
  model, params = init_model(cfg, seed=8)
  toks = tokens(9, length=24)

  def decode(model):
    _, cache = inference.prefill(model, params, toks[:, :19], chunk=19)
    got = []
    for t in range(19, 24):
      logits, cache = inference.decode_step(model, params, cache, toks[:, t])
      got.append(logits)
    return jnp.stack(got, 1)

  got = decode(model)
  assert calls["attention"] and bool(calls["memory"]) == (cfg.mechanism == "tc"), calls
  assert_close(got, decode(GPT(cfg.replace(impl="xla"))), 1e-5, "vs XLA decode")
  if cfg.compat != "reference":  # the reference trains on W + 1 keys
    assert_close(got, forward(model, params, toks)[:, 19:], 1e-5, "vs parallel forward")


def test_dispatch_takes_the_kernel_for_one_token_only(monkeypatch):
  """``PALLAS`` runs the kernel for a one-token chunk, ``XLA`` never, ``AUTO`` on GPU only;
  a longer chunk stays on XLA. Every path equals the float64 oracle."""
  size, n, window, pos, _, D, _ = CASES["ring"]
  q, k_c, v_c, pos_c, k, v, _ = _inputs("ring")[0]
  calls = []
  real = ops.decode_attention
  monkeypatch.setattr(ops, "decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  stream = lambda impl, P=1: dispatch.l1_stream(
      q[:, None].repeat(P, 1), k_c, v_c, pos_c, k[:, None].repeat(P, 1), v[:, None].repeat(P, 1),
      pos + jnp.arange(P), window=window, impl=impl)
  want = lambda P=1: attention_oracle(q[:, None].repeat(P, 1), k_c, v_c, pos_c, k[:, None].repeat(P, 1),
                                      v[:, None].repeat(P, 1), pos + np.arange(P), window, 0, None)
  assert_close(stream("pallas"), want(), 1e-5, "pallas")
  assert len(calls) == 1
  assert_close(stream("xla"), want(), 1e-5, "xla")
  assert_close(stream("pallas", P=2), want(2), 1e-5, "pallas, two tokens")
  assert len(calls) == 1
  assert_close(stream("auto"), want(), 1e-5, "auto")
  assert len(calls) == 1 + ON_GPU


@pytest.mark.parametrize("impl", ["auto", "pallas"])
def test_decode_ops_differentiate(impl):
  """A gradient through a one-token step compiles on any platform and is right:
  ``lax.platform_dependent`` differentiates every platform's branch, the GPU kernels' too, and
  each kernel's op takes its reference's gradient. The attention's is checked against the
  concatenating reference (another code path), the memory step's against the gradient of the
  step written out in this file (``_step_jnp``)."""
  size, n, window, pos, _, _, _ = CASES["sinks_cache"]
  (q, k_c, v_c, pos_c, k, v, _), q_sink = _inputs("sinks_cache")
  cot = normal(90, (B, 1) + q.shape[1:])
  one = lambda x: x[:, None]

  def attn_loss(impl, q, k_c, v_c, k, v, q_sink):
    out = dispatch.l1_stream(one(q), k_c, v_c, pos_c, one(k), one(v), jnp.array([pos]), window=window,
                             num_sinks=n, q_sink=one(q_sink), impl=impl)
    return jnp.sum(out * cot)

  grads = lambda impl: jax.jit(jax.grad(functools.partial(attn_loss, impl), argnums=tuple(range(6))))(
      q, k_c, v_c, k, v, q_sink)
  for name, a, b in zip(["q", "k_cache", "v_cache", "k", "v", "q_sink"], grads(impl), grads("reference")):
    assert_close(a, b, 1e-5, f"attention d{name}")

  q, k, v, g, eta, A, z = _step_inputs(91, 32, True)
  cots = [normal(92 + i, x.shape) for i, x in enumerate([q[:, None], q[:, None, :, 0], A, z])]

  def step_loss(step, q, k, v, g, eta, A, z):
    return sum(jnp.sum(o * c) for o, c in zip(step(q, k, v, g, eta, A, z), cots))

  library = lambda q, k, v, g, eta, A, z: dispatch.l2_step(one(q), one(k), one(v), g[None], eta, A, z, rule="delta",
                                                            normalize_q=True, impl=impl)
  written_out = lambda *a: (lambda r, qz, A, z: (r[:, None], qz[:, None], A, z))(*_step_jnp(*a))
  grads = lambda step: jax.jit(jax.grad(functools.partial(step_loss, step), argnums=tuple(range(7))))(
      q, k, v, g, eta, A, z)
  for name, a, b in zip(["q", "k", "v", "g", "eta", "A", "z"], grads(library), grads(written_out)):
    assert_close(a, b, 1e-5, f"memory step d{name}")


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1", "v5p:2x2x1"])
def test_tpu_kernel_compiles(topology):
  """The TPU kernel passes Mosaic's lowering and compiles for v5e, v4 and v5p at the GPT-124M
  decode shapes (bf16, a 1024-slot cache, one sequence per chip and 16, sinks with a sink
  query), through the dispatch branch ``impl="pallas"`` takes on TPU (no TPU needed; skipped
  without libtpu)."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: no TPU ahead-of-time compile")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from tensorcache import compile_tpu  # pylint: disable=g-import-not-at-top
  devices = compile_tpu.topology_devices(topology)  # one per chip; with libtpu installed, never skipped
  mesh = Mesh(np.array(devices), ("b",))
  H, S, D = 12, 1024, 64
  for per_chip, sinks in [(1, 0), (16, 4)]:
    Bg = per_chip * len(devices)
    s = lambda shape, dt=jnp.bfloat16, p=P("b"): jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, p))
    chunk = s((Bg, 1, H, D))
    args = [chunk, s((Bg, H, S, D)), s((Bg, H, S, D)), s((S,), jnp.int32, P()), chunk, chunk,
            s((1,), jnp.int32, P()), chunk]

    def step(q, k_c, v_c, slots, k, v, positions, q_sink, sinks=sinks):
      return dispatch.l1_stream(q, k_c, v_c, slots, k, v, positions, window=S - sinks, num_sinks=sinks,
                                q_sink=q_sink if sinks else None, impl="pallas")

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P("b"),) * 3 + (P(),) + (P("b"),) * 2 + (P(), P("b")),
                            out_specs=P("b"), check_vma=False)
    compiled = jax.jit(sharded).lower(*args).compile()
    assert compiled.as_text().count("tpu_custom_call") == 1, (per_chip, sinks)


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


# ------------------------------------------------------------------ memory step


def _step_oracle(q, k, v, g, eta, A, z, rule, read_first, normalize_q):
  """The one-step update in float64 NumPy, written out per rule."""
  q, k, v, A = (np.asarray(x, np.float64) for x in (q, k, v, A))
  unit = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)
  q = unit(q) if normalize_q else q
  k = unit(k)
  lam = np.exp(np.asarray(g, np.float64))[None, :, None, None]
  eta = np.asarray(eta, np.float64)[None, :, None, None]
  if rule == "delta":
    v = v - np.einsum("bhd,bhde->bhe", k, A)
  upd = k[..., :, None] * v[..., None, :]
  if rule == "wedge":
    upd = upd - v[..., :, None] * k[..., None, :]
  A_new = lam * A + eta * upd
  r = np.einsum("bhd,bhde->bhe", q, A if read_first else A_new)
  if z is None:
    return r, None, A_new, None
  z = np.asarray(z, np.float64)
  z_new = lam[..., 0] * z + eta[..., 0] * k
  return r, np.sum(q * (z if read_first else z_new), -1), A_new, z_new


def _step_jnp(q, k, v, g, eta, A, z):
  """The delta-rule step with query normalisation and the normaliser, written out in jnp
  (float32, differentiable) as ``_step_oracle`` writes it in NumPy."""
  def unit(x):  # x / (|x| + eps), with a finite gradient at a zero key (a step that writes nothing)
    sq = jnp.sum(x * x, -1, keepdims=True)
    return x / (jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0) + 1e-5)

  q, k = unit(q), unit(k)
  lam, eta_ = jnp.exp(g)[None, :, None], eta[None, :, None]
  v = v - jnp.einsum("bhd,bhde->bhe", k, A, precision="highest")
  A_new = lam[..., None] * A + eta_[..., None] * k[..., :, None] * v[..., None, :]
  z_new = lam * z + eta_ * k
  return jnp.einsum("bhd,bhde->bhe", q, A_new, precision="highest"), jnp.sum(q * z_new, -1), A_new, z_new


def _step_inputs(seed, D, with_z, dtype=jnp.float32):
  H = 3
  q, k, v = (normal(seed + i, (B, H, D)).astype(dtype) for i in range(3))
  k = k.at[1, 2].set(0)  # a step that writes nothing to this head
  g = -0.2 * jax.random.uniform(jax.random.PRNGKey(seed + 3), (H,))
  eta = jax.random.uniform(jax.random.PRNGKey(seed + 4), (H,), minval=0.1, maxval=1.0)
  A = normal(seed + 5, (B, H, D, D), 0.3)
  z = normal(seed + 6, (B, H, D)) if with_z else None
  return q, k, v, g, eta, A, z


def _step_kernel(*args, backend, **statics):
  """The GPU kernel (compiled on a GPU, else interpreted) or the TPU kernel, interpreted."""
  return step_ops.memory_step(*args, **statics, backend=backend, interpret=backend == "tpu" or not ON_GPU)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("rule", ["outer", "delta", "wedge"])
@pytest.mark.parametrize("read_first,with_z,normalize_q,D", [
    (False, False, False, 64), (True, True, False, 32), (False, True, True, 16), (True, False, True, 128)])
def test_memory_step_equals_reference_and_oracle(rule, read_first, with_z, normalize_q, D, backend):
  seed = 7 * D + 3 * with_z + read_first
  args = _step_inputs(seed, D, with_z)
  statics = dict(rule=rule, read_first=read_first, normalize_q=normalize_q)
  got = _step_kernel(*args, **statics, backend=backend)
  want = step_reference.memory_step(*args, **statics)
  oracle = _step_oracle(*args, **statics)
  for name, a, b, c in zip(["r", "qz", "A", "z"], got, want, oracle):
    assert (a is None) == (b is None) == (c is None) == (name in ("qz", "z") and not with_z), name
    if a is not None:
      assert a.dtype == jnp.float32
      assert_close(a, b, 1e-5, f"{name} vs reference")
      assert_close(a, c, 1e-5, f"{name} vs oracle")
  np.testing.assert_allclose(got[2][1, 2], jnp.exp(args[3][2]) * args[5][1, 2], rtol=1e-6)  # nothing written
  assert_differs(got[2], args[5], what="the write")


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_memory_step_bf16_inputs(backend):
  """bf16 query, key and value are read as float32: the result is the float32 step of the
  rounded inputs."""
  args = _step_inputs(40, 64, True, jnp.bfloat16)
  got = _step_kernel(*args, rule="delta", backend=backend)
  want = step_reference.memory_step(*(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x for x in args),
                                    rule="delta")
  for a, b in zip(got, want):
    assert_close(a, b, 1e-5, "bf16 inputs")


def test_l2_step_dispatch(monkeypatch):
  """``l2_step`` runs the kernel under ``PALLAS`` only (``AUTO`` and ``XLA`` run the XLA
  update); a head dim the kernel does not take falls back; all equal the float64 oracle."""
  calls = []
  real = step_ops.memory_step
  monkeypatch.setattr(step_ops, "memory_step", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  q, k, v, g, eta, A, z = _step_inputs(50, 32, True)
  one = lambda x: x[:, None]
  step = lambda impl, D=32: dispatch.l2_step(one(q[..., :D]), one(k[..., :D]), one(v[..., :D]), g[None], eta,
                                             A[..., :D, :D], z[..., :D], rule="delta", impl=impl)
  want = lambda D=32: _step_oracle(q[..., :D], k[..., :D], v[..., :D], g, eta, A[..., :D, :D], z[..., :D], "delta",
                                   False, False)
  for impl, n, D in [("pallas", 1, 32), ("xla", 1, 32), ("auto", 1, 32), ("pallas", 1, 24)]:  # D 24: XLA
    got = step(impl, D)
    assert len(calls) == n, (impl, D)
    for name, a, b in zip(["r", "qz", "A", "z"], got, want(D)):
      assert_close(a[:, 0] if name in ("r", "qz") else a, b, 1e-5, f"{impl}, D={D}: {name}")


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1", "v5p:2x2x1"])
def test_tpu_memory_step_compiles(topology):
  """The TPU memory-step kernel passes Mosaic's lowering and compiles for v5e, v4 and v5p at
  the GPT-124M decode shapes (bf16 rows, float32 state, with and without the normaliser),
  through the dispatch branch ``impl="pallas"`` takes on TPU (skipped without libtpu)."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: no TPU ahead-of-time compile")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from tensorcache import compile_tpu  # pylint: disable=g-import-not-at-top
  devices = compile_tpu.topology_devices(topology)  # one per chip; with libtpu installed, never skipped
  mesh = Mesh(np.array(devices), ("b",))
  H, D = 12, 64
  for per_chip, rule, with_z in [(1, "delta", False), (16, "wedge", True)]:
    Bg = per_chip * len(devices)
    s = lambda shape, dt=jnp.float32, p=P("b"): jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, p))
    chunk = s((Bg, 1, H, D), jnp.bfloat16)
    args = [chunk, chunk, chunk, s((1, H), p=P()), s((H,), p=P()), s((Bg, H, D, D)), s((Bg, H, D))]

    def step(q, k, v, g, eta, A, z, rule=rule, with_z=with_z):
      return dispatch.l2_step(q, k, v, g, eta, A, z if with_z else None, rule=rule, impl="pallas")

    out_specs = (P("b"), P("b") if with_z else None, P("b"), P("b") if with_z else None)
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P("b"),) * 3 + (P(), P()) + (P("b"),) * 2,
                            out_specs=out_specs, check_vma=False)
    compiled = jax.jit(sharded).lower(*args).compile()
    assert compiled.as_text().count("tpu_custom_call") == 1, (per_chip, rule)


def test_memory_step_lowers_for_cuda():
  """The kernel passes the Pallas Triton lowering for CUDA at the GPT-124M decode shapes."""
  s = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  for batch, with_z in [(1, False), (64, True)]:
    args = [s((batch, 12, 64), jnp.bfloat16)] * 3 + [s((12,)), s((12,)), s((batch, 12, 64, 64))]
    args += [s((batch, 12, 64))] if with_z else [None]
    lowered = jax.jit(lambda *a: step_ops.memory_step(*a, rule="delta")).trace(*args).lower(
        lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1
