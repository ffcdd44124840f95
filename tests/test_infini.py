"""Infini-attention's streaming chunk (``infini.stream``) against a per-token loop in numpy
that shares no code with it: any segment length, chunk length and starting offset, from a
random committed and pending state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import infini
from tensorcache.cache import InfiniState
from tensorcache.shapes import INFINI_EPS

from _util import assert_close

B, H, D = 2, 2, 8


def _phi(x):
  return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # ELU + 1


def _per_token(q, k, v, p0, rule, segment, st):
  """Read, write against the committed state into the pending sums, commit after a
  segment's last position; float64, one token at a time."""
  M, z, Mp, zp = (np.array(x, np.float64) for x in st)
  out = np.zeros(q.shape)
  for t in range(q.shape[1]):
    fq, fk = _phi(q[:, t].astype(np.float64)), _phi(k[:, t].astype(np.float64))  # [B, H, D]
    out[:, t] = np.einsum("bhd,bhde->bhe", fq, M) / (np.einsum("bhd,bhd->bh", fq, z)[..., None] + INFINI_EPS)
    u = v[:, t].astype(np.float64)
    if rule == "delta":
      u = u - np.einsum("bhd,bhde->bhe", fk, M) / (np.einsum("bhd,bhd->bh", fk, z)[..., None] + INFINI_EPS)
    Mp = Mp + fk[..., :, None] * u[..., None, :]
    zp = zp + fk
    if (p0 + t + 1) % segment == 0:
      M, z, Mp, zp = M + Mp, z + zp, np.zeros_like(Mp), np.zeros_like(zp)
  return out, (M, z, Mp, zp)


@pytest.mark.parity
@pytest.mark.parametrize("rule", ["linear", "delta"])
@pytest.mark.parametrize("segment,P,p0", [(1, 5, 3), (3, 1, 4), (3, 7, 1), (8, 5, 6), (8, 17, 0), (8, 17, 11)])
def test_stream_chunk_equals_per_token_loop(rule, segment, P, p0):
  keys = jax.random.split(jax.random.PRNGKey(100 * segment + 10 * P + p0), 7)
  q, k, v = (jax.random.normal(kk, (B, P, H, D)) for kk in keys[:3])
  st = InfiniState(0.3 * jax.random.normal(keys[3], (B, H, D, D)),
                   jax.random.uniform(keys[4], (B, H, D), minval=1, maxval=3),
                   0.3 * jax.random.normal(keys[5], (B, H, D, D)), jax.random.uniform(keys[6], (B, H, D), maxval=2))
  r, new = jax.jit(infini.stream, static_argnums=(4, 5))(q, k, v, p0 + jnp.arange(P), rule, segment, st)
  want, want_state = _per_token(np.asarray(q), np.asarray(k), np.asarray(v), p0, rule, segment, st)
  assert_close(r, want, 1e-5, "reads")
  for name, got, ref in zip(("M", "z", "M_pend", "z_pend"), new, want_state):
    if np.any(ref != 0):
      assert_close(got, ref, 1e-5, name)
    else:  # committed at the chunk's last position: nothing pending
      np.testing.assert_array_equal(got, 0.0, err_msg=name)
