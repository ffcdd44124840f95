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


def manual_axes(x) -> tuple[str, ...]:
  """The manual mesh axes (inside ``jax.shard_map``) that ``x``'s type varies over. The
  type's field is ``vma`` in some JAX versions, ``manual_axis_type.varying`` in others."""
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)
  return tuple(sorted(getattr(aval, "vma", None) or (mat.varying if mat is not None else ())))


def varying_alike(*arrays) -> list:
  """``arrays`` cast to vary over the union of their manual mesh axes. Under ``jax.shard_map``
  (with its type check on) a kernel's operands must share one type, which ``out_struct`` then
  gives its outputs; the cast's transpose sums the gradient of an operand that was invariant."""
  union = set().union(*map(manual_axes, arrays))
  cast = lambda x: tuple(sorted(union - set(manual_axes(x))))
  return [jax.lax.pcast(x, cast(x), to="varying") if cast(x) else x for x in arrays]


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """A kernel output's ``jax.ShapeDtypeStruct``, typed over the manual mesh axes of its
  operand ``like`` (``jax.shard_map`` with its type check on requires it)."""
  aval = jax.typeof(like)
  if getattr(aval, "manual_axis_type", None) is not None:
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=aval.manual_axis_type)
  if getattr(aval, "vma", None):
    return jax.ShapeDtypeStruct(shape, dtype, vma=aval.vma)
  return jax.ShapeDtypeStruct(shape, dtype)
