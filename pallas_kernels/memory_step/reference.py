"""The pure-jnp reference the kernel must equal: the library's one-step memory update
(``tensorcache.memory.prepare`` then ``memory_recurrence`` on a stream of one step), called
with the op's argument order. Raw ``q, k, v [B, H, D]`` (keys are L2-normalised inside,
queries too with ``normalize_q``), log decay ``g [H]`` (0: nothing written), write rate
``eta [H]``, state ``A [B, H, D, D]`` and optional normaliser ``z [B, H, D]``. Returns
``(r [B, H, D], qz [B, H] or None, A, z)`` in float32.
"""

from __future__ import annotations

from tensorcache import memory
from tensorcache.shapes import KEY_NORM_EPS  # the kernel's too: ops passes it


def memory_step(q_BHD, k_BHD, v_BHD, g_H, eta_H, A_BHDD, z_BHD=None, *, rule: str, read_first: bool = False,
                normalize_q: bool = False):
  q, k, v = memory.prepare(q_BHD[:, None], k_BHD[:, None], v_BHD[:, None], normalize_q)
  r, qz, A, z = memory.memory_recurrence(q, k, v, g_H[None], eta_H, A_BHDD, rule, read_first, z_BHD)
  return r[:, 0], (None if qz is None else qz[:, 0]), A, z
