"""L2 memory (docs/method.md §1, §5, §6.1, §7): the chunked scans against per-token oracles.

Inputs are fresh ``jax.random`` draws (never zeros): random initial states, keys already
L2-normalised as the model writes them, decays and rates drawn per head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import dispatch, mechanisms, memory
from tensorcache.config import ModelConfig

from _util import assert_close, assert_differs, normal

B, T, H, D, C = 2, 37, 2, 8, 4  # T is not a multiple of C
RULES = ("outer", "delta", "wedge")


def _stream(seed: int, T: int = T, D: int = D, invalid: bool = True):
  """A random write stream: q, normalised k, v, per-head log decay / rate, a nonzero A0.

  Invalid steps (nothing evicted yet) carry log decay 0 and a zero key, as the model's
  evicted stream does (empty ring slots hold zeros).
  """
  ks = jax.random.split(jax.random.PRNGKey(seed), 7)
  q = jax.random.normal(ks[0], (B, T, H, D))
  k = memory.normalize_key(jax.random.normal(ks[1], (B, T, H, D)))
  v = jax.random.normal(ks[2], (B, T, H, D))
  lam = jax.random.uniform(ks[3], (H,), minval=0.7, maxval=0.99)
  eta = jax.random.uniform(ks[4], (H,), minval=0.1, maxval=0.5)
  A0 = 0.3 * jax.random.normal(ks[5], (B, H, D, D))
  valid = jax.random.bernoulli(ks[6], 0.75, (T,)) if invalid else jnp.ones((T,), bool)
  if invalid:
    valid = valid.at[:3].set(False).at[T // 2].set(False)
    k = k * valid[None, :, None, None]
  return q, k, v, jnp.log(lam), eta, A0, valid


# ------------------------------------------------------------------ small pure functions


def test_normalize_key_unit_norm_and_float32():
  k = normal(0, (3, 5, 16), 3.0).astype(jnp.bfloat16)
  kn = memory.normalize_key(k)
  assert kn.dtype == jnp.float32
  k32 = np.asarray(k, np.float64)
  norms = np.linalg.norm(k32, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(kn), k32 / (norms + 1e-5), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(kn), axis=-1), 1.0, atol=1e-5)


def test_log_decay_zero_on_invalid_steps():
  log_lam = jnp.log(jax.random.uniform(jax.random.PRNGKey(0), (H,), minval=0.5, maxval=0.99))
  valid = jnp.array([False, True, True, False, True])
  g = np.asarray(memory.log_decay(log_lam, valid))
  assert g.shape == (5, H)
  np.testing.assert_array_equal(g[~np.asarray(valid)], 0.0)
  np.testing.assert_array_equal(g[np.asarray(valid)], np.broadcast_to(np.asarray(log_lam), (3, H)))


@pytest.mark.parametrize("shift", [0, 1, 8, 36, 37, 50])
def test_eviction_stream_and_unshift_reads(shift):
  q, k, v = (normal(s, (B, T, H, D)) for s in (1, 2, 3))
  qs, ks, vs = memory.eviction_stream(q, k, v, shift)
  n = max(T - shift, 0)
  assert qs.shape == ks.shape == vs.shape == (B, n, H, D)
  np.testing.assert_array_equal(qs, q[:, shift:])  # step i reads query i + shift ...
  np.testing.assert_array_equal(ks, k[:, :n])  # ... after writing token i
  np.testing.assert_array_equal(vs, v[:, :n])
  back = memory.unshift_reads(qs, T)
  assert back.shape == q.shape
  np.testing.assert_array_equal(back[:, T - n:], q[:, T - n:])
  np.testing.assert_array_equal(back[:, :T - n], 0.0)


# ------------------------------------------------------------------ chunked exact scan


def _numpy_recurrence(q, k, v, g, eta, A0, z0, rule, read_first):
  """docs/method.md §4 by hand in float64, one token at a time; shares no code with ``memory``."""
  q, k, v, A, z = (np.asarray(x, np.float64) for x in (q, k, v, A0, z0))
  lam = np.exp(np.asarray(g, np.float64))  # [T, H]
  eta = np.asarray(eta, np.float64)[None, :]
  r, qz = np.zeros_like(q), np.zeros(q.shape[:-1])
  for t in range(q.shape[1]):
    if read_first:
      r[:, t] = np.einsum("bhd,bhde->bhe", q[:, t], A)
      qz[:, t] = np.einsum("bhd,bhd->bh", q[:, t], z)
    kt, vt = k[:, t], v[:, t]
    if rule == "delta":
      vt = vt - np.einsum("bhd,bhde->bhe", kt, A)
    upd = np.einsum("bhd,bhe->bhde", kt, vt)
    if rule == "wedge":
      upd = upd - np.einsum("bhd,bhe->bhde", vt, kt)
    A = lam[t][None, :, None, None] * A + eta[..., None, None] * upd
    z = lam[t][None, :, None] * z + eta[..., None] * kt
    if not read_first:
      r[:, t] = np.einsum("bhd,bhde->bhe", q[:, t], A)
      qz[:, t] = np.einsum("bhd,bhd->bh", q[:, t], z)
  return r, qz, A, z


@pytest.mark.parity
@pytest.mark.parametrize("chunk", [C, 5, 64], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("read_first", [False, True], ids=["write_then_read", "read_first"])
@pytest.mark.parametrize("rule", RULES)
def test_memory_scan_equals_per_token_recurrence(rule, read_first, chunk):
  """The chunked form (UT transform for delta, widened scans for wedge and the normaliser)
  equals the per-token ``lax.scan`` and an independent float64 loop, with and without the
  normaliser; T = 37 is a multiple of no chunk, and chunk 64 > T is a single chunk."""
  q, k, v, log_lam, eta, A0, valid = _stream(seed=100 * RULES.index(rule) + 10 * read_first + chunk)
  z0 = normal(7 + chunk, (B, H, D), 0.3)
  g = memory.log_decay(log_lam, valid)
  scan = jax.jit(memory.memory_scan, static_argnums=(6, 7, 8))
  r_np, qz_np, A_np, z_np = _numpy_recurrence(q, k, v, g, eta, A0, z0, rule, read_first)
  r, qz, A, z = scan(q, k, v, g, eta, A0, rule, chunk, read_first, z0)
  assert r.shape == (B, T, H, D) and A.shape == (B, H, D, D) and qz.shape == (B, T, H) and z.shape == (B, H, D)
  assert all(x.dtype == jnp.float32 for x in (r, qz, A, z))
  for got, want, what in ((r, r_np, "reads"), (qz, qz_np, "q . z"), (A, A_np, "final state"), (z, z_np, "z")):
    assert_close(got, want, 1e-5, f"chunked vs float64 loop: {what}")
  r_ref, qz_ref, A_ref, z_ref = memory.memory_recurrence(q, k, v, g, eta, A0, rule, read_first, z0)
  assert_close(r_ref, r_np, 1e-5, "per-token scan vs float64 loop")
  assert_close(r, r_ref, 1e-5, "chunked vs per-token scan")
  # Without a normaliser: the same memory, and None for q . z and z.
  r2, qz2, A2, z2 = scan(q, k, v, g, eta, A0, rule, chunk, read_first, None)
  assert qz2 is None and z2 is None
  assert_close(r2, r_np, 1e-5, "reads without z")
  assert_close(A2, A_np, 1e-5, "state without z")
  # The tolerance discriminates: the other read order and a zero initial state are far off.
  assert_differs(_numpy_recurrence(q, k, v, g, eta, A0, z0, rule, not read_first)[0], r_np, what="read order")
  assert_differs(_numpy_recurrence(q, k, v, g, eta, 0 * A0, z0, rule, read_first)[0], r_np, what="initial state")


@pytest.mark.parity
@pytest.mark.parametrize("read_first", [False, True], ids=["write_then_read", "read_first"])
@pytest.mark.parametrize("rule", RULES)
def test_memory_scan_gradients_equal_per_token_recurrence(rule, read_first):
  """Gradients through the chunked form (inverse, associative scan) equal those of the
  per-token recurrence for every input: q, raw k, v, log decay, rate, A0, z0."""
  q, _, v, log_lam, eta, A0, _ = _stream(seed=40 + RULES.index(rule) + 5 * read_first, invalid=False)
  k = normal(41, (B, T, H, D))  # raw keys: normalised inside, as the seam does
  z0 = normal(42, (B, H, D), 0.3)
  ct_r, ct_qz = normal(43, (B, T, H, D)), normal(44, (B, T, H))
  valid = jnp.arange(T) >= 3

  def loss(fn, q, k, v, log_lam, eta, A0, z0):
    q, k, v = memory.prepare(q, k, v)
    r, qz, A, z = fn(q, k, v, memory.log_decay(log_lam, valid), eta, A0, z0)
    return jnp.sum(r * ct_r) + jnp.sum(qz * ct_qz) + jnp.sum(A ** 2) + jnp.sum(z ** 2)

  args = (q, k, v, log_lam, eta, A0, z0)
  argnums = tuple(range(len(args)))
  oracle = lambda *a: memory.memory_recurrence(*a[:6], rule, read_first, a[6])
  chunked = lambda *a: memory.memory_scan(*a[:6], rule, C, read_first, a[6])
  want = jax.grad(lambda *a: loss(oracle, *a), argnums)(*args)
  got = jax.jit(jax.grad(lambda *a: loss(chunked, *a), argnums))(*args)
  for name, x, y in zip(("q", "k", "v", "log_lam", "eta", "A0", "z0"), got, want):
    assert_close(x, y, 1e-5, f"d/d{name}")


def test_memory_scan_saves_no_state_per_token():
  """The backward pass of the chunked delta rule keeps chunk-boundary states only: the
  residuals of ``vjp`` hold far fewer than one ``D x D`` state per token."""
  Tn, Dn, Cn = 256, 32, 32
  q, k, v = (normal(s, (1, Tn, 1, Dn)) for s in (50, 51, 52))
  g = jnp.full((Tn, 1), jnp.log(0.95))
  eta, A0 = jnp.array([0.3]), normal(53, (1, 1, Dn, Dn), 0.1)

  def residual_floats(fn):
    def residuals(q, k, v):
      return jax.vjp(lambda q, k, v: fn(q, memory.normalize_key(k), v, g, eta, A0, "delta")[0], q, k, v)[1]
    return sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(residuals, q, k, v)))

  chunked = residual_floats(lambda *a: memory.memory_scan(*a, Cn))
  per_token = residual_floats(memory.memory_recurrence)
  assert per_token >= Tn * Dn * Dn  # the oracle keeps a state per token
  assert chunked < 8 * Tn * (Cn + Dn) + 4 * (Tn // Cn + 1) * Dn * Dn * 2, chunked


@pytest.mark.parametrize("impl", ["xla", "reference"])
@pytest.mark.parametrize("read_first", [False, True])
def test_entering_state_as_a_function_of_the_stream_map(read_first, impl):
  """The delta rule given ``A0 = f(Phi, Psi)`` of its own stream map (how a sequence shard
  learns its entering state) equals the recurrence started from that state, reads, ``q . z``,
  final state and gradients; the map is exact (``A_T = Phi A0 + Psi`` for another A0); a
  linear rule refuses the function."""
  q, k, v, log_lam, eta, A1, valid = _stream(71)
  v = jnp.concatenate([v, v[..., :3]], axis=-1)  # value width 11 != key width 8
  A1 = jnp.concatenate([A1, A1[..., :3]], axis=-1)
  g = memory.log_decay(log_lam, valid)
  z0 = normal(72, (B, H, D))
  f = lambda Phi, Psi: 0.5 * jnp.tanh(_mm(Phi, A1)) + 0.3 * Psi  # depends on both parts of the map

  def via_function(q, k, v):
    return dispatch.l2_scan(q, k, v, g, eta, f, z0, rule="delta", chunk=C, read_first=read_first, impl=impl)

  def via_state(q, k, v):
    kn = memory.normalize_key(k)
    A0 = f(*memory.stream_map(kn, v, g, eta, C))
    return memory.memory_recurrence(q, kn, v, g, eta, A0, "delta", read_first, z0)

  got, want = (jax.vjp(fn, q, k, v) for fn in (via_function, via_state))
  for name, a, b in zip(("r", "qz", "A", "z"), got[0], want[0]):
    assert_close(a, b, 1e-5, name)
  cot = tuple(normal(73 + i, x.shape) for i, x in enumerate(want[0]))
  for name, a, b in zip("qkv", got[1](cot), want[1](cot)):
    assert_close(a, b, 1e-5, f"d{name}")
  kn = memory.normalize_key(k)
  Phi, Psi = memory.stream_map(kn, v, g, eta, C)
  final = memory.memory_recurrence(q, kn, v, g, eta, A1, "delta", read_first)[2]
  assert_close(_mm(Phi, A1) + Psi, final, 1e-5, "stream map")
  with pytest.raises(ValueError, match="rule='delta'"):
    dispatch.l2_scan(q, k, v, g, eta, f, rule="outer", chunk=C, impl=impl)


def _mm(a, b):
  return jnp.einsum("bhij,bhjk->bhik", a, b, precision=jax.lax.Precision.HIGHEST)


def test_unit_lower_solve_is_exact():
  """The UT transform's solve (block-doubling inverse, closed-form backward) against
  ``solve_triangular`` and its autodiff, on sizes that are not powers of two; only the strict
  lower triangle of ``L`` is read, so only it gets a gradient."""
  for n in (2, 3, 8, 13):
    L = jnp.tril(normal(n, (2, n, n), 0.5), -1) + jnp.eye(n)
    B = normal(n + 1, (2, n, 5))
    ct = normal(n + 2, (2, n, 5))
    oracle = lambda L, B: jax.scipy.linalg.solve_triangular(jnp.tril(L, -1) + jnp.eye(n), B, lower=True)
    X = jax.jit(memory._unit_lower_solve)(L, B)
    np.testing.assert_allclose(np.asarray(L) @ np.asarray(X), np.asarray(B), atol=1e-5)
    loss = lambda f: (lambda L, B: jnp.sum(f(L, B) * ct))
    dL, dB = jax.grad(loss(memory._unit_lower_solve), argnums=(0, 1))(L, B)
    dL_ref, dB_ref = jax.grad(loss(oracle), argnums=(0, 1))(L, B)
    assert_close(dL, dL_ref, 1e-5, f"dL n={n}")
    assert_close(dB, dB_ref, 1e-5, f"dB n={n}")


def test_invalid_steps_leave_state_untouched():
  """A step with log decay 0 and a zero key neither decays nor writes (all rules)."""
  q, k, v, log_lam, eta, A0, _ = _stream(seed=3, invalid=False)
  valid = jnp.zeros((T,), bool)
  g = memory.log_decay(log_lam, valid)
  scan = jax.jit(memory.memory_scan, static_argnums=(6, 7))
  for rule in RULES:
    r, _, A, _ = scan(q, jnp.zeros_like(k), v, g, eta, A0, rule, C)
    assert_close(A, A0, 1e-6, rule)
    assert_close(r, jnp.einsum("bthd,bhde->bthe", q, A0), 1e-5, rule)


# ------------------------------------------------------------------ chunk-start scans (§6.1, §7)


def _chunk_start_oracle(q, k, v, log_lam, valid, eta, A0, z0, rule, chunk):
  """docs/method.md §6.1 by hand, float64: every step of chunk c reads A_c (and q . z_c);
  ``A_{c+1} = lam^n A_c + eta sum_j lam^(n-1-j) k_j (x) u_j`` with the delta error
  ``u_j = v_j - k_j A_c`` against the chunk-start state. A step that is not valid neither
  writes nor decays (``n`` and the exponents count valid steps only)."""
  q, k, v, A, z = (np.asarray(x, np.float64) for x in (q, k, v, A0, z0))
  lam = np.exp(np.asarray(log_lam, np.float64))
  eta = np.asarray(eta, np.float64)
  valid = np.asarray(valid)
  T = q.shape[1]
  r = np.zeros_like(q)
  qz = np.zeros(q.shape[:-1])
  for start in range(0, T, chunk):
    steps = range(start, min(start + chunk, T))
    for t in steps:
      r[:, t] = np.einsum("bhd,bhde->bhe", q[:, t], A)
      qz[:, t] = np.einsum("bhd,bhd->bh", q[:, t], z)
    written = [j for j in steps if valid[j]]
    n = len(written)
    upd = np.zeros_like(A)
    dz = np.zeros_like(z)
    for idx, j in enumerate(written):
      w = (eta * lam ** (n - 1 - idx))[None, :]  # [1, H]
      kj, vj = k[:, j], v[:, j]
      if rule == "delta":
        vj = vj - np.einsum("bhd,bhde->bhe", kj, A)
      term = kj[..., :, None] * vj[..., None, :]
      if rule == "wedge":
        term = term - vj[..., :, None] * kj[..., None, :]
      upd += w[..., None, None] * term
      dz += w[..., None] * kj
    A = (lam ** n)[None, :, None, None] * A + upd
    z = (lam ** n)[None, :, None] * z + dz
  return r, qz, A, z


@pytest.mark.parametrize("rule", RULES)
def test_chunk_start_scan_reference_equals_hand_loop(rule):
  q, k, v, log_lam, eta, A0, valid = _stream(seed=11, invalid=False)
  z0 = normal(12, (B, H, D), 0.3)
  r, qz, A, z = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=False, z_BHD=z0)
  r_ref, qz_ref, A_ref, z_ref = _chunk_start_oracle(q, k, v, log_lam, valid, eta, A0, z0, rule, C)
  assert_close(r, r_ref, 1e-5, "reads")
  assert_close(qz, qz_ref, 1e-5, "q . z")
  assert_close(A, A_ref, 1e-5, "final state")
  assert_close(z, z_ref, 1e-5, "final z")
  # Without z the memory outputs are the same and the normaliser outputs are None.
  r2, qz2, A2, z2 = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=False)
  assert qz2 is None and z2 is None
  assert_close(r2, r_ref, 1e-5, "reads without z")
  # Chunk-start reads are not per-token reads: the comparison can fail.
  r_tok, *_ = memory.memory_recurrence(q, k, v, memory.log_decay(log_lam, valid), eta, A0, rule, True)
  assert_differs(r, r_tok, what="chunk-start vs per-token reads")


@pytest.mark.parametrize("rule", RULES)
def test_chunk_start_scan_reference_skips_invalid_steps(rule):
  """Docstring contract: "Steps with valid_T false write nothing and do not decay", whatever
  the key held at that step (here a random nonzero key)."""
  q, k, v, log_lam, eta, A0, _ = _stream(seed=13, invalid=False)
  valid = jax.random.bernoulli(jax.random.PRNGKey(14), 0.6, (T,)).at[:3].set(False)
  z0 = normal(15, (B, H, D), 0.3)
  r, qz, A, z = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=False, z_BHD=z0)
  r_ref, qz_ref, A_ref, z_ref = _chunk_start_oracle(q, k, v, log_lam, valid, eta, A0, z0, rule, C)
  assert_close(A, A_ref, 1e-5, "final state")
  assert_close(z, z_ref, 1e-5, "final z")
  assert_close(r, r_ref, 1e-5, "reads")
  assert_close(qz, qz_ref, 1e-5, "q . z")


@pytest.mark.parametrize("rule", ["outer", "wedge"])
def test_chunk_start_scan_final_state_is_exact_for_linear_rules(rule):
  """The weighted-sum carry equals per-token writes (§1: "equals per-token writes")."""
  q, k, v, log_lam, eta, A0, valid = _stream(seed=17, invalid=False)
  _, _, A, _ = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=False)
  _, _, A_tok, _ = memory.memory_recurrence(q, k, v, memory.log_decay(log_lam, valid), eta, A0, rule)
  assert_close(A, A_tok, 1e-5, "final state")


@pytest.mark.parametrize("rule", RULES)
def test_chunk_mean_differs_from_per_token_writes(rule):
  q, k, v, log_lam, eta, A0, valid = _stream(seed=19, invalid=False)
  _, _, A_mean, _ = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=True)
  _, _, A_ws, _ = memory.chunk_start_scan(q, k, v, log_lam, valid, eta, A0, rule, C, mean=False)
  _, _, A_tok, _ = memory.memory_recurrence(q, k, v, memory.log_decay(log_lam, valid), eta, A0, rule)
  assert_differs(A_mean, A_tok, 0.1, "chunk mean vs per-token")
  assert_differs(A_mean, A_ws, 0.1, "chunk mean vs weighted sum")


def test_chunk_mean_decays_once_per_chunk():
  """With zero writes, the shortcut decays by lam per chunk, the weighted sum by lam^C."""
  _, _, _, log_lam, eta, A0, valid = _stream(seed=21, invalid=False)
  zeros = jnp.zeros((B, T, H, D))
  n_chunks = -(-T // C)
  lam = np.exp(np.asarray(log_lam, np.float64))[None, :, None, None]
  _, _, A_mean, _ = memory.chunk_start_scan(zeros, zeros, zeros, log_lam, valid, eta, A0, "outer", C, mean=True)
  _, _, A_ws, _ = memory.chunk_start_scan(zeros, zeros, zeros, log_lam, valid, eta, A0, "outer", C, mean=False)
  assert_close(A_mean, lam ** n_chunks * np.asarray(A0), 1e-5, "chunk mean decay")
  assert_close(A_ws, lam ** T * np.asarray(A0), 1e-5, "per-token decay")


@pytest.mark.parametrize("Cn", [4, 8])
def test_chunk_mean_has_c2_minus_c_cross_terms(Cn):
  """§1: ``kbar (x) vbar = (1/C^2) sum_i sum_j k_i (x) v_j``: C true pairs and C^2 - C
  spurious ones, all weighted ``eta / C^2``; the exact write is diagonal in the pairs.

  Keys and values are rows of random orthogonal matrices, so the coefficient of the pair
  ``(i, j)`` in a state ``A`` is ``c_ij = <k_i (x) v_j, A>_F = k_i A v_j^T``.
  """
  Dn = 16
  Qk, _ = np.linalg.qr(np.random.default_rng(Cn).normal(size=(Dn, Dn)))
  Qv, _ = np.linalg.qr(np.random.default_rng(Cn + 1).normal(size=(Dn, Dn)))
  keys, vals = Qk[:Cn].astype(np.float32), Qv[:Cn].astype(np.float32)  # orthonormal rows
  k = jnp.asarray(keys)[None, :, None, :]  # [1, C, 1, D]
  v = jnp.asarray(vals)[None, :, None, :]
  q = normal(23, (1, Cn, 1, Dn))
  lam, eta = 0.9, 0.3
  log_lam, eta_H = jnp.log(jnp.array([lam])), jnp.array([eta])
  A0 = jnp.zeros((1, 1, Dn, Dn))
  valid = jnp.ones((Cn,), bool)

  def coefficients(A):
    return np.einsum("id,de,je->ij", keys.astype(np.float64), np.asarray(A[0, 0], np.float64),
                     vals.astype(np.float64))

  _, _, A_mean, _ = memory.chunk_start_scan(q, k, v, log_lam, valid, eta_H, A0, "outer", Cn, mean=True)
  c = coefficients(A_mean)
  off = ~np.eye(Cn, dtype=bool)
  assert np.sum(np.abs(c[off]) > 1e-6) == Cn * Cn - Cn
  np.testing.assert_allclose(c, eta / Cn**2, rtol=1e-5)  # true and spurious pairs alike
  # The reconstruction is complete: A is exactly the sum of the C^2 pair terms.
  recon = np.einsum("ij,id,je->de", c, keys.astype(np.float64), vals.astype(np.float64))
  assert_close(recon, A_mean[0, 0], 1e-5, "pair expansion")

  _, _, A_exact, _ = memory.memory_recurrence(q, k, v, memory.log_decay(log_lam, valid), eta_H, A0, "outer")
  c_exact = coefficients(A_exact)
  np.testing.assert_allclose(c_exact[off], 0.0, atol=1e-6)
  np.testing.assert_allclose(np.diag(c_exact), eta * lam ** (Cn - 1 - np.arange(Cn)), rtol=1e-5)


# ------------------------------------------------------------------ exact training path (§5)


def _naive_evicted_scan(q, k, v, lam_H, eta_H, rule: str, W: int):
  """docs/method.md §5 by lax.scan over t: at step t >= W write token t - W, then read q_t."""
  kh = memory.normalize_key(k)
  kw = jnp.pad(kh, ((0, 0), (W, 0), (0, 0), (0, 0)))[:, : q.shape[1]]  # kw[:, t] = kh[:, t - W]
  vw = jnp.pad(v, ((0, 0), (W, 0), (0, 0), (0, 0)))[:, : q.shape[1]]
  lam = lam_H[None, :, None, None]
  eta = eta_H[None, :, None, None]

  def step(A, xs):
    t, qt, kt, vt = xs
    if rule == "outer":
      upd = kt[..., :, None] * vt[..., None, :]
    elif rule == "wedge":
      upd = kt[..., :, None] * vt[..., None, :] - vt[..., :, None] * kt[..., None, :]
    else:
      upd = kt[..., :, None] * (vt - jnp.einsum("bhd,bhde->bhe", kt, A))[..., None, :]
    A = jnp.where(t >= W, lam * A + eta * upd, A)
    return A, jnp.einsum("bhd,bhde->bhe", qt, A)

  A0 = jnp.zeros(q.shape[:1] + q.shape[2:] + q.shape[-1:])
  xs = (jnp.arange(q.shape[1]),) + tuple(x.swapaxes(0, 1) for x in (q, kw, vw))
  _, r = jax.lax.scan(step, A0, xs)
  return r.swapaxes(0, 1)


@pytest.mark.parity
@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("W", [8, T - 1, T + 3])  # T - W steps written: 29, 1, none
def test_exact_training_path_equals_naive_eviction_scan(rule, impl, W):
  cfg = ModelConfig(mechanism="tc", n_head=H, d_model=H * D, window=W, chunk=C, rule=rule, impl=impl)
  ks = jax.random.split(jax.random.PRNGKey(31), 5)
  q, k, v = (jax.random.normal(kk, (B, T, H, D)) for kk in ks[:3])
  lam = jax.random.uniform(ks[3], (H,), minval=0.7, maxval=0.99)
  eta = jax.random.uniform(ks[4], (H,), minval=0.1, maxval=0.5)
  mp = mechanisms.MemoryParams(jnp.log(lam), eta)
  r, memory_norm = jax.jit(mechanisms.tc_parallel, static_argnums=4)(q, k, v, mp, cfg)
  r_ref = _naive_evicted_scan(q, k, v, lam, eta, rule, W)
  # The reported state is A after the last position: the pairs 0 .. T-1-W written.
  n = max(T - W, 0)
  _, _, A, _ = memory.memory_recurrence(q[:, :n], memory.normalize_key(k[:, :n]), v[:, :n],
                                  memory.log_decay(jnp.log(lam), jnp.ones((n,), bool)), eta,
                                  jnp.zeros((B, H, D, D)), rule)
  np.testing.assert_allclose(memory_norm, jnp.sqrt(jnp.sum(A ** 2, axis=(-2, -1))).mean(), rtol=1e-5)
  np.testing.assert_array_equal(r[:, :W], 0.0)  # nothing evicted before step W (W >= T: at all)
  if n:
    assert_close(r, r_ref, 1e-5, "reads")
    # Off-by-one in the eviction delay would be caught.
    assert_differs(_naive_evicted_scan(q, k, v, lam, eta, rule, W + 1), r_ref, what="W + 1 delay")
    assert_differs(_naive_evicted_scan(q, k, v, lam, eta, rule, W - 1), r_ref, what="W - 1 delay")


@pytest.mark.parity
@pytest.mark.parametrize("variant", [
    dict(rule="delta"), dict(rule="delta", compat="reference"), dict(rule="wedge", compat="reference"),
    dict(rule="delta", normalize_read=True, compat="reference"), dict(rule="outer", normalize_read=True),
    dict(rule="delta", two_timescales=True, compat="reference")], ids=str)
def test_streaming_chunk_xla_equals_reference(variant):
  """``tc_extend`` (a streaming chunk from a nonzero state, some steps without an eviction)
  through the chunked scan equals the per-token recurrence: both read orders
  (``compat='reference'`` reads before it writes), the normaliser and two timescales."""
  cfg = ModelConfig(mechanism="tc", n_head=H, d_model=H * D, window=8, chunk=C, **variant)
  q, _, v, log_lam, eta, A0, valid = _stream(seed=60)
  k = normal(61, (B, T, H, D))
  mp = mechanisms.MemoryParams(log_lam, eta)
  if cfg.two_timescales:
    mp = mp._replace(log_lam_slow=log_lam / 10, eta_slow=eta / 5, alpha=jnp.array([0.3, 0.8]))
  state = mechanisms.cache_lib.MemoryState(
      A0, normal(62, (B, H, D), 0.3) if cfg.normalize_read else None,
      normal(63, (B, H, D, D), 0.3) if cfg.two_timescales else None)
  run = jax.jit(mechanisms.tc_extend, static_argnums=6)
  r, st = run(q, k, v, valid, mp, state, cfg.replace(impl="xla"))
  r_ref, st_ref = run(q, k, v, valid, mp, state, cfg.replace(impl="reference"))
  assert_close(r, r_ref, 1e-5, "reads")
  for a, b in zip(jax.tree_util.tree_leaves(st), jax.tree_util.tree_leaves(st_ref)):
    assert_close(a, b, 1e-5, "state")
  flipped = "exact" if cfg.compat == "reference" else "reference"
  other, _ = run(q, k, v, valid, mp, state, cfg.replace(impl="reference", compat=flipped))
  assert_differs(other, r_ref, what="read order")
