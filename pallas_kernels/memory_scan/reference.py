"""The pure-jnp references the kernels must equal: this project's own memory scans.

``memory_scan`` is the chunked exact XLA form and ``memory_recurrence`` the per-token oracle,
both from ``tensorcache.memory`` (the layer of pure maths below the kernels), called with the
kernel op's argument order. Inputs are the prepared stream: float32 queries, L2-normalised
keys, values; ``g_TH`` per-step log decays; returns ``(r, qz, A, z)``.
"""

from __future__ import annotations

from tensorcache import memory


def memory_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, z_BHD=None, *, rule: str, read_first: bool = False,
                chunk: int = 64):
  return memory.memory_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule, chunk, read_first, z_BHD)


def memory_recurrence(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, z_BHD=None, *, rule: str,
                      read_first: bool = False):
  return memory.memory_recurrence(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule, read_first, z_BHD)
