"""L2: the outer-product associative memory ``A`` (per batch and head, ``D x D``, float32).

Write rules for one written pair ``(k, v)``, ``k`` already L2-normalised:

* outer: ``A <- lam A + eta k (x) v``
* delta: ``A <- lam A + eta k (x) (v - k A)``
* wedge: ``A <- lam A + eta (k (x) v - v (x) k)``

Reads are ``r = q A``; the optional read normaliser carries ``z <- lam z + eta k`` and
reports ``q . z``. Every function here takes a *write stream*: ``k_BTHD[:, i]`` is the pair
written at step ``i`` and ``q_BTHD[:, i]`` the query read at step ``i``, either after that
write (``read_first=False``, the exact method) or before it (``read_first=True``, the
reference's streaming order). Eviction-fed training builds the stream with ``eviction_stream``
(step ``i`` writes token ``i`` and reads query ``i + W``).

Decay is carried as a per-step log decay ``g[i, h]`` (``log lam``, or 0 on padding and
invalid steps, whose pairs are zero, so they leave the state untouched) and powers are
``exp(sum g)`` of non-positive sums, in float32. Every matrix product states
``precision=HIGHEST``: a float32 einsum is TF32 on Hopper and bf16 passes on TPU otherwise.

Implementations (all return ``(r, qz, A, z)``; ``qz``/``z`` are None without ``z``):

* ``memory_recurrence``: the naive per-token ``lax.scan``, any rule (the oracle);
* ``memory_scan``: the exact chunked form, parallel over chunks. Within a chunk of ``C``
  steps it is decayed linear attention (outer; wedge as two key/value pairs per step in one
  widened scan; the normaliser as an extra value column) or the UT transform of the delta
  rule (a ``C x C`` unit-lower-triangular inverse); across chunks the states follow an
  associative scan of affine maps ``S -> Phi_c S + Psi_c`` (scalar ``Phi_c`` for the linear
  rules), or for delta a serial pass over the chunks handed in by the caller
  (``delta_states``: the GPU kernel of ``pallas_kernels/delta_states``). Saved for the
  backward pass: ``O(T (C + D))`` per head plus ``O(T/C)`` states, never a ``D x D`` state
  per token;
* ``chunk_start_scan``: the chunk-start scans of the reference (weighted sum, write-on-insert,
  delta error against the chunk-start state) and of the chunk-mean shortcut.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from tensorcache.blocks import from_blocks, to_blocks
from tensorcache.shapes import KEY_NORM_EPS

RULES = ("outer", "delta", "wedge")

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec: str, *xs) -> Array:
  """A float32 einsum that is float32 math on every platform."""
  return jnp.einsum(spec, *xs, precision=HIGHEST, preferred_element_type=f32)


def check_rule(rule: str) -> None:
  if rule not in RULES:
    raise ValueError(f"Unknown memory write rule {rule!r}; choose one of {RULES}.")


def write_pairs(k, v, rule: str, read=None) -> list[tuple[Array, Array]]:
  """The one place the write rules differ: the ``(key, value)`` pairs a write adds as
  ``sum key (x) value``. outer: ``[(k, v)]``; wedge: ``[(k, v), (v, -k)]``; delta:
  ``[(k, v - read(k))]``, the value's error against the current state (``read(k) = k A``;
  the chunked scan, which solves the delta rule's dependence within a chunk, never calls
  this for delta)."""
  check_rule(rule)
  if rule == "delta":
    return [(k, v - read(k))]
  return [(k, v)] + ([(v, -k)] if rule == "wedge" else [])


def _outer_sum(pairs) -> Array:
  """``sum key (x) value`` of ``[..., D]`` pairs: ``[..., D, D]``."""
  return sum(a[..., :, None] * b[..., None, :] for a, b in pairs)


def normalize_key(k: Float[Array, "... D"]) -> Float[Array, "... D"]:
  """``k / (|k| + 1e-5)`` in float32, as the reference normalises written keys."""
  k = k.astype(f32)
  sq = jnp.sum(k * k, axis=-1, keepdims=True)
  # A zero key (a masked step) maps to zero with a finite gradient: sqrt'(0) is infinite.
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return k / (norm + KEY_NORM_EPS)


def prepare(q, k, v, normalize_q: bool = False):
  """Raw compute-dtype ``q, k, v`` -> float32 queries (normalised if asked), keys ``k-hat``
  and values: what every implementation does first, inside the dispatch seam."""
  q = normalize_key(q) if normalize_q else q.astype(f32)
  return q, normalize_key(k), v.astype(f32)


def log_decay(log_lam_H: Float[Array, "H"], valid_T: Bool[Array, "T"]) -> Float[Array, "T H"]:
  """Per-step log decay: ``log lam`` where a pair is written, 0 where nothing is."""
  return jnp.where(valid_T[:, None], log_lam_H[None, :].astype(f32), 0.0)


def eviction_stream(q_BTHD, k_BTHD, v_BTHD, shift: int):
  """The write stream of eviction-fed training: step ``i`` writes token ``i`` and reads query
  ``i + shift``. Only ``T - shift`` steps (0 if ``shift >= T``) have a query to read: the
  last ``shift`` tokens are never evicted, so the stream stops there."""
  steps = max(q_BTHD.shape[1] - shift, 0)
  return q_BTHD[:, shift:], k_BTHD[:, :steps], v_BTHD[:, :steps]


def unshift_reads(r_BSHF: Float[Array, "B S H F"], T: int) -> Float[Array, "B T H F"]:
  """Reads of an ``S``-step eviction stream placed at positions ``T - S .. T - 1``: ``r[:, t]
  = r'[:, t - (T - S)]``, 0 before (positions with nothing evicted yet)."""
  return jnp.pad(r_BSHF, [(0, 0), (T - r_BSHF.shape[1], 0)] + [(0, 0)] * (r_BSHF.ndim - 2))


