"""The single dispatch point for every hot path: L1 attention (parallel and streaming), the
L2 memory scans (exact, chunk-start, chunk-mean) and decode step, and the Infini-attention scans.

Each op takes arrays and static arguments only, so a kernel can replace any of them. Inputs
arrive in the compute dtype (bf16 in training); implementations cast to float32 *inside*.

``Impl`` is resolved at call time, never at import time: ``REFERENCE`` is the plain oracle
(dense ``T x T`` attention, per-token memory recurrence), ``XLA`` the chunked forms,
``PALLAS`` the Pallas kernels where one exists (the exact memory scan; the decode step's L1
attention and memory step; ``AUTO``'s choice for the other ops); ``AUTO`` picks the fastest
implementation for the platform the op is lowered for (on GPU cuDNN for L1, the decode-attention
kernel, and the delta rule's state pass inside the XLA memory scan; the whole-scan and
memory-step kernels stay off, measured slower or no faster there: ``pallas_kernels/*/README.md``).
"""

from __future__ import annotations

import enum
import functools

import jax
import jax.numpy as jnp

from pallas_kernels.decode_attention import ops as decode_ops
from pallas_kernels.delta_states import ops as delta_states_ops
from pallas_kernels.memory_scan import ops as memory_scan_ops
from pallas_kernels.memory_step import ops as memory_step_ops
from tensorcache import attention, fast_attention, infini, memory


class Impl(enum.Enum):
  AUTO = "auto"
  REFERENCE = "reference"
  XLA = "xla"
  PALLAS = "pallas"


PALLAS_BLOCK = 32  # the memory-scan kernel's chunk (steps per on-chip iteration)


# ------------------------------------------------------------------ L1


def l1_attention(q, k, v, *, window, num_sinks=0, q_sink=None, block=128, impl=Impl.AUTO):
  """Parallel L1 attention (see ``attention.py``; ``window=None`` is full causal attention).

  ``REFERENCE`` is the dense ``T x T`` oracle, ``XLA`` the chunked ``lax.scan`` form (query
  blocks of ``block``). ``AUTO`` takes the fastest kernel of the platform the op is lowered
  for (``fast_attention.per_platform``; an ahead-of-time compile for TPU on a CPU host takes
  the TPU column), the same kernels for windowed, full and dense-trained L1:

  ==============================================  =====================  ===================
  call                                            GPU (cuda)             TPU
  ==============================================  =====================  ===================
  bf16/fp16, no sinks, any window or None         cuDNN sliding window   splash, local mask
  sinks (``num_sinks > 0`` with a window)         chunked XLA            chunked XLA
  in-cache sink positions (``q_sink``)            chunked XLA            chunked XLA
  float32                                         chunked XLA            chunked XLA
  the kernel rejects it while tracing             chunked XLA            chunked XLA
  ==============================================  =====================  ===================

  Other platforms (CPU) run chunked XLA. Why these fall back: neither kernel can add the
  sink keys ``s < num_sinks`` to a sliding window nor score some keys with a second query;
  float32 keeps the chunked form, which rounds like the streaming path (``attend``) that must
  equal it to 1e-5 (cuDNN takes half precision only; splash's float32 matmuls run at Mosaic's
  default precision); cuDNN rejects head dims above 256 (128 before Hopper) or not a
  multiple of 8, and a process without cuDNN; splash rejects a batch that does not split
  over the mesh (``fast_attention.splash_attention``). Rejections are logged at INFO.
  """
  impl = Impl(impl)
  if impl is Impl.REFERENCE:
    return attention.dense_attention(q, k, v, window, num_sinks, q_sink)

  def chunked(q, k, v):
    return attention.chunked_window_attention(q, k, v, window, num_sinks, q_sink, block)

  sinks = q_sink is not None or (num_sinks > 0 and window is not None)
  half = q.dtype in (jnp.bfloat16, jnp.float16) and q.dtype == k.dtype == v.dtype
  if impl is Impl.XLA or sinks or not half:
    return chunked(q, k, v)
  return fast_attention.per_platform(q, k, v, window, chunked)


