"""What the kernel folders share: the Triton and TPU compiler parameters, and a gradient for
a forward-only kernel."""

from __future__ import annotations

from typing import Callable

import jax


def triton_params(num_warps: int, num_stages: int = 1):
  """Pallas Triton compiler parameters (``CompilerParams``; ``TritonCompilerParams`` in older
  JAX)."""
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
  return cls(num_warps=num_warps, num_stages=num_stages)


def tpu_params(*dimension_semantics: str):
  """Pallas TPU compiler parameters (``CompilerParams``; ``TPUCompilerParams`` in older JAX)."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  cls = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
  return cls(dimension_semantics=dimension_semantics)


def with_reference_grad(kernel: Callable, reference: Callable) -> Callable:
  """``kernel`` (positional array arguments, or None) with the gradient of ``reference``.

  A forward-only kernel needs one even where nothing differentiates it on purpose:
  ``jax.lax.platform_dependent`` differentiates every platform's branch, so a kernel in the
  GPU branch would break a gradient taken on any platform. The backward recomputes the
  reference from the saved inputs.
  """
  f = jax.custom_vjp(kernel)
  f.defvjp(lambda *args: (kernel(*args), args), lambda args, g: jax.vjp(reference, *args)[1](g))
  return f