# ------------------------------------------------------------------ oracle


def memory_recurrence(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule: str, read_first: bool = False,
                      z_BHD=None):
  """Naive per-token scan: ``A_i = e^{g_i} A_{i-1} + eta * write_i``, read ``q_i A``
  (and ``z_i = e^{g_i} z_{i-1} + eta k_i``, read ``q_i . z``). Returns ``(r, qz, A, z)``."""
  check_rule(rule)
  eta = eta_H.astype(f32)[None, :, None, None]
  use_z = z_BHD is not None
  z0 = z_BHD.astype(f32) if use_z else jnp.zeros_like(A_BHDD[..., 0], f32)  # typed like A under shard_map

  def step(carry, xs):
    A, z = carry
    q, k, v, g = xs  # [B,H,D] x3, [H]
    lam = jnp.exp(g)[None, :, None, None]
    upd = _outer_sum(write_pairs(k, v, rule, lambda x: _mm("bhd,bhde->bhe", x, A)))
    A_new = lam * A + eta * upd
    z_new = lam[..., 0] * z + eta[..., 0] * k
    r = _mm("bhd,bhde->bhe", q, A if read_first else A_new)
    qz = jnp.sum(q * (z if read_first else z_new), axis=-1)
    return (A_new, z_new), (r, qz)

  xs = tuple(x.astype(f32).swapaxes(0, 1) for x in (q_BTHD, k_BTHD, v_BTHD)) + (g_TH.astype(f32),)
  (A, z), (r, qz) = jax.lax.scan(step, (A_BHDD.astype(f32), z0), xs, unroll=q_BTHD.shape[1] == 1)
  r, qz = r.swapaxes(0, 1), qz.swapaxes(0, 1)
  return r, (qz if use_z else None), A, (z if use_z else None)


# ------------------------------------------------------------------ chunked exact form


def _to_chunks(x_BTHF, C: int) -> Float[Array, "B H N C F"]:
  return to_blocks(x_BTHF.astype(f32), C).transpose(1, 3, 0, 2, 4)


def _from_chunks(x_BHNCF, T: int) -> Float[Array, "B T H F"]:
  return from_blocks(x_BHNCF.transpose(2, 0, 3, 1, 4), T)


def _chunk_log_decay(g_TH, C: int) -> Float[Array, "H N C"]:
  return to_blocks(g_TH.astype(f32), C, axis=0).transpose(2, 0, 1)


def _masked_decay(G_row, G_col, strict: bool) -> Float[Array, "H N C C"]:
  """``exp(G_row[i] - G_col[j])`` on the causal triangle (``j < i`` if strict), 0 elsewhere."""
  C = G_row.shape[-1]
  i = jnp.arange(C)
  mask = (i[None, :] < i[:, None]) if strict else (i[None, :] <= i[:, None])
  diff = G_row[..., :, None] - G_col[..., None, :]
  return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


