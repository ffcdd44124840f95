"""L2: the outer-product associative memory ``A`` (per batch and head, ``D x D``, float32).

Write rules for one written pair ``(k, v)``, ``k`` already L2-normalised:

* outer: ``A <- lam A + eta k (x) v``
* delta: ``A <- lam A + eta k (x) (v - k A)``
* wedge: ``A <- lam A + eta (k (x) v - v (x) k)``

Reads are ``r = q A``. Every function here takes a *write stream*: ``k_BTHD[:, i]`` is the pair
written at step ``i`` and ``q_BTHD[:, i]`` the query read at step ``i``, either after that
write (``read_first=False``, the exact method) or before it (``read_first=True``, the
reference's streaming order). Eviction-fed training aligns the stream by ``shift_queries``
(step ``i`` writes token ``i`` and reads query ``i + W``).

Decay is carried as a per-step log decay ``g[i, h]`` (``log lam``, or 0 on padding and
invalid steps, whose pairs are zero, so they leave the state untouched) and powers are
``exp(sum g)`` in float32.

Implementations:

* ``memory_recurrence``: the naive per-token ``lax.scan``, any rule (the oracle);
* ``memory_scan``: chunked. outer and wedge use the chunked decayed linear attention
  (``O(T*C*D + T*D^2)``); delta is the exact per-token scan;
* ``chunk_start_scan``: the chunk-start scans of the reference (weighted sum, write-on-insert,
  delta error against the chunk-start state) and of the chunk-mean shortcut.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from tensorcache.shapes import KEY_NORM_EPS

RULES = ("outer", "delta", "wedge")

f32 = jnp.float32


def check_rule(rule: str) -> None:
  if rule not in RULES:
    raise ValueError(f"Unknown memory write rule {rule!r}; choose one of {RULES}.")


def normalize_key(k: Float[Array, "... D"]) -> Float[Array, "... D"]:
  """``k / (|k| + 1e-5)`` in float32, as the reference normalises written keys."""
  k = k.astype(f32)
  return k / (jnp.linalg.norm(k, axis=-1, keepdims=True) + KEY_NORM_EPS)


def log_decay(log_lam_H: Float[Array, "H"], valid_T: Bool[Array, "T"]) -> Float[Array, "T H"]:
  """Per-step log decay: ``log lam`` where a pair is written, 0 where nothing is."""
  return jnp.where(valid_T[:, None], log_lam_H[None, :].astype(f32), 0.0)


def shift_queries(x_BTHD: Float[Array, "B T H D"], shift: int) -> Float[Array, "B T H D"]:
  """``x'[:, i] = x[:, i + shift]`` (zeros past the end): aligns queries with evictions."""
  if shift == 0:
    return x_BTHD
  T = x_BTHD.shape[1]
  return jnp.pad(x_BTHD[:, shift:], ((0, 0), (0, min(shift, T)), (0, 0), (0, 0)))


def unshift_reads(r_BTHD: Float[Array, "B T H D"], shift: int) -> Float[Array, "B T H D"]:
  """Inverse of ``shift_queries`` on the outputs: ``r[:, t] = r'[:, t - shift]``, 0 for t < shift."""
  if shift == 0:
    return r_BTHD
  T = r_BTHD.shape[1]
  return jnp.pad(r_BTHD[:, : max(T - shift, 0)], ((0, 0), (min(shift, T), 0), (0, 0), (0, 0)))


def _pad_time(x, n):
  return jnp.pad(x, ((0, 0), (0, n)) + ((0, 0),) * (x.ndim - 2)) if n else x


# ------------------------------------------------------------------ oracle


def memory_recurrence(
    q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule: str, read_first: bool = False
) -> tuple[Float[Array, "B T H D"], Float[Array, "B H D D"]]:
  """Naive per-token scan: ``A_i = e^{g_i} A_{i-1} + eta * write_i``, read ``q_i A``."""
  check_rule(rule)
  eta = eta_H.astype(f32)[None, :, None, None]

  def step(A, xs):
    q, k, v, g = xs  # [B,H,D] x3, [H]
    lam = jnp.exp(g)[None, :, None, None]
    if rule == "outer":
      upd = k[..., :, None] * v[..., None, :]
    elif rule == "wedge":
      upd = k[..., :, None] * v[..., None, :] - v[..., :, None] * k[..., None, :]
    else:
      err = v - jnp.einsum("bhd,bhde->bhe", k, A)
      upd = k[..., :, None] * err[..., None, :]
    A_new = lam * A + eta * upd
    r = jnp.einsum("bhd,bhde->bhe", q, A if read_first else A_new)
    return A_new, r

  xs = tuple(x.astype(f32).swapaxes(0, 1) for x in (q_BTHD, k_BTHD, v_BTHD)) + (g_TH,)
  A, r = jax.lax.scan(step, A_BHDD.astype(f32), xs)
  return r.swapaxes(0, 1), A


