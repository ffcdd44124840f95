"""L1 attention (docs/method.md §5, §8): the chunked scan against the dense oracle and against a
numpy softmax whose window / sink mask is built by hand (independent of ``visible``); the
dispatch's ``Impl.AUTO`` against the oracle; the fast kernels (``fast_attention``): splash
in the Pallas interpreter, splash in TPU ahead-of-time compiles (libtpu, no TPU needed), and
cuDNN on a GPU (``gpu`` marker: ``JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu
tests/test_attention.py``)."""

from __future__ import annotations

import functools
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import attention, dispatch, fast_attention
from tensorcache.model import GPT

from _util import assert_close, assert_differs, small_config

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


# ------------------------------------------------------------------ dispatch: Impl.AUTO
#
# On CPU, AUTO runs the chunked form: float32 directly, bf16 through
# ``lax.platform_dependent`` (the cuDNN and splash branches are traced, not lowered). The
# oracle is ``dense_attention`` on the same inputs (the inputs upcast to float32 for bf16).

AUTO_CASES = {  # window, num_sinks, q_sink
    "window8": (8, 0, False),
    "window9": (9, 0, False),  # the reference's W + 1 training window
    "full": (None, 0, False),
    "sinks2": (8, 2, False),
    "sinks2_qsink": (8, 2, True),
}
DTYPE_TOL = {jnp.float32: (1e-5, 1e-5), jnp.bfloat16: (1e-2, 2e-2)}  # forward, gradients


def _grads(fn, q, k, v, qs, cot):
  """Gradients of ``sum(fn(q, k, v, qs) * cot)`` in float32 w.r.t. q, k, v (and qs)."""
  argnums = (0, 1, 2) if qs is None else (0, 1, 2, 3)
  loss = lambda q, k, v, qs: jnp.sum(fn(q, k, v, qs).astype(jnp.float32) * cot)
  return jax.grad(loss, argnums)(q, k, v, qs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_equals_dense_oracle(case, dtype):
  window, num_sinks, use_qsink = AUTO_CASES[case]
  q, k, v, qs = (x.astype(dtype) for x in _qkv(seed=21 + list(AUTO_CASES).index(case)))
  qs = qs if use_qsink else None
  cot = jax.random.normal(jax.random.PRNGKey(22), (B, T, H, D))
  f32 = lambda x: None if x is None else x.astype(jnp.float32)

  def auto(q, k, v, qs):
    return dispatch.l1_attention(q, k, v, window=window, num_sinks=num_sinks, q_sink=qs, block=BLOCK)

  def oracle(q, k, v, qs):
    return attention.dense_attention(q, k, v, window, num_sinks, qs)

  tol_fwd, tol_grad = DTYPE_TOL[dtype]
  out = jax.jit(auto)(q, k, v, qs)
  assert out.dtype == dtype
  assert_close(out, oracle(f32(q), f32(k), f32(v), f32(qs)), tol_fwd, "forward")
  assert_close(auto(q, k, v, qs), out, tol_fwd, "eager vs jit")  # platform_index resolved eagerly
  g_auto = jax.jit(functools.partial(_grads, auto))(q, k, v, qs, cot)
  g_ref = _grads(oracle, f32(q), f32(k), f32(v), f32(qs), cot)
  for name, a, b in zip("qkvs", g_auto, g_ref):
    assert_close(a, b, tol_grad, f"d{name}")


@pytest.mark.parametrize("backend,traced", [("gpu", "cudnn"), ("cpu", "splash"), ("tpu", "splash")])
def test_only_the_lowerable_kernel_is_traced(monkeypatch, backend, traced):
  """A GPU process never lowers for TPU, so its AUTO attention must not trace splash (whose
  block mask costs O((T / block)^2) Python steps); a CPU host must, for TPU AOT compiles;
  neither traces cuDNN off a GPU. The result is the chunked fallback on this CPU either way."""
  calls = []
  for name in ("splash", "cudnn"):
    real = getattr(fast_attention, f"{name}_attention")
    monkeypatch.setattr(fast_attention, f"{name}_attention",
                        lambda *a, name=name, real=real, **kw: calls.append(name) or real(*a, **kw))
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  q, k, v, _ = (x.astype(jnp.bfloat16) for x in _qkv(seed=23))
  out = jax.jit(lambda q, k, v: dispatch.l1_attention(q, k, v, window=8, block=BLOCK))(q, k, v)
  assert_close(out, attention.dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)), 8), 1e-2, "forward")
  assert set(calls) == {traced}