@jax.custom_vjp
def _unit_lower_solve(L_XCC, B_XCF):
  """``L^-1 B`` for unit lower-triangular ``L`` (only its strict lower triangle is read).

  Forward: the inverse by block doubling (``_doubling_inverse``), then one product. Backward
  in closed form from the solution ``X``: ``dB = L^-T dX`` and ``dL = -dB X^T`` on the strict
  lower triangle; nothing saved but the inverse and ``X``, and no product of two inverses."""
  return _mm("...ij,...jf->...if", _doubling_inverse(L_XCC), B_XCF)


def _unit_lower_solve_fwd(L_XCC, B_XCF):
  inv = _doubling_inverse(L_XCC)
  X = _mm("...ij,...jf->...if", inv, B_XCF)
  return X, (inv, X)


def _unit_lower_solve_bwd(res, dX):
  inv, X = res
  dB = _mm("...ji,...jf->...if", inv, dX)
  return jnp.tril(-_mm("...if,...jf->...ij", dB, X), -1), dB


_unit_lower_solve.defvjp(_unit_lower_solve_fwd, _unit_lower_solve_bwd)


def _doubling_inverse(L_XCC):
  """Inverse of unit lower-triangular matrices (only the strict lower triangle is read), by
  block doubling: with the inverses of the two diagonal blocks known,
  ``[[L11, 0], [L21, L22]]^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]]``, ``log2 C``
  levels of batched matmuls (no sequential substitution)."""
  C = L_XCC.shape[-1]
  N = 1 << (C - 1).bit_length()
  lead = L_XCC.shape[:-2]
  if N != C:
    eye = jnp.eye(N, dtype=f32)
    L_XCC = eye.at[:C, :C].set(0.0) + jnp.pad(L_XCC, [(0, 0)] * len(lead) + [(0, N - C), (0, N - C)])
  inv = jnp.ones(lead + (N, 1, 1), f32)  # diagonal blocks of size b, here b = 1
  b = 1
  while b < N:
    n2 = N // (2 * b)
    blocks = jnp.diagonal(L_XCC.reshape(lead + (n2, 2 * b, n2, 2 * b)), axis1=-4, axis2=-2)
    L21 = jnp.moveaxis(blocks, -1, -3)[..., b:, :b]  # [..., n2, b, b]
    pair = inv.reshape(lead + (n2, 2, b, b))
    inv11, inv22 = pair[..., 0, :, :], pair[..., 1, :, :]
    off = -_mm("...ij,...jk,...kl->...il", inv22, L21, inv11)
    top = jnp.concatenate([inv11, jnp.zeros_like(inv11)], axis=-1)
    inv = jnp.concatenate([top, jnp.concatenate([off, inv22], axis=-1)], axis=-2)
    b *= 2
  return inv.reshape(lead + (N, N))[..., :C, :C]


def _scalar_states(G_last_HN, dS_BHNKV, S0_BHKV):
  """States entering each chunk and the final one, ``[B, H, N + 1, K, V]``, of
  ``S_{c+1} = e^{G_last[c]} S_c + dS_c`` (an associative scan over chunks)."""
  la = jnp.concatenate([jnp.zeros_like(G_last_HN[:, :1]), G_last_HN], axis=1)[None, :, :, None, None]
  S = jnp.concatenate([S0_BHKV.astype(f32)[:, :, None], dS_BHNKV], axis=2)

  def combine(a, b):
    return a[0] + b[0], jnp.exp(b[0]) * a[1] + b[1]

  return jax.lax.associative_scan(combine, (la, S), axis=2)[1]


@jax.custom_vjp
def _matrix_states(Phi_BHNKK, Psi_BHNKV, S0_BHKV):
  """As ``_scalar_states`` for ``S_{c+1} = Phi_c S_c + Psi_c`` with matrix ``Phi_c``.

  The backward is the adjoint recurrence run the other way, ``L_c = dS_c + Phi_c^T L_{c+1}``
  (itself an affine scan, ``_affine_scan`` on the reversed chunks), then ``dPhi_c = L_{c+1}
  S_c^T``, ``dPsi_c = L_{c+1}``, ``dS0 = L_0``: one more scan, not the transpose of every
  level of the forward one."""
  return _affine_scan(Phi_BHNKK, Psi_BHNKV, S0_BHKV)


def _affine_scan(Phi, Psi, S0):
  eye = jnp.broadcast_to(jnp.eye(Phi.shape[-1], dtype=f32), Phi[:, :, :1].shape)
  Phi = jnp.concatenate([eye, Phi], axis=2)
  Psi = jnp.concatenate([S0.astype(f32)[:, :, None], Psi], axis=2)

  def combine(a, b):
    return _mm("...ij,...jk->...ik", b[0], a[0]), _mm("...ij,...jk->...ik", b[0], a[1]) + b[1]

  return jax.lax.associative_scan(combine, (Phi, Psi), axis=2)[1]


