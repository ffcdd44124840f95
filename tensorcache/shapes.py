"""Axis letters, array aliases and numeric constants shared by the whole package.

One vocabulary, used in names (``q_BTHD``), einsum strings and annotations:

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

import jax
from jaxtyping import Array, Float, Int

# Finite stand-in for -inf in masked logits: exp() underflows to exactly 0 and a
# fully masked row stays finite instead of producing NaNs.
NEG_INF = -1e30
# Epsilon of the reference's key normalisation k / (|k| + eps).
KEY_NORM_EPS = 1e-5
# Epsilon of Infini-attention's read normalisation.
INFINI_EPS = 1e-5

Tokens = Int[Array, "B T"]
Positions = Int[Array, "T"]
Heads = Float[Array, "B T H D"]
Memory = Float[Array, "B H D D"]
MemoryNorm = Float[Array, "B H D"]
PerHead = Float[Array, "H"]
PRNGKey = jax.Array
