"""The memory-scan op: pads to whole chunks, wires ``custom_vjp`` and picks the kernel.

``memory_scan`` has the contract of ``reference.memory_scan`` (``tensorcache.memory``'s chunked
exact scan): prepared float32 ``q, k, v [B, T, H, D]`` (bf16 is read as is and cast to float32
in the kernel), per-step log decays ``g [T, H]``, write rate ``eta [H]``, initial state
``A [B, H, D, D]`` and optional normaliser ``z [B, H, D]``; returns ``(r, qz, A, z)`` in
float32, ``qz``/``z`` None without ``z``. Gradients reach every input, ``g`` and ``eta``
included. ``block`` is the kernel's own chunk (the result does not depend on it).

Padding: ``T`` is padded to a multiple of ``block`` with zero pairs and zero log decay, the
identity step (the state passes through unchanged); the padded reads are dropped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.memory_scan import chunk, kernel_gpu, kernel_tpu

f32 = jnp.float32
KERNELS = {"gpu": kernel_gpu, "tpu": kernel_tpu}


@functools.lru_cache(maxsize=None)
def _op(rule: str, read_first: bool, precision: str, backend: str, interpret: bool):
  kernel = KERNELS[backend]
  statics = dict(rule=rule, read_first=read_first, precision=precision, interpret=interpret)

  @jax.custom_vjp
  def scan(q, k, v, g, eta, A0, z0):
    return kernel.forward(q, k, v, g, eta, A0, z0, save=False, **statics)

  def fwd(q, k, v, g, eta, A0, z0):
    r, qz, A, z, saved = kernel.forward(q, k, v, g, eta, A0, z0, **statics)
    return (r, qz, A, z), (q, k, v, g, eta, saved)

  def bwd(res, cotangents):
    q, k, v, g, eta, saved = res
    dr, dqz, dA, dz = cotangents
    dq, dk, dv, dg, deta, dA0, dz0 = kernel.backward(q, k, v, g, eta, saved, dr, dqz, dA, dz, **statics)
    return dq, dk, dv, dg.sum(0), deta.sum(0), dA0, dz0

  scan.defvjp(fwd, bwd)
  return scan


def memory_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, z_BHD=None, *, rule: str, read_first: bool = False,
                block: int = 64, precision: str = "highest", backend: str = "gpu", interpret: bool = False):
  """The exact memory scan by the ``backend`` kernel (``gpu``: Triton lowering, ``tpu``:
  Mosaic); ``interpret`` runs it in Pallas interpret mode (any platform). ``precision`` names
  the kernel's matrix products (``chunk.PRECISIONS``; ``tf32x3`` compiles on GPU only)."""
  if rule not in chunk.RULES:
    raise ValueError(f"Unknown memory write rule {rule!r}; choose one of {chunk.RULES}.")
  B, T, H, D = q_BTHD.shape
  C = block
  N = -(-T // C)
  pad = ((0, 0), (0, N * C - T), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, pad) for x in (q_BTHD, k_BTHD, v_BTHD))
  g = jnp.pad(g_TH.astype(f32), ((0, N * C - T), (0, 0))).T.reshape(H, N, 1, C)
  use_z = z_BHD is not None
  z0 = (z_BHD.astype(f32) if use_z else jnp.zeros((B, H, D), f32))[:, :, None, :]
  eta = eta_H.astype(f32).reshape(H, 1, 1)
  op = _op(rule, bool(read_first), precision, backend, bool(interpret))
  r, qz, A, z = op(q, k, v, g, eta, A_BHDD.astype(f32), z0)
  r, qz = r[:, :T], qz[:, :T, :, 0]
  return r, (qz if use_z else None), A, (z[:, :, 0] if use_z else None)
