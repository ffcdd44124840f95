"""The fast L1 kernels that other libraries provide, and the one place that calls them.

Both compute the L1 of ``attention.py`` without sinks: query ``t`` sees keys ``s`` with
``t - window < s <= t`` (``window=None``: ``s <= t``), softmax scale ``1/sqrt(D)``, float32
softmax statistics inside the kernel, output in the input dtype.

* ``cudnn_attention``: cuDNN flash attention through ``jax.nn.dot_product_attention``
  (``implementation="cudnn"``, ``is_causal=True``, ``local_window_size=(window - 1, 0)``),
  forward and backward. bf16/fp16 only; head dim a multiple of 8, at most 256 (128 before
  Hopper). Needs a CUDA backend with cuDNN.
* ``splash_attention``: Pallas splash attention for TPU (``LocalMask`` / ``CausalMask``),
  forward and backward, ``vmap``-ed over the batch, under ``jax.shard_map`` over the batch
  on a multi-device mesh. ``T`` is padded at the end to a multiple of 128: a padded key is
  in the future of every real query, so the padding changes nothing. ``interpret=True``
  runs it in the Pallas interpreter (CPU tests).
* ``per_platform``: the platform choice, made where the op is lowered.

Every call here is version-sensitive (cuDNN's checks, the splash module's API); keep them
in this file.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

_log = logging.getLogger(__name__)

# The exceptions a kernel raises while tracing when it cannot take a call (unsupported
# dtype, shape or cuDNN version, no cuDNN in this process, a moved or changed splash API).
REJECTED = (NotImplementedError, ValueError, RuntimeError, TypeError, ImportError)

Attention = Callable[[Array, Array, Array], Array]


def _effective_window(window: int | None, T: int) -> int | None:
  """A window of at least ``T`` keys is plain causal attention."""
  return None if window is None or window >= T else window


def cudnn_attention(
    q_BTHD: Float[Array, "B T H D"],
    k_BTHD: Float[Array, "B T H D"],
    v_BTHD: Float[Array, "B T H D"],
    window: int | None,
) -> Float[Array, "B T H D"]:
  """cuDNN sliding-window (or causal) flash attention; raises one of ``REJECTED`` while
  tracing when cuDNN cannot take the call."""
  B, T, H, D = q_BTHD.shape
  if q_BTHD.dtype not in (jnp.bfloat16, jnp.float16):
    raise NotImplementedError(f"cuDNN attention takes bf16/fp16, got {q_BTHD.dtype}")
  if D % 8 or D > 256:
    raise NotImplementedError(f"cuDNN attention needs a head dim <= 256 and a multiple of 8, got {D}")
  window = _effective_window(window, T)
  # cuDNN's masked backward takes even lengths only, and rejects others while the gradient
  # is traced, too late for the fallback: pad to a multiple of 64 at the end (causal, so
  # no real query sees the padding).
  Tp = -(-T // 64) * 64
  pad = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0)))
  out = jax.nn.dot_product_attention(
      pad(q_BTHD), pad(k_BTHD), pad(v_BTHD), scale=1.0 / float(np.sqrt(D)), is_causal=True,
      local_window_size=None if window is None else (window - 1, 0), implementation="cudnn")
  return out[:, :T]


def _splash_block(T: int) -> int:
  """Tile of the padded sequence: the largest of 512, 256, 128 that divides it."""
  return next(b for b in (512, 256, 128) if T % b == 0)


def _splash_kernel(T: int, H: int, window: int | None, interpret: bool):
  """The splash kernel for a padded length ``T`` (one head's mask serves every head)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  blk = _splash_block(T)
  shape = (T, T)
  head_mask = splash.CausalMask(shape) if window is None else splash.LocalMask(shape, (window - 1, 0), 0)
  return splash.make_splash_mha(
      splash.MultiHeadMask([head_mask] * H),
      block_sizes=splash.BlockSizes(
          block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk),
      head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(q_BTHD, k_BTHD, v_BTHD, window, interpret):
  """Splash attention on the arrays of one device."""
  B, T, H, D = q_BTHD.shape
  Tp = -(-T // 128) * 128
  kernel = _splash_kernel(Tp, H, _effective_window(window, T), interpret)

  def to_BHTD(x_BTHD):
    return jnp.pad(x_BTHD, ((0, 0), (0, Tp - T), (0, 0), (0, 0))).swapaxes(1, 2)

  # The kernel has no scale argument: scale q (exact in bf16 when D is a power of 4).
  q_scaled = (q_BTHD.astype(jnp.float32) / np.sqrt(D)).astype(q_BTHD.dtype)
  out_BHTD = jax.vmap(kernel)(to_BHTD(q_scaled), to_BHTD(k_BTHD), to_BHTD(v_BTHD))
  return out_BHTD.swapaxes(1, 2)[:, :T]


def _batch_mesh(x) -> tuple[jax.sharding.AbstractMesh | None, tuple[str, ...]]:
  """The mesh the op is traced for and its free axes (those not already manual inside a
  ``shard_map``), when JAX knows them while tracing: the mesh in scope (``jax.set_mesh``)
  or the operand's. ``(None, ())`` without a mesh.

  Every free axis is returned, size-1 axes included: the kernel's ``shard_map`` must make
  all of them manual, since Mosaic refuses a kernel left in a partially automatic mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    mesh = getattr(jax.typeof(x).sharding, "mesh", mesh)
  if mesh.empty:
    return None, ()
  axes = tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
  return (mesh, axes) if axes else (None, ())


def splash_attention(
    q_BTHD: Float[Array, "B T H D"],
    k_BTHD: Float[Array, "B T H D"],
    v_BTHD: Float[Array, "B T H D"],
    window: int | None,
    *,
    interpret: bool = False,
) -> Float[Array, "B T H D"]:
  """Pallas splash attention with a local (or causal) mask, padded to a multiple of 128.

  XLA cannot partition a Mosaic kernel (and ``custom_partitioning`` does not reach the TPU
  compiler, jax-ml/jax#38196), so under a mesh known while tracing the kernel runs under
  ``jax.shard_map`` with the batch split over every free mesh axis (all of them manual,
  size-1 axes too); it raises ``NotImplementedError`` when the batch does not divide. A jit
  over several devices with no mesh in scope and uncommitted operands cannot be seen here:
  run it under ``jax.set_mesh(mesh)`` (otherwise lowering fails with "Mosaic kernels cannot
  be automatically partitioned").
  """
  local = functools.partial(_splash_local, window=window, interpret=interpret)
  mesh, axes = _batch_mesh(q_BTHD)
  if mesh is None:
    return local(q_BTHD, k_BTHD, v_BTHD)
  if mesh.manual_axes:  # inside sequence parallelism's shard_map: the kernel's own shard_map
    # (check_vma=False) would drop the outer axes from the types of its output and gradient.
    raise NotImplementedError("splash inside an outer shard_map")
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  if q_BTHD.shape[0] % shards:
    raise NotImplementedError(f"batch {q_BTHD.shape[0]} does not split over {shards} devices")
  spec = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                       axis_names=set(axes), check_vma=False)(q_BTHD, k_BTHD, v_BTHD)


def _or_fallback(name: str, kernel: Attention, fallback: Attention) -> Attention:
  """``kernel``, or ``fallback`` when the kernel rejects the call while tracing."""

  def run(q, k, v):
    try:
      return kernel(q, k, v)
    except REJECTED as e:  # pylint: disable=broad-exception-caught
      _log.info("L1 attention: %s rejected %s %s (%s); using the fallback", name,
                q.shape, q.dtype, e)
      return fallback(q, k, v)

  return run


def per_platform(
    q_BTHD: Float[Array, "B T H D"],
    k_BTHD: Float[Array, "B T H D"],
    v_BTHD: Float[Array, "B T H D"],
    window: int | None,
    fallback: Attention,
) -> Float[Array, "B T H D"]:
  """cuDNN on CUDA, splash on TPU, ``fallback(q, k, v)`` elsewhere, chosen where the op is
  lowered, so an ahead-of-time compile for TPU from a CPU host takes the splash branch.

  ``lax.platform_dependent`` traces every branch on every platform and lowers only the
  lowering platform's. Neither kernel traces everywhere (cuDNN raises "cuDNN is not
  detected" without a CUDA plugin; the splash module may move between JAX versions), so
  each branch is wrapped: a kernel that raises while tracing is replaced by the fallback in
  that branch only, and that branch is never lowered on the platform that could not trace
  it. A kernel that traces but fails to compile still fails loudly.

  Only the branches this process can lower are traced: cuDNN where the default backend is a
  GPU, splash everywhere else (a TPU, or a CPU host compiling for one ahead of time).
  Tracing splash builds its block mask in Python, ``O((T / block)^2)`` steps (35 s for one
  65536-token shard's forward and backward masks on this project's CPU host), which kept GPU
  steps of 128K tokens and more from compiling within minutes; tracing cuDNN off a GPU only
  logs its rejection.
  """
  if jax.default_backend() == "gpu":
    branches = dict(cuda=_or_fallback("cuDNN", lambda q, k, v: cudnn_attention(q, k, v, window), fallback))
  else:
    branches = dict(tpu=_or_fallback("splash", lambda q, k, v: splash_attention(q, k, v, window), fallback))
  return jax.lax.platform_dependent(q_BTHD, k_BTHD, v_BTHD, default=fallback, **branches)