def _matrix_states_fwd(Phi, Psi, S0):
  S = _affine_scan(Phi, Psi, S0)
  return S, (Phi, S)


def _matrix_states_bwd(res, dS):
  Phi, S = res
  rev = lambda x: jnp.flip(x, axis=2)
  L = rev(_affine_scan(rev(Phi.swapaxes(-1, -2)), rev(dS[:, :, :-1]), dS[:, :, -1]))  # L_0 .. L_N
  return _mm("bhnij,bhnkj->bhnik", L[:, :, 1:], S[:, :, :-1]), L[:, :, 1:], L[:, :, 0]


_matrix_states.defvjp(_matrix_states_fwd, _matrix_states_bwd)


def _prefix_maps(Phi_BHNKK, Psi_BHNKV):
  """The maps of the first ``c`` chunks together, ``S_c = P_c S_0 + Z_c`` for ``c = 0..N``
  (``[B, H, N + 1, K, K]`` and ``[B, H, N + 1, K, V]``): one chunk-state scan of the widened
  state ``[Z | P]`` from ``[0 | I]``, whose value columns evolve independently."""
  K, V = Phi_BHNKK.shape[-1], Psi_BHNKV.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(K, dtype=f32), Phi_BHNKK[:, :, 0].shape)
  start = jnp.concatenate([jnp.zeros_like(Psi_BHNKV[:, :, 0]), eye], axis=-1)
  ZP = _matrix_states(Phi_BHNKK, jnp.concatenate([Psi_BHNKV, jnp.zeros_like(Phi_BHNKK)], axis=-1), start)
  return ZP[..., V:], ZP[..., :V]


def _linear_chunks(q, pairs, g, eta_H, S0, read_first: bool):
  """Decayed linear attention with one or more ``(key, value)`` pairs written per step:
  ``S_i = e^{g_i} S_{i-1} + eta sum_p k_p,i (x) v_p,i``, ``o_i = q_i S_i`` (``S_{i-1}``
  with ``read_first``). Inputs are chunked ``[B, H, N, C, F]``; returns ``(o, S_final)``."""
  G = jnp.cumsum(g, axis=-1)
  G_read = G - g if read_first else G
  eta = eta_H.astype(f32)[:, None, None]
  decay = _masked_decay(G_read, G, strict=read_first) * eta[..., None]
  w_last = eta * jnp.exp(G[..., -1:] - G)  # [H,N,C]
  o = 0.0
  dS = 0.0
  for k, v in pairs:
    o = o + _mm("bhnij,bhnjv->bhniv", _mm("bhnik,bhnjk->bhnij", q, k) * decay, v)
    dS = dS + _mm("bhnjk,bhnjv->bhnkv", k * w_last[..., None], v)
  S = _scalar_states(G[..., -1], dS, S0)
  o = o + _mm("bhnik,bhnkv->bhniv", q * jnp.exp(G_read)[..., None], S[:, :, :-1])
  return o, S[:, :, -1]


def _delta_fields(k, v, g, eta_H):
  """The delta rule's chunk quantities by the UT transform. Within a chunk from state ``S``
  the written vectors ``w_i = eta (v_i - k_i A_{i-1})`` solve ``(I + M) W = eta V - eta
  e^{G_{i-1}} K S`` with ``M_ij = eta e^{G_{i-1} - G_j} <k_i, k_j>`` (``j < i``), so
  ``W = U - Wk S``, and the chunk leaves ``e^{G_C} S + Kw^T W`` with ``Kw = e^{G_C - G} K``.
  Returns ``(U, Wk, Kw)``."""
  G = jnp.cumsum(g, axis=-1)
  G_prev = G - g
  eta = eta_H.astype(f32)[:, None, None]
  C = g.shape[-1]
  M = _mm("bhnid,bhnjd->bhnij", k, k) * (_masked_decay(G_prev, G, strict=True) * eta[..., None])
  D = v.shape[-1]
  UWk = _unit_lower_solve(jnp.eye(C, dtype=f32) + M,
                          jnp.concatenate([v * eta[..., None], k * (eta * jnp.exp(G_prev))[..., None]], axis=-1))
  return UWk[..., :D], UWk[..., D:], k * jnp.exp(G[..., -1:] - G)[..., None]


