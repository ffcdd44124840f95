"""The single dispatch point for the hot paths: L1 attention and the L2 memory scan.

``Impl`` is resolved at call time from the arrays' platform, never at import time:
``REFERENCE`` is the plain oracle (dense ``T x T`` attention, per-token memory
recurrence), ``XLA`` the chunked ``lax.scan`` forms; ``AUTO`` picks the fastest available
for the platform (today ``XLA`` everywhere; Pallas kernels register here when they land).
"""

from __future__ import annotations

import enum

from tensorcache import attention, memory


class Impl(enum.Enum):
  AUTO = "auto"
  REFERENCE = "reference"
  XLA = "xla"


def resolve(impl: Impl | str) -> Impl:
  impl = Impl(impl)
  return Impl.XLA if impl is Impl.AUTO else impl


def l1_attention(q, k, v, *, window, num_sinks=0, q_sink=None, block=128, impl=Impl.AUTO):
  """Parallel L1 attention (see ``attention.py``)."""
  if resolve(impl) is Impl.REFERENCE:
    return attention.dense_attention(q, k, v, window, num_sinks, q_sink)
  return attention.chunked_window_attention(q, k, v, window, num_sinks, q_sink, block)


def l2_scan(q, k, v, g, eta, A, *, rule, chunk, read_first=False, impl=Impl.AUTO):
  """Exact memory scan over a write stream (see ``memory.py``)."""
  if resolve(impl) is Impl.REFERENCE:
    return memory.memory_recurrence(q, k, v, g, eta, A, rule, read_first)
  return memory.memory_scan(q, k, v, g, eta, A, rule, chunk, read_first)