# ------------------------------------------------------------------ splash (TPU), interpreted
#
# The TPU branch's kernel run by the Pallas interpreter on CPU: T = 200 is padded to 256.

ST = 200


def _splash_qkv(seed: int, dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  return tuple(jax.random.normal(k_, (B, ST, H, 2 * D), jnp.float32).astype(dtype) for k_ in ks)


@pytest.mark.parametrize("window", [8, 9, None, ST + 3], ids=["window8", "window9", "full", "window_gt_T"])
def test_splash_interpret_equals_dense(window):
  q, k, v, _ = _splash_qkv(seed=31)
  out = fast_attention.splash_attention(q, k, v, window, interpret=True)
  ref = attention.dense_attention(q, k, v, window)
  assert_close(out, ref, 1e-5, "splash forward")
  if window is not None and window < ST:
    assert_differs(ref, attention.dense_attention(q, k, v, None), what="window vs full")


@pytest.mark.parametrize("window", [9, None], ids=["window9", "full"])
def test_splash_interpret_gradients_equal_dense(window):
  q, k, v, cot = _splash_qkv(seed=32)
  splash = lambda q, k, v, _: fast_attention.splash_attention(q, k, v, window, interpret=True)
  dense = lambda q, k, v, _: attention.dense_attention(q, k, v, window)
  g_splash = jax.jit(functools.partial(_grads, splash))(q, k, v, None, cot)
  g_dense = _grads(dense, q, k, v, None, cot)
  for name, a, b in zip("qkv", g_splash, g_dense):
    assert_close(a, b, 1e-5, f"d{name}")


def test_splash_interpret_bf16():
  q, k, v, _ = _splash_qkv(seed=33, dtype=jnp.bfloat16)
  out = fast_attention.splash_attention(q, k, v, 16, interpret=True)
  assert out.dtype == jnp.bfloat16
  f32 = lambda x: x.astype(jnp.float32)
  assert_close(out, attention.dense_attention(f32(q), f32(k), f32(v), 16), 1e-2, "splash bf16")


def _mesh4():
  return jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "fsdp"))


def test_splash_interpret_batch_sharded():
  """On a mesh known while tracing (the operands' or ``jax.set_mesh``'s) the kernel runs per
  batch shard under ``shard_map``: same values and gradients, no gathers."""
  q, k, v, cot = (jnp.concatenate([x, x[::-1] * 0.5]) for x in _splash_qkv(seed=34))  # B = 4
  mesh = _mesh4()
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  qs, ks, vs = (jax.device_put(x, batch) for x in (q, k, v))
  splash = lambda q, k, v, _: fast_attention.splash_attention(q, k, v, 9, interpret=True)
  dense = lambda q, k, v, _: attention.dense_attention(q, k, v, 9)
  grads = jax.jit(functools.partial(_grads, splash))
  hlo = grads.lower(qs, ks, vs, None, cot).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  for name, a, b in zip("qkv", grads(qs, ks, vs, None, cot), _grads(dense, q, k, v, None, cot)):
    assert_close(a, b, 1e-5, f"d{name} (operands' mesh)")
  with jax.set_mesh(mesh):
    out = jax.jit(lambda q, k, v: splash(q, k, v, None))(q, k, v)
  assert_close(out, dense(q, k, v, None), 1e-5, "forward (mesh in scope)")


# ------------------------------------------------------------------ TPU ahead of time
#
# AUTO lowered for a TPU topology from this CPU host (libtpu, no TPU): the splash kernels
# are in the compiled forward + backward, and the fallbacks are not.

SPLASH_KERNELS = ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv")


@pytest.fixture(scope="module")
def tpu_topology():
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): no TPU ahead-of-time compile")
  # Another process (a second pytest worker) may hold libtpu's lockfile; compiling for a
  # topology needs no exclusive TPU access.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")  # libtpu is here: never skip