def l1_stream(q, k_cache, v_cache, cache_pos, k, v, positions, *, window, num_sinks=0, q_sink=None,
              impl=Impl.AUTO):
  """Streaming L1 attention: a chunk's queries ``[B, P, H, D]`` at ``positions [P]`` against
  the cache's keys/values ``[B, H, S, D]`` (heads-major; slot positions ``cache_pos [S]``,
  -1 empty) and the chunk's own keys/values ``[B, P, H, D]`` (``attention.stream_attention``).
  ``REFERENCE`` concatenates cache and chunk (``attention.concat_stream_attention``).

  A decode step (``P = 1``) runs ``pallas_kernels/decode_attention`` (forward only) under
  ``AUTO`` on GPU (cuda) and under ``PALLAS`` (its Mosaic kernel on TPU, the GPU kernel
  interpreted elsewhere): one kernel reads each cached key and value once, where XLA runs the
  scores, the softmax and the value product as separate kernels (its gradient is the XLA
  form's). It falls back to XLA for head dims that are not a power of two from 16 to 128 and
  caches whose slot count is not a multiple of 16 (on TPU: of 128, above 512 slots;
  ``decode_attention.ops.supported``). On TPU and CPU ``AUTO`` runs XLA: the TPU kernel is
  compiled and tested, never timed.
  """
  impl = Impl(impl)
  if impl is Impl.REFERENCE:
    return attention.concat_stream_attention(q, k_cache, v_cache, cache_pos, k, v, positions, window, num_sinks, q_sink)
  xla = lambda *a: attention.stream_attention(*a, window, num_sinks, q_sink)
  args = (q, k_cache, v_cache, cache_pos, k, v, positions)
  if q.shape[1] != 1 or impl is Impl.XLA or not decode_ops.supported(k_cache.shape[2], q.shape[-1]):
    return xla(*args)

  def kernel(backend, interpret=False):
    def run(q, k_cache, v_cache, cache_pos, k, v, positions):
      one = lambda x: None if x is None else x[:, 0]
      out = decode_ops.decode_attention(one(q), k_cache, v_cache, cache_pos, one(k), one(v), positions[0],
                                        window=window, num_sinks=num_sinks, q_sink_BHD=one(q_sink),
                                        backend=backend, interpret=interpret)
      return out[:, None]
    return run

  if impl is Impl.PALLAS:
    tpu = kernel("tpu") if decode_ops.supported(k_cache.shape[2], q.shape[-1], "tpu") else xla
    return jax.lax.platform_dependent(*args, cuda=kernel("gpu"), tpu=tpu, default=kernel("gpu", interpret=True))
  return jax.lax.platform_dependent(*args, cuda=kernel("gpu"), default=xla)


# ------------------------------------------------------------------ L2


def l2_scan(q, k, v, g, eta, A, z=None, *, rule, chunk, read_first=False, normalize_q=False,
            impl=Impl.AUTO):
  """Exact memory scan over a write stream (see ``memory.py``).

  ``q, k, v`` are raw (any float dtype; keys are L2-normalised inside, queries too with
  ``normalize_q``). ``z`` (optional) is the read normaliser's state. Returns ``(r, qz, A, z)``
  in float32, ``qz``/``z`` None without a normaliser.

  ``PALLAS`` runs ``pallas_kernels/memory_scan`` (its own chunk of 32 steps; the result does
  not depend on it): the GPU kernel on CUDA (products as 3 TF32 passes), the TPU kernel on
  TPU, the GPU kernel in Pallas interpret mode elsewhere (slow; for tests).

  ``AUTO`` on GPU (cuda) runs the XLA scan with the delta rule's state pass over chunks as a
  Pallas kernel (``pallas_kernels/delta_states``, products as three TF32 passes) where the
  chunk and the head dim are powers of two from 16 to 128, also for an entering state given
  as a function of the stream's map (a sequence-parallel shard): on an H200 the memory path's
  fwd+bwd went from 13.99 to 10.94 ms at B 4, T 16384, H 12, D 64 (run 12 of
  ``results/fast_paths``), and from 24.58 to 14.44 ms at H 8, D 128 (a probe).
  Elsewhere, and under ``XLA``, the states come from the associative scan of the chunks'
  affine maps.

  A stream of one step (a decode step) runs ``l2_step``.

  Delta rule: ``A`` may be a function ``(Phi, Psi) -> A`` of the stream's own state map
  (``memory.stream_map``), as sequence parallelism passes it. The chunked form calls it
  between its two phases; the others compute the map first (one more pass over the keys).
  """
  impl = Impl(impl)
  if callable(A) and rule != "delta":
    raise ValueError(f"An entering state given as a function of the stream's map needs rule='delta', not {rule!r}.")
  if q.shape[1] == 1 and not callable(A):  # a stream of one step (a decode step)
    return l2_step(q, k, v, g, eta, A, z, rule=rule, read_first=read_first, normalize_q=normalize_q, impl=impl)
  q, k, v = memory.prepare(q, k, v, normalize_q)
  if callable(A) and (impl in (Impl.REFERENCE, Impl.PALLAS) or q.shape[1] == 1):
    A = A(*memory.stream_map(k, v, g, eta, chunk))
  if impl is Impl.REFERENCE or q.shape[1] == 1:  # one step (decode): the direct update
    return memory.memory_recurrence(q, k, v, g, eta, A, rule, read_first, z)
  if impl is Impl.PALLAS:
    return _pallas_memory_scan(q, k, v, g, eta, A, z, rule=rule, read_first=read_first)
  C, D = max(1, min(chunk, q.shape[1])), q.shape[-1]
  if impl is Impl.AUTO and rule == "delta" and delta_states_ops.supported(C, D, D):
    def xla(states):  # A by closure: it may be a function of the stream's map
      return lambda q, k, v, g, eta, z: memory.memory_scan(q, k, v, g, eta, A, rule, chunk, read_first, z, states)
    kernel = functools.partial(delta_states_ops.delta_states, precision="tf32x3")
    return jax.lax.platform_dependent(q, k, v, g, eta, z, cuda=xla(kernel), default=xla(None))
  return memory.memory_scan(q, k, v, g, eta, A, rule, chunk, read_first, z)


