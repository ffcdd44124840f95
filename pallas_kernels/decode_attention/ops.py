"""The decode-attention op: picks the block (and on GPU the number of splits), runs the
``backend``'s kernel (``gpu``: Triton lowering, ``tpu``: Mosaic) and combines its partial
softmax sums with the token's own key.

``decode_attention`` has the contract of ``reference.decode_attention`` (the library's
streaming attention for one token): queries ``[B, H, D]`` at position ``pos`` against the
cache before the token (``[B, H, S, D]``, slot positions ``[S]``) and the token's own key and
value ``[B, H, D]``; returns ``[B, H, D]`` in the queries' dtype. The kernel runs forward only; a
gradient through the op is the reference's (``common.with_reference_grad``).

The token's own key is always visible to its query, so the combine never divides by zero:
``M = max(s_self, m_1 .. m_n)``, ``out = (e^{s_self - M} v + sum_j e^{m_j - M} acc_j) /
(e^{s_self - M} + sum_j e^{m_j - M} l_j)``. The cache is read as it was before the token: the
slot the token will take may still hold the pair it evicts, which the mask hides by its
position (out of the window), so no copy of the cache is made.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.decode_attention import kernel_gpu, kernel_tpu, reference

f32 = jnp.float32
TARGET_PROGRAMS = 256  # about two programs per SM of an H100/H200 (132 SMs)


def supported(S: int, D: int, backend: str = "gpu") -> bool:
  """Shapes the ``backend``'s kernel takes: ``D`` a power of two from 16 to 128 (a block of
  keys and values of 128 x ``D`` float32 each per program), ``S`` a multiple of 16; on TPU
  also a multiple of 128 unless it is at most 512 (one block of the whole cache in VMEM)."""
  ok = 16 <= D <= 128 and D & (D - 1) == 0 and S % 16 == 0
  return ok and (backend != "tpu" or S % 128 == 0 or S <= 512)


def plan(B: int, H: int, S: int) -> tuple[int, int]:
  """``(block, n_split)``: the largest power-of-two block up to 128 that divides ``S``, and
  as many splits (a power of two, each a whole number of blocks) as bring ``B H n_split``
  up to ``TARGET_PROGRAMS``."""
  block = 128
  while S % block:
    block //= 2
  n_split = 1
  while B * H * n_split < TARGET_PROGRAMS and S % (2 * n_split * block) == 0:
    n_split *= 2
  return block, n_split


def decode_attention(q_BHD, k_cache_BHSD, v_cache_BHSD, slot_pos_S, k_BHD, v_BHD, pos, *, window, num_sinks=0,
                     q_sink_BHD=None, block=None, n_split=None, backend="gpu", interpret=False):
  """See the module docstring. ``block``/``n_split`` override ``plan`` (GPU) and
  ``kernel_tpu.block_for`` (TPU, one split) for tests."""
  B, H, S, D = k_cache_BHSD.shape
  if not supported(S, D, backend):
    raise ValueError(f"decode_attention takes a power-of-two head dim from 16 to 128 and a cache of 16k slots, "
                     f"not D={D}, S={S}; use the library's streaming attention (impl='xla').")
  statics = dict(window=window, num_sinks=num_sinks)
  if backend == "gpu":
    if block is None or n_split is None:
      block, n_split = plan(B, H, S)
    if S % (block * n_split):
      raise ValueError(f"{n_split} splits of whole {block}-slot blocks do not tile a cache of {S} slots.")
    partials = functools.partial(kernel_gpu.partials, **statics, block=block, n_split=n_split, interpret=interpret)
  elif backend == "tpu":
    block = kernel_tpu.block_for(S) if block is None else block
    if S % block or (block % 128 and block != S) or n_split not in (None, 1):
      raise ValueError(f"The TPU kernel takes one split of blocks of a multiple of 128 slots (or the whole "
                       f"cache) that tile the {S} slots, not block={block}, n_split={n_split}.")
    partials = functools.partial(kernel_tpu.partials, **statics, block=block, interpret=interpret)
  else:
    raise ValueError(f"Unknown backend {backend!r}; choose 'gpu' or 'tpu'.")
  kernel = lambda *a: _decode_attention(*a, partials, num_sinks=num_sinks)
  ref = lambda q, k_c, v_c, slots, k, v, pos, q_sink: reference.decode_attention(
      q, k_c, v_c, slots, k, v, pos, **statics, q_sink_BHD=q_sink)
  args = (q_BHD, k_cache_BHSD, v_cache_BHSD, slot_pos_S.astype(jnp.int32), k_BHD, v_BHD,
          jnp.asarray(pos, jnp.int32), q_sink_BHD)
  return common.with_reference_grad(kernel, ref)(*args)


def _decode_attention(q_BHD, k_cache_BHSD, v_cache_BHSD, slot_pos_S, k_BHD, v_BHD, pos, q_sink_BHD, partials, *,
                      num_sinks):
  D = q_BHD.shape[-1]
  pos = jnp.reshape(pos, (1,))
  acc, ml = partials(q_BHD, q_sink_BHD, k_cache_BHSD, v_cache_BHSD, slot_pos_S, pos)
  scale = 1.0 / jnp.sqrt(f32(D))
  q_self = q_BHD if q_sink_BHD is None else jnp.where(pos[0] < num_sinks, q_sink_BHD, q_BHD)
  s_self = jnp.sum(q_self.astype(f32) * k_BHD.astype(f32), axis=-1) * scale  # [B, H]
  m, l = ml[..., 0], ml[..., 1]
  M = jnp.maximum(s_self, m.max(-1))
  w_self, w = jnp.exp(s_self - M), jnp.exp(m - M[..., None])
  num = w_self[..., None] * v_BHD.astype(f32) + jnp.einsum("bhn,bhnd->bhd", w, acc, precision="highest")
  return (num / (w_self + (w * l).sum(-1))[..., None]).astype(q_BHD.dtype)