@pytest.fixture(scope="module")
def tpu_device(tpu_topology):
  return tpu_topology.devices[0]


def _tpu_hlo(fn, device, *shapes_dtypes):
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in shapes_dtypes]
  return jax.jit(fn).lower(*args).compile().as_text()


@pytest.mark.parametrize("window,num_sinks,dtype", [
    (64, 0, jnp.bfloat16), (65, 0, jnp.bfloat16), (None, 0, jnp.bfloat16),
    (64, 4, jnp.bfloat16), (64, 0, jnp.float32)],
    ids=["window64", "window65", "full", "sinks_fallback", "f32_fallback"])
def test_tpu_aot_auto_uses_splash(tpu_device, window, num_sinks, dtype):
  shape = (2, 300, 4, 64)

  def fwd_bwd(q, k, v):
    loss = lambda q, k, v: jnp.sum(dispatch.l1_attention(
        q, k, v, window=window, num_sinks=num_sinks).astype(jnp.float32) ** 2)
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  hlo = _tpu_hlo(fwd_bwd, tpu_device, *[(shape, dtype)] * 3)
  fast = num_sinks == 0 and dtype == jnp.bfloat16
  for name in SPLASH_KERNELS:
    assert (name in hlo) == fast, f"{name} {'missing from' if fast else 'in'} the TPU HLO"
  assert ("tpu_custom_call" in hlo) == fast


def test_tpu_aot_auto_batch_sharded(tpu_topology):
  """On four chips with a batch-sharded jit (the trainer's: committed operands, no mesh in
  scope) splash runs per shard, with no gathers around it."""
  mesh = jax.sharding.Mesh(np.array(tpu_topology.devices).reshape(2, 2), ("data", "fsdp"))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  arg = jax.ShapeDtypeStruct((8, 256, 4, 64), jnp.bfloat16, sharding=batch)

  def fwd_bwd(q, k, v):
    loss = lambda q, k, v: jnp.sum(dispatch.l1_attention(q, k, v, window=64).astype(jnp.float32) ** 2)
    return jax.grad(loss, (0, 1, 2))(q, k, v)

  hlo = jax.jit(fwd_bwd).lower(arg, arg, arg).compile().as_text()
  for name in SPLASH_KERNELS:
    assert name in hlo, f"{name} missing from the sharded TPU HLO"
  assert "all-gather" not in hlo and "all-to-all" not in hlo


@pytest.mark.parametrize("changes", [
    dict(mechanism="full"), dict(mechanism="window", train_window=False),
    dict(mechanism="window", compat="reference")], ids=["full", "window_dense_trained", "window_w_plus_1"])
def test_tpu_aot_model_uses_splash(tpu_device, changes):
  """The baselines (full, dense-trained) and the reference's W+1 window train through splash."""
  cfg = small_config(dtype="bfloat16", n_layer=1, **changes)
  model = GPT(cfg)
  toks = jax.ShapeDtypeStruct((2, 256), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), toks)

  def loss(params, toks):
    return jnp.mean(model.apply(params, toks) ** 2)

  sharding = jax.sharding.SingleDeviceSharding(tpu_device)
  put = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  hlo = jax.jit(jax.grad(loss)).lower(jax.tree.map(put, params), put(toks)).compile().as_text()
  for name in SPLASH_KERNELS:
    assert name in hlo, f"{name} missing from the TPU HLO of {changes}"


# ------------------------------------------------------------------ cuDNN (GPU only)
#
# Run on the GPU machine: JAX_PLATFORMS=cuda,cpu python -m pytest -m gpu tests/test_attention.py

GPU_W = 64