def l2_step(q, k, v, g, eta, A, z=None, *, rule, read_first=False, normalize_q=False, impl=Impl.AUTO):
  """One step of the memory, a decode step: ``l2_scan`` of a stream of one step (``q, k, v``
  ``[B, 1, H, D]``, ``g [1, H]``).

  ``PALLAS`` runs ``pallas_kernels/memory_step``: key normalisation, write and read in one
  kernel (Triton on GPU, Mosaic on TPU, the GPU kernel interpreted elsewhere; its gradient is
  the XLA update's). It falls back to the direct XLA update (``memory.memory_recurrence``)
  for head dims that are not a power of two from 16 to 128. ``AUTO``, ``XLA`` and ``REFERENCE`` run that update: the
  kernel has not measured faster inside a decode step (one H200, GPT-124M, runs 8 and 9 of
  ``results/fast_paths``, one each: ``generate`` 2 % slower at batch 1 and 3 % faster at batch
  64, the Python ``decode_step`` loop 30 % and 24 % slower).
  """
  impl = Impl(impl)

  def xla(q, k, v, g, eta, A, z):
    q, k, v = memory.prepare(q, k, v, normalize_q)
    return memory.memory_recurrence(q, k, v, g, eta, A, rule, read_first, z)

  if impl is not Impl.PALLAS or not memory_step_ops.supported(q.shape[-1]):
    return xla(q, k, v, g, eta, A, z)

  def kernel(backend, interpret=False):
    def run(q, k, v, g, eta, A, z):
      r, qz, A, z = memory_step_ops.memory_step(q[:, 0], k[:, 0], v[:, 0], g[0], eta, A, z, rule=rule,
                                                read_first=read_first, normalize_q=normalize_q, backend=backend,
                                                interpret=interpret)
      return r[:, None], (None if qz is None else qz[:, None]), A, z
    return run

  return jax.lax.platform_dependent(q, k, v, g, eta, A, z, cuda=kernel("gpu"), tpu=kernel("tpu"),
                                    default=kernel("gpu", interpret=True))


def _pallas_memory_scan(q, k, v, g, eta, A, z, *, rule, read_first):
  def kernel(backend, precision="highest", interpret=False):
    return lambda *a: memory_scan_ops.memory_scan(*a, rule=rule, read_first=read_first, block=PALLAS_BLOCK,
                                                  precision=precision, backend=backend, interpret=interpret)

  # On GPU, float32 products as three TF32 tensor-core passes: IEEE float32 products run on
  # the CUDA cores (H200, first kernel design: 120.5 vs 11.6 ms forward at relative errors
  # 4.9e-7 vs 6.1e-7 against the XLA scan; results/pallas_memory/run1_h200.json).
  return jax.lax.platform_dependent(q, k, v, g, eta, A, z, cuda=kernel("gpu", "tf32x3"), tpu=kernel("tpu"),
                                    default=kernel("gpu", interpret=True))


def l2_chunk_start(q, k, v, log_lam, valid, eta, A, z=None, *, rule, chunk, mean, normalize_q=False,
                   impl=Impl.AUTO):
  """Chunk-start scans: the reference's weighted sum or the chunk-mean shortcut."""
  del impl  # one implementation (a lax.scan over chunks, O(T/C) states saved)
  q, k, v = memory.prepare(q, k, v, normalize_q)
  return memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A, rule, chunk, mean, z)


# ------------------------------------------------------------------ Infini-attention


def infini_scan(q, k, v, state, *, rule, segment, impl=Impl.AUTO):
  """Parallel Infini-attention segment scan (see ``infini.py``)."""
  del impl
  return infini.segment_scan(q, k, v, rule, segment, state)


def infini_stream(q, k, v, positions, state, *, rule, segment, impl=Impl.AUTO):
  """Token-by-token Infini-attention from a streaming state."""
  del impl
  return infini.stream(q, k, v, positions, rule, segment, state)
