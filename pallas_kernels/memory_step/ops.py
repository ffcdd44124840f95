"""The memory-step op: one decode step of the memory by the ``backend``'s kernel (``gpu``:
Triton lowering, see ``kernel_gpu``; ``tpu``: Mosaic), with the contract of
``reference.memory_step``. The kernel runs forward only; a gradient through the op is the
reference's (``common.with_reference_grad``)."""

from __future__ import annotations

from pallas_kernels import common
from pallas_kernels.memory_step import kernel_gpu, kernel_tpu, reference

RULES = ("outer", "wedge", "delta")
KERNELS = {"gpu": kernel_gpu, "tpu": kernel_tpu}


def supported(D: int) -> bool:
  """Head dims the kernel takes: powers of two from 16 to 128 (the ``D x D`` state and its
  update live in one program's registers)."""
  return 16 <= D <= 128 and D & (D - 1) == 0


def memory_step(q_BHD, k_BHD, v_BHD, g_H, eta_H, A_BHDD, z_BHD=None, *, rule: str, read_first: bool = False,
                normalize_q: bool = False, backend: str = "gpu", interpret: bool = False):
  D = q_BHD.shape[-1]
  if not supported(D):
    raise ValueError(f"memory_step takes a head dim that is a power of two from 16 to 128, not {D}; "
                     "use the library's one-step recurrence (impl='xla').")
  if rule not in RULES:
    raise ValueError(f"Unknown memory rule {rule!r}; choose one of {RULES}.")
  if backend not in KERNELS:
    raise ValueError(f"Unknown backend {backend!r}; choose one of {sorted(KERNELS)}.")
  statics = dict(rule=rule, read_first=read_first, normalize_q=normalize_q)
  kernel = lambda *a: KERNELS[backend].step(*a, **statics, eps=reference.KEY_NORM_EPS, interpret=interpret)
  ref = lambda *a: reference.memory_step(*a, **statics)
  return common.with_reference_grad(kernel, ref)(q_BHD, k_BHD, v_BHD, g_H, eta_H, A_BHDD, z_BHD)
