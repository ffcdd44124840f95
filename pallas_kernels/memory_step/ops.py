"""The memory-step op: one decode step of the memory (see ``kernel_gpu``), with the contract
of ``reference.memory_step``. Forward only (decoding needs no gradient)."""

from __future__ import annotations

from pallas_kernels.memory_step import kernel_gpu


def supported(D: int) -> bool:
  """Head dims the kernel takes: powers of two from 16 to 128 (the ``D x D`` state and its
  update live in one program's registers)."""
  return 16 <= D <= 128 and D & (D - 1) == 0


def memory_step(q_BHD, k_BHD, v_BHD, g_H, eta_H, A_BHDD, z_BHD=None, *, rule: str, read_first: bool = False,
                normalize_q: bool = False, interpret: bool = False):
  D = q_BHD.shape[-1]
  if not supported(D):
    raise ValueError(f"memory_step takes a head dim that is a power of two from 16 to 128, not {D}; "
                     "use the library's one-step recurrence (impl='xla').")
  return kernel_gpu.step(q_BHD, k_BHD, v_BHD, g_H, eta_H, A_BHDD, z_BHD, rule=rule, read_first=read_first,
                         normalize_q=normalize_q, interpret=interpret)