# ------------------------------------------------------------------ chunked exact forms


def decayed_linear_attention(
    q_BTHK, k_BTHK, v_BTHV, g_TH, eta_H, S_BHKV, chunk: int, read_first: bool = False
) -> tuple[Float[Array, "B T H V"], Float[Array, "B H K V"]]:
  """Chunked form of ``S_i = e^{g_i} S_{i-1} + eta k_i (x) v_i``, ``o_i = q_i S_i``.

  Within a chunk (cumulative log decay ``G``): ``o_i = e^{G_i} q_i S_c + eta sum_{j<=i}
  e^{G_i - G_j} <q_i, k_j> v_j``; across chunks ``S_{c+1} = e^{G_last} S_c + eta sum_j
  e^{G_last - G_j} k_j (x) v_j``. ``read_first`` reads ``S_{i-1}`` instead (strict mask).
  """
  B, T, H, K = q_BTHK.shape
  Vd = v_BTHV.shape[-1]
  C = max(1, min(chunk, T))
  n = -(-T // C)
  pad = n * C - T
  q, k, v = (_pad_time(x.astype(f32), pad).reshape(B, n, C, H, -1).swapaxes(0, 1) for x in (q_BTHK, k_BTHK, v_BTHV))
  g = jnp.pad(g_TH.astype(f32), ((0, pad), (0, 0))).reshape(n, C, H)
  eta = eta_H.astype(f32)
  i = jnp.arange(C)
  causal = (i[None, :] < i[:, None]) if read_first else (i[None, :] <= i[:, None])

  def body(S, xs):
    qc, kc, vc, gc = xs  # [B,C,H,*], [C,H]
    G = jnp.cumsum(gc, axis=0)  # [C,H]
    G_read = G - gc if read_first else G  # decay up to the read point
    diff = G_read[:, None, :] - G[None, :, :]  # [C_i, C_j, H]
    decay = jnp.where(causal[:, :, None], jnp.exp(jnp.where(causal[:, :, None], diff, 0.0)), 0.0)
    scores = jnp.einsum("bihk,bjhk->bhij", qc, kc) * (eta[None, :, None, None] * decay.transpose(2, 0, 1)[None])
    o = jnp.einsum("bhij,bjhv->bihv", scores, vc)
    o += jnp.einsum("bihk,bhkv->bihv", qc * jnp.exp(G_read)[None, :, :, None], S)
    w = eta[None, :] * jnp.exp(G[-1][None, :] - G)  # [C,H]
    S = jnp.exp(G[-1])[None, :, None, None] * S + jnp.einsum("bjhk,bjhv->bhkv", kc * w[None, :, :, None], vc)
    return S, o

  S, o = jax.lax.scan(body, S_BHKV.astype(f32), (q, k, v, g))
  return o.swapaxes(0, 1).reshape(B, n * C, H, Vd)[:, :T], S


def delta_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, read_first: bool = False):
  """Exact delta rule: the per-token recurrence (a chunked WY/UT form can replace it)."""
  return memory_recurrence(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, "delta", read_first)


def memory_scan(
    q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule: str, chunk: int, read_first: bool = False
) -> tuple[Float[Array, "B T H D"], Float[Array, "B H D D"]]:
  """Exact per-token semantics of every rule, in the fastest XLA form available."""
  check_rule(rule)
  if rule == "delta":
    return delta_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, read_first)
  r, A = decayed_linear_attention(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, chunk, read_first)
  if rule == "wedge":  # k (x) v - v (x) k: a second linear attention with keys and values swapped.
    r2, A2 = decayed_linear_attention(
        q_BTHD, v_BTHD, k_BTHD, g_TH, eta_H, jnp.zeros_like(A), chunk, read_first)
    r, A = r - r2, A - A2
  return r, A