def _delta_maps(U, Wk, Kw, g):
  """Each chunk's affine state map ``S -> Phi S + Psi``: ``Phi = e^{G_C} I - Kw^T Wk``,
  ``Psi = Kw^T U``."""
  eye = jnp.eye(Wk.shape[-1], dtype=f32)
  Phi = jnp.exp(jnp.sum(g, axis=-1))[None, :, :, None, None] * eye - _mm("bhncd,bhnce->bhnde", Kw, Wk)
  return Phi, _mm("bhncd,bhnce->bhnde", Kw, U)


def _delta_chunks(q, k, v, g, eta_H, A0, read_first: bool, states=None):
  """The delta rule's reads and final state from ``A0`` (``_delta_fields``): the states
  entering the chunks, then ``W = U - Wk S`` and ``A_i = e^{G_i} S + sum_{j<=i} e^{G_i - G_j}
  k_j (x) w_j`` per chunk. The states come from ``states(U, Wk, Kw, e^{G_C}, A0) -> (W, S_in,
  S_final)`` where given (a serial pass over the chunks, ``pallas_kernels/delta_states``),
  otherwise from the associative scan of the chunks' affine maps. ``A0`` may be a function of
  the stream's own map ``(Phi, Psi)`` (``memory_scan``): the serial pass then carries the
  widened state ``[Z | P]`` from ``[0 | I]`` (``S_c = Z_c + P_c A0``; the value columns
  evolve independently, and ``U``'s columns for ``P`` are zero), so ``W = W_Z + W_P A0``."""
  U, Wk, Kw = _delta_fields(k, v, g, eta_H)
  lam = jnp.exp(jnp.sum(g, axis=-1))
  if states is not None and callable(A0):
    V, K = U.shape[-1], Wk.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(K, dtype=f32), Wk.shape[:2] + (K, K))
    start = jnp.concatenate([jnp.zeros(Wk.shape[:2] + (K, V), f32), eye], axis=-1)
    W_zp, S_zp, last = states(jnp.concatenate([U, jnp.zeros_like(Wk)], axis=-1), Wk, Kw, lam, start)
    A0 = A0(last[..., V:], last[..., :V])
    W = W_zp[..., :V] + _mm("bhnck,bhkv->bhncv", W_zp[..., V:], A0)
    S_in = S_zp[..., :V] + _mm("bhnij,bhjk->bhnik", S_zp[..., V:], A0)
    S_last = last[..., :V] + _mm("bhij,bhjk->bhik", last[..., V:], A0)
  elif states is not None:
    W, S_in, S_last = states(U, Wk, Kw, lam, A0)
  else:
    Phi, Psi = _delta_maps(U, Wk, Kw, g)
    if callable(A0):  # the states as affine functions of A0, then A0 from the stream's map
      P, Z = _prefix_maps(Phi, Psi)
      S = Z + _mm("bhnij,bhjk->bhnik", P, A0(P[:, :, -1], Z[:, :, -1]))
    else:
      S = _matrix_states(Phi, Psi, A0)
    S_in, S_last = S[:, :, :-1], S[:, :, -1]
    W = U - _mm("bhncd,bhnde->bhnce", Wk, S_in)
  G = jnp.cumsum(g, axis=-1)
  G_read = G - g if read_first else G
  scores = _mm("bhnid,bhnjd->bhnij", q, k) * _masked_decay(G_read, G, strict=read_first)
  r = _mm("bhnij,bhnje->bhnie", scores, W) + _mm("bhnid,bhnde->bhnie", q * jnp.exp(G_read)[..., None], S_in)
  return r, S_last


def stream_map(k_BTHD, v_BTHD, g_TH, eta_H, chunk: int):
  """The delta rule's state map over a whole write stream, ``A_T = Phi A_0 + Psi``
  (``[B, H, D, D]`` each), from the chunked form's maps (``memory_scan``'s first phase)."""
  C = max(1, min(chunk, k_BTHD.shape[1]))
  k, g = _to_chunks(k_BTHD, C), _chunk_log_decay(g_TH, C)
  P, Z = _prefix_maps(*_delta_maps(*_delta_fields(k, _to_chunks(v_BTHD, C), g, eta_H), g))
  return P[:, :, -1], Z[:, :, -1]


