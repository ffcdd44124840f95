"""Axis letters and numeric constants shared by the whole package.

One vocabulary, used in names (``q_BTHD``), einsum strings and the ``jaxtyping``
annotations (``Float[Array, "B T H D"]``) of the pure functions:

====  ==========================================
B     batch
T     query positions
S     key positions (T, or window + chunk in streaming)
H     heads
D     head dimension (also the memory's key and value dimension)
M     model dimension (``H * D``)
W     window: the L1 ring-buffer slots
C     training chunk of the memory scan
P     prefill / streaming chunk
V     vocabulary
L     layers
====  ==========================================
"""

from __future__ import annotations

# Finite stand-in for -inf in masked logits: exp() underflows to exactly 0 and a
# fully masked row stays finite instead of producing NaNs.
NEG_INF = -1e30
# Epsilon of the reference's key normalisation k / (|k| + eps).
KEY_NORM_EPS = 1e-5
# Epsilon of Infini-attention's read normalisation.
INFINI_EPS = 1e-5