def normalizer_scan(q_BTHD, k_BTHD, g_TH, eta_H, z_BHD, chunk: int, read_first: bool = False):
  """Read normaliser ``q . z`` with ``z <- lam z + eta k`` (rule-independent)."""
  ones = jnp.ones(k_BTHD.shape[:-1] + (1,), f32)
  qz, z = decayed_linear_attention(q_BTHD, k_BTHD, ones, g_TH, eta_H, z_BHD[..., None], chunk, read_first)
  return qz[..., 0], z[..., 0]


# ------------------------------------------------------------------ chunk-start scans


def chunk_start_scan(
    q_BTHD, k_BTHD, v_BTHD, log_lam_H, valid_T, eta_H, A_BHDD, rule: str, chunk: int, mean: bool,
    z_BHD=None,
):
  """Every step of chunk ``c`` reads the chunk-start state ``A_c`` (and ``q . z_c``).

  ``mean=False`` (reference): ``A_{c+1} = e^{G_last} A_c + eta sum_j e^{G_last-G_j} k_j (x) u_j``
  with ``u_j = v_j - k_j A_c`` for delta (error against the chunk-start state).
  ``mean=True`` (the shortcut): one write of the chunk means, ``A_{c+1} = lam A_c + eta
  kbar (x) ubar``, decay applied once per chunk; it contains ``C^2 - C`` cross-token terms.
  Steps with ``valid_T`` false write nothing and do not decay (nothing evicted yet).
  Returns ``(r, qz_or_None, A, z_or_None)``.
  """
  check_rule(rule)
  B, T, H, D = q_BTHD.shape
  C = max(1, min(chunk, T))
  n = -(-T // C)
  pad = n * C - T
  q, k, v = (_pad_time(x.astype(f32), pad).reshape(B, n, C, H, D).swapaxes(0, 1) for x in (q_BTHD, k_BTHD, v_BTHD))
  g = jnp.pad(log_decay(log_lam_H, valid_T), ((0, pad), (0, 0))).reshape(n, C, H)
  valid = jnp.pad(valid_T, (0, pad)).reshape(n, C, 1)
  eta = eta_H.astype(f32)[None, :, None, None]
  use_z = z_BHD is not None
  z0 = z_BHD.astype(f32) if use_z else jnp.zeros((B, H, D), f32)

  def body(carry, xs):
    A, z = carry
    qc, kc, vc, gc, vm = xs
    r = jnp.einsum("bihd,bhde->bihe", qc, A)
    qz = jnp.einsum("bihd,bhd->bih", qc, z)
    if mean:
      wm = vm / jnp.maximum(vm.sum(0), 1)  # [C,1]: mean over the written steps
      kbar = (kc * wm[None, :, :, None]).sum(1)  # [B,H,D]
      vbar = (vc * wm[None, :, :, None]).sum(1)
      lam = jnp.exp(jnp.where(vm.any(), log_lam_H.astype(f32), 0.0))[None, :, None, None]
      if rule == "delta":
        vbar = vbar - jnp.einsum("bhd,bhde->bhe", kbar, A)
      upd = kbar[..., :, None] * vbar[..., None, :]
      if rule == "wedge":
        upd = upd - vbar[..., :, None] * kbar[..., None, :]
      A = lam * A + eta * upd
      z = lam[..., 0] * z + eta[..., 0] * kbar
    else:
      G = jnp.cumsum(gc, axis=0)
      w = (jnp.exp(G[-1][None, :] - G) * vm)[None, :, :, None]  # [1,C,H,1]; empty steps write 0
      if rule == "delta":
        vc = vc - jnp.einsum("bjhd,bhde->bjhe", kc, A)
      upd = jnp.einsum("bjhd,bjhe->bhde", kc * w, vc)
      if rule == "wedge":
        upd = upd - jnp.einsum("bjhd,bjhe->bhde", vc * w, kc)
      lam = jnp.exp(G[-1])[None, :, None, None]
      A = lam * A + eta * upd
      z = lam[..., 0] * z + eta[..., 0] * (kc * w).sum(1)
    return (A, z), (r, qz)

  (A, z), (r, qz) = jax.lax.scan(body, (A_BHDD.astype(f32), z0), (q, k, v, g, valid))
  r = r.swapaxes(0, 1).reshape(B, n * C, H, D)[:, :T]
  qz = qz.swapaxes(0, 1).reshape(B, n * C, H)[:, :T]
  return r, (qz if use_z else None), A, (z if use_z else None)