def memory_scan(q_BTHD, k_BTHD, v_BTHD, g_TH, eta_H, A_BHDD, rule: str, chunk: int, read_first: bool = False,
                z_BHD=None, delta_states=None):
  """Exact per-token semantics of every rule in the chunked parallel form (see the module
  docstring). Same contract as ``memory_recurrence``: returns ``(r, qz, A, z)``.
  ``delta_states`` (delta rule only) replaces the scan of the chunks' affine maps with a
  serial pass over the chunks (``_delta_chunks``).

  For the delta rule ``A_BHDD`` may instead be a function ``(Phi, Psi) -> A_0`` of the
  stream's own state map (``stream_map``), called between the chunk maps and the reads: a
  shard of a sequence-parallel stream learns its entering state from the other shards' maps
  there, at no extra pass over its tokens."""
  check_rule(rule)
  if callable(A_BHDD) and rule != "delta":
    raise ValueError(f"An entering state given as a function of the stream's map needs rule='delta', not {rule!r}.")
  B, T, H, D = q_BTHD.shape
  C = max(1, min(chunk, T))
  q, k, v = (_to_chunks(x, C) for x in (q_BTHD, k_BTHD, v_BTHD))
  g = _chunk_log_decay(g_TH, C)
  use_z = z_BHD is not None
  qz = z = None
  if rule == "delta":
    r, A = _delta_chunks(q, k, v, g, eta_H, A_BHDD, read_first, delta_states)
    if use_z:
      qz, z = _linear_chunks(q, [(k, jnp.ones_like(k[..., :1]))], g, eta_H, z_BHD[..., None], read_first)
      qz, z = _from_chunks(qz, T)[..., 0], z[..., 0]
    return _from_chunks(r, T), qz, A, z
  # outer: one pair (k, v); wedge: (k, v) and (v, -k). The normaliser is one more value
  # column (1 for the key k, 0 for the key v) of the same scan.
  pairs = write_pairs(k, v, rule)
  S0 = A_BHDD
  if use_z:
    pairs = [(kp, jnp.concatenate([vp, jnp.full_like(vp[..., :1], float(i == 0))], -1))
             for i, (kp, vp) in enumerate(pairs)]
    S0 = jnp.concatenate([A_BHDD.astype(f32), z_BHD.astype(f32)[..., None]], axis=-1)
  o, S = _linear_chunks(q, pairs, g, eta_H, S0, read_first)
  o = _from_chunks(o, T)
  if use_z:
    return o[..., :D], o[..., D], S[..., :D], S[..., D]
  return o, None, S, None


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
  q, k, v = (to_blocks(x.astype(f32), C) for x in (q_BTHD, k_BTHD, v_BTHD))
  g = to_blocks(log_decay(log_lam_H, valid_T), C, axis=0)
  valid = to_blocks(valid_T, C, axis=0)[..., None]
  eta = eta_H.astype(f32)[None, :, None, None]
  use_z = z_BHD is not None
  z0 = z_BHD.astype(f32) if use_z else jnp.zeros((B, H, D), f32)

  def body(carry, xs):
    A, z = carry
    qc, kc, vc, gc, vm = xs
    r = _mm("bihd,bhde->bihe", qc, A)
    qz = _mm("bihd,bhd->bih", qc, z)
    if mean:
      wm = vm / jnp.maximum(vm.sum(0), 1)  # [C,1]: mean over the written steps
      kbar = (kc * wm[None, :, :, None]).sum(1)  # [B,H,D]
      vbar = (vc * wm[None, :, :, None]).sum(1)
      lam = jnp.exp(jnp.where(vm.any(), log_lam_H.astype(f32), 0.0))[None, :, None, None]
      upd = _outer_sum(write_pairs(kbar, vbar, rule, lambda x: _mm("bhd,bhde->bhe", x, A)))
      A = lam * A + eta * upd
      z = lam[..., 0] * z + eta[..., 0] * kbar
    else:
      G = jnp.cumsum(gc, axis=0)
      w = (jnp.exp(G[-1][None, :] - G) * vm)[None, :, :, None]  # [1,C,H,1]; empty steps write 0
      pairs = write_pairs(kc, vc, rule, lambda x: _mm("bjhd,bhde->bjhe", x, A))
      upd = sum(_mm("bjhd,bjhe->bhde", a * w, b) for a, b in pairs)
      lam = jnp.exp(G[-1])[None, :, None, None]
      A = lam * A + eta * upd
      z = lam[..., 0] * z + eta[..., 0] * (kc * w).sum(1)
    return (A, z), (r, qz)

  (A, z), (r, qz) = jax.lax.scan(body, (A_BHDD.astype(f32), z0), (q, k, v, g, valid))
  r, qz = from_blocks(r, T), from_blocks(qz, T)
  return r, (qz if use_z else None), A, (z if use_z else None)
