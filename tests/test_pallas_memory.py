"""The memory-scan Pallas kernels (``pallas_kernels/memory_scan``) against the per-token
oracle, in Pallas interpret mode on CPU: reads, final states and the gradients of every
input (q, k, v, log decays, write rate, initial states), every rule, both read orders, with
and without the read normaliser, T not a multiple of the kernel's chunk, D = 32 / 64 / 128,
float32 and bf16 inputs; the TPU kernels also compiled ahead of time for v5e, v4 and v5p topologies
(Mosaic lowering), and the dispatch seam's ``Impl.PALLAS``.

On a machine whose default JAX backend is a GPU (``JAX_PLATFORMS=cuda,cpu``), the GPU-kernel
cases run compiled instead of interpreted (products as 3 TF32 passes); the TPU-kernel cases
stay interpreted.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.memory_scan import ops, reference
from tensorcache import dispatch, memory
from _util import rel_err

# Per-dtype tolerances (max error / max magnitude of the oracle). Inputs are read as float32
# in the kernel, so bf16 inputs change only the gradients, which are rounded to bf16.
FWD_TOL = 2e-5
ON_GPU = jax.devices()[0].platform == "gpu"


def _backend_args(backend):
  """Compiled on a GPU for the GPU kernel, Pallas interpret mode otherwise."""
  if backend == "gpu" and ON_GPU:
    return dict(backend=backend, precision="tf32x3", interpret=False)
  return dict(backend=backend, interpret=True)

GRAD_TOL = {jnp.float32: 5e-5, jnp.bfloat16: 1e-2}


def _inputs(seed, B, T, H, D, dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(seed), 9)
  q = jax.random.normal(ks[0], (B, T, H, D)).astype(dtype)
  k = memory.normalize_key(jax.random.normal(ks[1], (B, T, H, D))).astype(dtype)
  v = jax.random.normal(ks[2], (B, T, H, D)).astype(dtype)
  log_lam = jnp.log(jax.random.uniform(ks[3], (H,), minval=0.7, maxval=0.99))
  valid = jax.random.uniform(ks[4], (T,)) < 0.9  # some steps write nothing and do not decay
  g = memory.log_decay(log_lam, valid)
  eta = jax.random.uniform(ks[5], (H,), minval=0.2, maxval=1.0)
  A = 0.1 * jax.random.normal(ks[6], (B, H, D, D))
  z = 0.1 * jax.random.normal(ks[7], (B, H, D))
  cot = jax.random.normal(ks[8], (B, T, H, D))
  return (q, k, v, g, eta, A, z), cot


def _loss(fn, cot, use_z):
  def loss(q, k, v, g, eta, A, z):
    r, qz, A2, z2 = fn(q, k, v, g, eta, A, z if use_z else None)
    out = jnp.sum(r * cot) + jnp.sum(jnp.sin(A2))
    if use_z:
      out = out + jnp.sum(qz * cot[..., 0]) + jnp.sum(jnp.cos(z2))
    return out
  return loss


def _check(backend, rule, read_first, use_z, D=32, T=40, block=16, dtype=jnp.float32, seed=0, grads=True):
  args, cot = _inputs(seed, 2, T, 2, D, dtype)

  def kernel(*a):
    return ops.memory_scan(*a, rule=rule, read_first=read_first, block=block, **_backend_args(backend))

  def oracle(q, k, v, *rest):
    f = lambda x: x.astype(jnp.float32)
    return reference.memory_recurrence(f(q), f(k), f(v), *rest[:-1], rest[-1], rule=rule, read_first=read_first)

  zarg = args[-1] if use_z else None
  got, want = kernel(*args[:-1], zarg), oracle(*args[:-1], zarg)
  assert (got[1] is None) == (not use_z)
  for a, b in zip(got, want):
    if b is not None:
      assert a.dtype == jnp.float32
      assert rel_err(a, b) < FWD_TOL
  if grads:
    argnums = tuple(range(7 if use_z else 6))
    gk = jax.grad(_loss(kernel, cot, use_z), argnums)(*args)
    go = jax.grad(_loss(oracle, cot, use_z), argnums)(*args)
    for a, b, x in zip(gk, go, args):
      assert a.dtype == x.dtype
      assert rel_err(a, b) < GRAD_TOL[dtype]


# Every rule on each kernel, the read order and the normaliser alternating across the two.
@pytest.mark.parametrize("rule", ["outer", "wedge", "delta"])
@pytest.mark.parametrize("backend,read_first,use_z", [("gpu", False, True), ("tpu", True, False)])
def test_matches_oracle(backend, rule, read_first, use_z):
  _check(backend, rule, read_first, use_z)


@pytest.mark.parametrize("D,backend", [(64, "gpu"), (128, "tpu")])
def test_head_dims(D, backend):
  _check(backend, "delta", read_first=False, use_z=True, D=D, T=24, seed=1)


def test_bf16_inputs():
  _check("gpu", "delta", read_first=True, use_z=True, dtype=jnp.bfloat16, seed=2)


def test_result_does_not_depend_on_block():
  args, _ = _inputs(3, 1, 45, 2, 32)
  outs = [ops.memory_scan(*args, rule="delta", block=c, **_backend_args("gpu")) for c in (16, 32)]
  for a, b in zip(*outs):
    assert rel_err(a, b) < FWD_TOL


def test_unknown_rule_raises():
  args, _ = _inputs(4, 1, 8, 1, 16)
  with pytest.raises(ValueError, match="rule"):
    ops.memory_scan(*args, rule="hebb", interpret=True)


def test_dispatch_pallas_equals_xla():
  """``Impl.PALLAS`` through ``dispatch.l2_scan`` (interpret mode on CPU) equals ``Impl.XLA``
  on raw bf16 inputs, keys normalised inside (the op's gradients are tested above)."""
  (q, k, v, g, eta, A, z), _ = _inputs(5, 2, 21, 2, 32, jnp.bfloat16)
  got, want = (dispatch.l2_scan(q, k, v, g, eta, A, z, rule="delta", chunk=8, impl=impl)
               for impl in (dispatch.Impl.PALLAS, dispatch.Impl.XLA))
  for a, b in zip(got, want):
    assert rel_err(a, b) < FWD_TOL


@pytest.mark.parametrize("rule,topology", [("delta", "v5e:2x2"), ("wedge", "v5e:2x2"), ("delta", "v4:2x2x1"),
                                           ("delta", "v5p:2x2x1")])
def test_tpu_kernels_compile(rule, topology):
  """Forward and backward TPU kernels pass Mosaic's lowering and compile for v5e, v4 and
  v5p topologies, bf16 inputs, D = 128 (no TPU needed; skipped without libtpu)."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: no TPU ahead-of-time compile")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from tensorcache import compile_tpu  # pylint: disable=g-import-not-at-top
  devices = compile_tpu.topology_devices(topology)  # one per chip; with libtpu installed, never skipped
  mesh = Mesh(np.array(devices), ("b",))
  B, T, H, D = 4, 512, 2, 128
  specs = (P("b"),) * 3 + (P(), P(), P("b"), P("b"))
  shapes = [(B, T, H, D)] * 3 + [(T, H), (H,), (B, H, D, D), (B, H, D)]
  dtypes = [jnp.bfloat16] * 3 + [jnp.float32] * 4
  abstract = [jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, p)) for s, d, p in zip(shapes, dtypes, specs)]

  def loss(q, k, v, g, eta, A, z):
    r, qz, A2, z2 = ops.memory_scan(q, k, v, g, eta, A, z, rule=rule, read_first=True, backend="tpu")
    return jnp.sum(r * r) + jnp.sum(qz) + jnp.sum(A2) + jnp.sum(z2)

  def grads(*args):  # per-shard gradients; those of the shared g and eta summed over shards
    dq, dk, dv, dg, deta, dA, dz = jax.grad(loss, argnums=range(7))(*args)
    return dq, dk, dv, jax.lax.psum(dg, "b"), jax.lax.psum(deta, "b"), dA, dz

  step = jax.shard_map(grads, mesh=mesh, in_specs=specs, out_specs=specs, check_vma=False)
  compiled = jax.jit(step).lower(*abstract).compile()
  assert compiled.as_text().count("tpu_custom_call") == 2  # the forward and the backward kernel


def test_model_with_pallas_memory_equals_xla():
  """A Tensor Cache model (delta rule, read normaliser) with ``impl="pallas"`` gives the
  logits of ``impl="xla"`` (float32, interpret mode on CPU); its memory matters (the logits
  move when the memory's write rate is zeroed)."""
  from tests import _util  # pylint: disable=g-import-not-at-top
  cfg = _util.small_config(mechanism="tc", rule="delta", n_layer=1, normalize_read=True)
  model, params = _util.init_model(cfg.replace(impl="xla"), seed=3)
  toks = _util.tokens(4)
  want = _util.forward(model, params, toks)
  got = _util.forward(_util.GPT(cfg.replace(impl="pallas")), params, toks)
  _util.assert_close(got, want, 1e-5, "pallas vs xla logits")
  _util.assert_differs(_util.forward(model, _util.set_param(params, "lr_logit", -30.0), toks), want)


@pytest.mark.parametrize("rule", ["delta", "wedge"])
def test_gpu_kernels_lower_for_cuda(rule):
  """Forward and backward GPU kernels pass the Pallas Triton lowering for CUDA (run on this
  CPU host: the lowering to Triton IR needs no GPU; compiling it does, see the README)."""
  B, T, H, D = 2, 64, 2, 64
  s = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  args = [s((B, T, H, D), jnp.bfloat16)] * 3 + [s((T, H)), s((H,)), s((B, H, D, D)), s((B, H, D))]

  def loss(*a):
    r, qz, A, z = ops.memory_scan(*a, rule=rule, block=32, precision="tf32x3", backend="gpu")
    return jnp.sum(r * r) + jnp.sum(qz) + jnp.sum(A) + jnp.sum(z)

  lowered = jax.jit(jax.grad(loss, argnums=range(7))).trace(*args).lower(lowering_platforms=("cuda",))
  assert lowered.as_text().count("__gpu$xla.gpu.triton") == 4  # local and serial, forward and backward
