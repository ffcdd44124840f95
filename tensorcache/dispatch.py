"""The single dispatch point for every hot path: L1 attention (parallel and streaming), the
L2 memory scans (exact, chunk-start, chunk-mean) and the Infini-attention scans.

Each op takes arrays and static arguments only, so a kernel can replace any of them. Inputs
arrive in the compute dtype (bf16 in training); implementations cast to float32 *inside*.

``Impl`` is resolved at call time, never at import time: ``REFERENCE`` is the plain oracle
(dense ``T x T`` attention, per-token memory recurrence), ``XLA`` the chunked forms;
``AUTO`` picks the fastest implementation for the platform the op is lowered for.
"""

from __future__ import annotations

import enum

from tensorcache import attention, infini, memory


class Impl(enum.Enum):
  AUTO = "auto"
  REFERENCE = "reference"
  XLA = "xla"


def resolve(impl: Impl | str) -> Impl:
  return Impl(impl)


# ------------------------------------------------------------------ L1


def l1_attention(q, k, v, *, window, num_sinks=0, q_sink=None, block=128, impl=Impl.AUTO):
  """Parallel L1 attention (see ``attention.py``)."""
  if resolve(impl) is Impl.REFERENCE:
    return attention.dense_attention(q, k, v, window, num_sinks, q_sink)
  return attention.chunked_window_attention(q, k, v, window, num_sinks, q_sink, block)


# ------------------------------------------------------------------ L2


def l2_scan(q, k, v, g, eta, A, z=None, *, rule, chunk, read_first=False, normalize_q=False,
            impl=Impl.AUTO):
  """Exact memory scan over a write stream (see ``memory.py``).

  ``q, k, v`` are raw (any float dtype; keys are L2-normalised inside, queries too with
  ``normalize_q``). ``z`` (optional) is the read normaliser's state. Returns ``(r, qz, A, z)``
  in float32, ``qz``/``z`` None without a normaliser.
  """
  q, k, v = memory.prepare(q, k, v, normalize_q)
  if resolve(impl) is Impl.REFERENCE:
    return memory.memory_recurrence(q, k, v, g, eta, A, rule, read_first, z)
  return memory.memory_scan(q, k, v, g, eta, A, rule, chunk, read_first, z)


def l2_chunk_start(q, k, v, log_lam, valid, eta, A, z=None, *, rule, chunk, mean, normalize_q=False,
                   impl=Impl.AUTO):
  """Chunk-start scans: the reference's weighted sum or the chunk-mean shortcut."""
  del impl  # one implementation (a lax.scan over chunks, O(T/C) states saved)
  q, k, v = memory.prepare(q, k, v, normalize_q)
  return memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A, rule, chunk, mean, z)


# ------------------------------------------------------------------ Infini-attention


def infini_scan(q, k, v, state, *, rule, segment, impl=Impl.AUTO):
  """Parallel Infini-attention segment scan (see ``infini.py``)."""
  del impl
  return infini.segment_scan(q, k, v, rule, segment, state)


def infini_stream(q, k, v, positions, state, *, rule, segment, impl=Impl.AUTO):
  """Token-by-token Infini-attention from a streaming state."""
  del impl
  return infini.stream(q, k, v, positions, rule, segment, state)
