"""The delta-state op: ``custom_vjp`` over the GPU kernels, with the column-summing products
of the backward pass as batched XLA products.

``delta_states(U, Wk, Kw, lam, S0)`` has the contract of ``reference.delta_states``; gradients
reach every input. ``supported`` says which shapes the kernels take: Triton's products want
powers of two of at least 16 (the value columns are taken 16 at a time, so ``V`` need only
be a multiple of 16: ``memory._delta_chunks`` widens them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.delta_states import kernel_gpu

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


# Value columns per program: 16, Triton's smallest product. On an H200 at D 128 it measured
# 14.4 ms fwd+bwd, against 15.0 ms for 32 columns at 8 warps, 16.7 ms for 64 at 8 warps and
# 135.9 ms for 32 at 4 warps (results/fast_paths/probe_delta_states_d128.json).
BLOCK_V = 16


def supported(C: int, K: int, V: int) -> bool:
  pow2 = lambda n: 16 <= n <= 128 and n & (n - 1) == 0
  return pow2(C) and pow2(K) and V > 0 and V % BLOCK_V == 0


@functools.lru_cache(maxsize=None)
def _op(precision: str, num_warps: int, num_stages: int, interpret: bool):
  statics = dict(precision=precision, num_warps=num_warps, num_stages=num_stages, interpret=interpret)

  @jax.custom_vjp
  def states(U, Wk, Kw, lam, S0):
    return kernel_gpu.forward(U, Wk, Kw, lam, S0, block_v=BLOCK_V, **statics)

  def fwd(U, Wk, Kw, lam, S0):
    W, S_in, S = states(U, Wk, Kw, lam, S0)
    return (W, S_in, S), (Wk, Kw, lam, W, S_in)

  def bwd(res, cotangents):
    Wk, Kw, lam, W, S_in = res
    dW, dS_in, dS = cotangents
    dWt, L, dS0 = kernel_gpu.backward(Wk, Kw, lam, dW, dS_in, dS, block_v=BLOCK_V, **statics)
    mm = lambda spec, a, b: jnp.einsum(spec, a, b, precision=HIGHEST, preferred_element_type=f32)
    dWk = -mm("bhncv,bhnkv->bhnck", dWt, S_in)
    dKw = mm("bhncv,bhnkv->bhnck", W, L)
    dlam = jnp.einsum("bhnkv,bhnkv->hn", S_in, L, preferred_element_type=f32)
    return dWt, dWk, dKw, dlam, dS0

  states.defvjp(fwd, bwd)
  return states


def delta_states(U, Wk, Kw, lam, S0, *, precision: str = "highest", num_warps: int = 4, num_stages: int = 1,
                 interpret: bool = False):
  """``(W, S_in, S)`` by the GPU kernels (``interpret``: Pallas interpret mode, any platform).
  ``precision``: ``"highest"`` (IEEE float32 products on the CUDA cores) or ``"tf32x3"``
  (three TF32 passes on the tensor cores; compiled GPU kernels only)."""
  if not supported(U.shape[3], Wk.shape[-1], U.shape[-1]):
    raise ValueError(f"delta_states kernels need the chunk C and key dim K to be powers of two from 16 to 128 "
                     f"and V a multiple of {BLOCK_V}; got C={U.shape[3]}, K={Wk.shape[-1]}, V={U.shape[-1]}.")
  args = common.varying_alike(*(x.astype(f32) for x in (U, Wk, Kw, lam, S0)))
  return _op(precision, num_warps, num_stages, bool(interpret))(*args)