@pytest.mark.gpu
@pytest.mark.parametrize("T_", [512, 300, 301], ids=["T512", "T300", "T301"])  # 301: padded (odd)
@pytest.mark.parametrize("window", [GPU_W, GPU_W + 1, None], ids=["W", "W+1", "full"])
def test_cudnn_bf16_equals_dense(window, T_):
  shape = (2, T_, 4, 64)
  ks = jax.random.split(jax.random.PRNGKey(41), 4)
  q, k, v = (jax.random.normal(k_, shape, jnp.float32).astype(jnp.bfloat16) for k_ in ks[:3])
  cot = jax.random.normal(ks[3], shape, jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)

  def auto(q, k, v, _):
    return dispatch.l1_attention(q, k, v, window=window)

  def oracle(q, k, v, _):
    return attention.dense_attention(q, k, v, window)

  fwd = jax.jit(lambda q, k, v: auto(q, k, v, None))
  hlo = jax.jit(functools.partial(_grads, auto)).lower(q, k, v, None, cot).compile().as_text()
  assert "__cudnn$fmhaSoftmax" in hlo and "__cudnn$fmhaSoftmaxBackward" in hlo, "cuDNN not used"
  ref = oracle(f32(q), f32(k), f32(v), None)
  assert_close(fwd(q, k, v), ref, 1e-2, "cuDNN forward")
  assert_close(fast_attention.cudnn_attention(q, k, v, window), ref, 1e-2, "cuDNN direct")
  if window is not None:
    assert_differs(ref, attention.dense_attention(f32(q), f32(k), f32(v), None), what="window vs full")
  g_cudnn = jax.jit(functools.partial(_grads, auto))(q, k, v, None, cot)
  g_ref = _grads(oracle, f32(q), f32(k), f32(v), None, cot)
  for name, a, b in zip("qkv", g_cudnn, g_ref):
    assert_close(a, b, 2e-2, f"d{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("num_sinks,dtype", [(0, jnp.float32), (4, jnp.bfloat16)], ids=["f32", "sinks"])
def test_cudnn_fallbacks_on_gpu(num_sinks, dtype):
  """float32 and sinks run the chunked form on GPU, matching the oracle."""
  q, k, v, _ = (x.astype(dtype) for x in _qkv(seed=42))
  fn = jax.jit(lambda q, k, v: dispatch.l1_attention(q, k, v, window=8, num_sinks=num_sinks, block=BLOCK))
  assert "__cudnn$fmha" not in fn.lower(q, k, v).compile().as_text()
  f32 = lambda x: x.astype(jnp.float32)
  ref = attention.dense_attention(f32(q), f32(k), f32(v), 8, num_sinks)
  assert_close(fn(q, k, v), ref, DTYPE_TOL[dtype][0], "fallback")


def _median_ms(fn, *args, n=20):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


@pytest.mark.gpu
@pytest.mark.parametrize("window", [512, None], ids=["W512", "full"])
def test_cudnn_auto_costs_what_cudnn_costs(window):
  """AUTO's forward + backward (B 4, T 16384, H 12, D 64, bf16) takes the time and the
  temporary memory of the direct cuDNN call: the unused branches of ``platform_dependent``
  leave nothing behind. Prints the timings (``-s``), the chunked form's for comparison."""
  shape = (4, 16384, 12, 64)
  ks = jax.random.split(jax.random.PRNGKey(43), 4)
  q, k, v, do = (jax.random.normal(k_, shape, jnp.float32).astype(jnp.bfloat16) for k_ in ks)
  impls = {
      "auto": lambda q, k, v: dispatch.l1_attention(q, k, v, window=window),
      "cudnn": lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn",
          local_window_size=None if window is None else (window - 1, 0)),
  }
  if window is not None:
    impls["xla"] = lambda q, k, v: dispatch.l1_attention(q, k, v, window=window, impl="xla")
  ms, temp = {}, {}
  for name, attn in impls.items():
    fwd_bwd = jax.jit(lambda q, k, v, do, attn=attn: jax.vjp(attn, q, k, v)[1](do))
    temp[name] = fwd_bwd.lower(q, k, v, do).compile().memory_analysis().temp_size_in_bytes
    ms[name] = _median_ms(fwd_bwd, q, k, v, do)
  print(f"\nL1 fwd+bwd {shape} window {window}: " + ", ".join(
      f"{n} {ms[n]:.2f} ms ({temp[n] / 2**20:.0f} MiB temp)" for n in impls))
  assert ms["auto"] <= 1.15 * ms["cudnn"], ms
  assert temp["auto"] <= 1.05 * temp["cudnn"] + 2**20, temp
