"""Sequence parallelism, written per shard: the time axis split over a named mesh axis.

Every function here runs *inside* a ``shard_map`` whose manual axis ``axis`` splits the
positions into ``n`` equal shards of ``T`` (``tensorcache/sharding.py`` places that
boundary; nothing here sees a mesh). Collectives are explicit (``ppermute``, ``all_gather``)
and the per-shard math goes through ``dispatch``, so a kernel registered there runs per
shard unchanged.

Layouts. Shard ``i`` holds positions ``[i T, (i + 1) T)`` (contiguous), or, for causal
attention without a window (``balanced``), the zigzag halves ``i`` and ``2n - 1 - i`` of
``2n`` equal pieces, so every shard does the same attention work.

* ``preceding``: the ``m`` positions before a shard's first (a halo), by ``ppermute`` from the
  ``ceil(m / T)`` shards before it (several hops when ``m > T``); zeros where none exist.
* ``window_attention``: L1 with a window (and sinks): the shard's queries against the halo of
  the last ``window`` keys, its own keys and the sinks, one ``dispatch.l1_attention`` call.
* ``ring_attention``: full causal attention; key/value blocks travel around the ring by
  ``ppermute`` and merge by online softmax (float32 running max and sum).
* ``memory_scan``: the exact memory scan (every rule). The memory state is an affine function
  of the state entering a shard, ``S -> Phi S + Psi`` (``Phi = e^{sum g} I`` for the linear
  rules, a matrix for delta); an exclusive scan of the gathered maps gives the state
  entering each shard. Linear rules scan from zero and correct the reads by
  ``q_i Phi_i S_in``; the delta rule exchanges the maps between its scan's map and read
  phases.
* ``infini_scan``: Infini-attention segments aligned with the shards; the state entering a
  shard is a sum (linear rule) or is passed along the ring ``n - 1`` times (delta rule,
  whose segment write depends on the state non-linearly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from pallas_kernels import common
from tensorcache import dispatch, memory
from tensorcache.cache import InfiniState
from tensorcache.shapes import NEG_INF

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------ layout


def zigzag_order(length: int, n: int) -> np.ndarray:
  """Global positions in zigzag layout order: shard ``i`` holds pieces ``i`` and
  ``2n - 1 - i`` of ``2n`` equal pieces (``length`` divisible by ``2n``)."""
  if length % (2 * n):
    raise ValueError(f"A balanced (zigzag) layout needs the length {length} divisible by 2 x {n} shards.")
  c = length // (2 * n)
  pieces = [p for i in range(n) for p in (i, 2 * n - 1 - i)]
  return np.concatenate([np.arange(p * c, (p + 1) * c) for p in pieces])


def positions(T: int, axis: str, balanced: bool, shard=None) -> Int[Array, "T"]:
  """Global positions of the ``T`` tokens of shard ``shard`` (default: this one)."""
  n = jax.lax.axis_size(axis)
  i = jax.lax.axis_index(axis) if shard is None else shard
  if not balanced:
    return i * T + jnp.arange(T)
  c = T // 2
  return jnp.concatenate([i * c + jnp.arange(c), (2 * n - 1 - i) * c + jnp.arange(c)])


def preceding(x_BTF: Float[Array, "B T ..."], m: int, axis: str) -> Float[Array, "B m ..."]:
  """The ``m`` positions before this shard's first (contiguous layout), zeros where the
  sequence has none. Hop ``j`` sends the last ``min(T, m - (j - 1) T)`` positions of shard
  ``i - j`` to shard ``i``: exactly the positions needed, nothing gathered twice."""
  T, n = x_BTF.shape[1], jax.lax.axis_size(axis)
  pieces = []
  for j in range(1, -(-m // T) + 1 if m else 1):
    need = min(T, m - (j - 1) * T)
    tail = x_BTF[:, T - need:]
    perm = [(i, i + j) for i in range(n - j)]
    pieces.insert(0, jax.lax.ppermute(tail, axis, perm) if perm else jnp.zeros_like(tail))
  if not pieces:
    return x_BTF[:, :0]
  return jnp.concatenate(pieces, axis=1)


def delayed(x_BTF: Float[Array, "B T ..."], shift: int, axis: str) -> Float[Array, "B T ..."]:
  """``x'[:, i] = x[:, i - shift]`` in global positions (zeros before the sequence): the
  eviction stream a shard writes, ``shift`` positions behind its queries. With
  ``shift = s T + r`` that is the last ``r`` positions of shard ``i - s - 1`` and the first
  ``T - r`` of shard ``i - s``: two ``ppermute``s of exactly those, whatever the shift."""
  T, n = x_BTF.shape[1], jax.lax.axis_size(axis)
  s, r = divmod(shift, T)

  def hop(y, j):
    perm = [(i, i + j) for i in range(n - j)]
    return y if j == 0 else jax.lax.ppermute(y, axis, perm) if perm else jnp.zeros_like(y)

  parts = ([hop(x_BTF[:, T - r:], s + 1)] if r else []) + [hop(x_BTF[:, :T - r], s)]
  return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _zeros(shape, like):
  """float32 zeros typed as varying over the manual mesh axes ``like`` varies over (a scan
  carry that meets shard data must have the data's type)."""
  axes = common.manual_axes(like)
  z = jnp.zeros(shape, f32)
  return jax.lax.pcast(z, axes, to="varying") if axes else z


def _first(x_BTF, m: int, axis: str):
  """The sequence's first ``m`` positions (contiguous layout), on every shard."""
  T = x_BTF.shape[1]
  return jax.lax.all_gather(x_BTF[:, :min(m, T)], axis, axis=1, tiled=True)[:, :m]


# ------------------------------------------------------------------ L1


def window_attention(q, k, v, *, axis: str, window: int, num_sinks: int = 0, q_sink=None, block: int = 128,
                     impl=dispatch.Impl.AUTO) -> Float[Array, "B T H D"]:
  """L1 with a window (``window`` recent keys, plus sinks ``s < num_sinks``) on a shard.

  The shard builds ``[sinks (num_sinks), halo (window), own (T)]`` and runs the same
  ``dispatch.l1_attention`` as one device on it. The halo holds one key more than the
  window reaches (the window masks it), so without sinks the length ``T + window`` is a
  multiple of 64 whenever ``T`` and ``window`` are, and cuDNN runs on it unpadded. That call
  sees sinks as the first ``num_sinks`` entries and the window by index difference, so
  entries that do not exist (positions < 0) or repeat a sink (halo positions < num_sinks)
  are moved to the end, behind every real query: with ``g0 = start - window`` the first
  ``a = clip(g0, 0, ns)`` entries stay and the next ``d = ns - a + max(0, -g0)`` go to the
  end. What remains is the global sequence ``[0, ns) + [max(g0, ns), start + T)``, index
  differences equal position differences, and the shard's queries sit at
  ``[ns + window - d, ... + T)``.
  """
  B, T, H, D = q.shape
  ns, m = num_sinks, window
  start = jax.lax.axis_index(axis) * T

  L = ns + m + T
  g0 = start - m
  a = jnp.clip(g0, 0, ns)
  d = ns - a + jnp.maximum(0, -g0)
  at = ns + m - d  # where the shard's own positions land

  def keys(x):
    x = jnp.concatenate(([_first(x, ns, axis)] if ns else []) + [preceding(x, m, axis), x], axis=1)
    if not ns:  # a shift left by d (the tail refilled with zeros)
      return jax.lax.dynamic_slice_in_dim(jnp.pad(x, ((0, 0), (0, m)) + ((0, 0),) * (x.ndim - 2)), d, L, axis=1)
    idx = jnp.arange(L)
    return jnp.take(x, jnp.minimum(jnp.where(idx < a, idx, idx + d), L - 1), axis=1)

  def queries(x):  # only the shard's own rows are read back
    return jax.lax.dynamic_update_slice_in_dim(jnp.zeros((B, L) + x.shape[2:], x.dtype), x, at, axis=1)

  qs_e = None if q_sink is None else queries(q_sink)
  out = dispatch.l1_attention(queries(q), keys(k), keys(v), window=window, num_sinks=ns, q_sink=qs_e, block=block,
                              impl=impl)
  return jax.lax.dynamic_slice_in_dim(out, at, T, axis=1)


def _block_update(carry, q, k, v, q_pos, k_pos):
  """Online-softmax update of ``(m, l, acc)`` (float32, ``[B, H, T]`` and ``[B, T, H, D]``)
  with one causal key/value block."""
  m, l, acc = carry
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  prec = HIGHEST if q.dtype == f32 else jax.lax.Precision.DEFAULT
  s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=f32, precision=prec) * scale
  ok = k_pos[None, :] <= q_pos[:, None]
  s = jnp.where(ok, s, NEG_INF)
  m_new = jnp.maximum(m, s.max(-1))
  p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
  corr = jnp.exp(m - m_new)
  l = l * corr + p.sum(-1)
  pv = jnp.einsum("bhts,bshd->bthd", p.astype(v.dtype), v, preferred_element_type=f32, precision=prec)
  acc = acc * corr.transpose(0, 2, 1)[..., None] + pv
  return m_new, l, acc


def ring_attention(q, k, v, *, axis: str, block: int = 128, balanced: bool = False) -> Float[Array, "B T H D"]:
  """Full causal attention over the ring: step ``j`` scores the shard's queries against the
  key/value block of shard ``i - j`` (sent one hop per step by ``ppermute``, the next block
  in flight while this one is scored) under the causal mask of their global positions.

  Queries go in blocks of ``block`` rows, each block's update rematerialised in the backward
  pass, so memory is ``O(T block)`` per head, never ``T x T``. Any layout is exact. With the
  ``balanced`` (zigzag) layout, a step ``j > 0`` scores only what is visible: from an earlier
  shard (``i - j >= 0``) every query sees the block's first half and none of its second;
  from a later one only the second half of the queries sees it, all of it. Both are half a
  block, so every shard does the same work at every step. Only keys and values travel: a block's
  positions follow from the shard it came from.
  """
  B, T, H, D = q.shape
  n = jax.lax.axis_size(axis)
  i = jax.lax.axis_index(axis)
  q_pos = positions(T, axis, balanced)
  half = T // 2
  Q = min(block, half if balanced else T)
  if balanced and half % Q:
    Q = half
  nb = -(-T // Q)
  pad = nb * Q - T
  qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, nb, Q, H, D).swapaxes(0, 1)
  qp = jnp.pad(q_pos, (0, pad), constant_values=-1).reshape(nb, Q)  # padded rows see nothing
  update = jax.checkpoint(_block_update)

  def over_blocks(carry, k_blk, v_blk, k_pos, rows=slice(None)):
    def body(_, xs):
      c, q_, p_ = xs
      return None, update(c, q_, k_blk, v_blk, p_, k_pos)
    part = jax.lax.scan(body, None, (jax.tree.map(lambda x: x[rows], carry), qb[rows], qp[rows]))[1]
    return jax.tree.map(lambda x, y: x.at[rows].set(y), carry, part)

  carry = (jnp.full((nb, B, H, Q), NEG_INF, f32), jnp.zeros((nb, B, H, Q), f32), jnp.zeros((nb, B, Q, H, D), f32))
  kv = (k, v)
  perm = [(s, (s + 1) % n) for s in range(n)]
  for j in range(n):
    nxt = jax.lax.ppermute(kv, axis, perm) if j + 1 < n else None
    k_, v_ = kv
    p_ = positions(T, axis, balanced, (i - j) % n)
    if balanced and j > 0:
      earlier = lambda c: over_blocks(c, k_[:, :half], v_[:, :half], p_[:half])
      later = lambda c: over_blocks(c, k_, v_, p_, slice(nb // 2, None))
      carry = jax.lax.cond(i >= j, earlier, later, carry)
    else:
      carry = over_blocks(carry, k_, v_, p_)
    kv = nxt
  m, l, acc = carry
  out = acc / jnp.maximum(l, jnp.finfo(f32).tiny).transpose(0, 1, 3, 2)[..., None]
  return out.swapaxes(0, 1).reshape(B, nb * Q, H, D)[:, :T].astype(q.dtype)


# ------------------------------------------------------------------ L2


def memory_scan(q, k, v, g_TH, eta_H, *, normalizer: bool, axis: str, rule: str, chunk: int,
                read_first: bool = False, normalize_q: bool = False, impl=dispatch.Impl.AUTO):
  """The exact memory scan of a write stream split over the shards (contiguous), from the
  zero state at the stream's start: this shard's slice ``q, k, v [B, T, H, D]``, ``g [T, H]``.

  Returns ``(r, qz, A, z)`` as ``dispatch.l2_scan`` would on the whole stream: this shard's
  reads (and ``q . z`` with the normaliser, else None) and the state after the last shard
  (the same on every shard). The delta rule's state map is a matrix: ``dispatch.l2_scan``
  gets the entering state as a function of this shard's map ``(Phi, Psi)``, which gathers
  the maps of all shards and composes them (``_across_shards``) between the
  shard's map and read phases, so its reads come out exact in one pass. The linear rules
  scan from zero and correct the reads by ``q_i Phi_i S_in`` with ``Phi_i = e^{G_i}``.
  """
  B, T, H, D = q.shape
  i = jax.lax.axis_index(axis)
  zeros = _zeros((B, H, D, D), q)
  z0 = _zeros((B, H, D), q) if normalizer else None
  kw = dict(rule=rule, chunk=chunk, read_first=read_first, normalize_q=normalize_q, impl=impl)
  gather = lambda x, at: jax.lax.all_gather(x, axis, axis=at)
  G = jnp.cumsum(g_TH.astype(f32), axis=0)
  decay_read = jnp.exp(G - g_TH if read_first else G)  # [T, H]: e^{G_i} of the read state
  g_last = gather(G[-1], 1)  # [H, N]: a shard's log decay
  qn = memory.normalize_key(q) if normalize_q else q.astype(f32)  # the queries as the scan reads them
  if rule == "delta":
    def entering(Phi, Psi):
      S = _across_shards(gather(Phi, 2), gather(Psi, 2), zeros)  # [B, H, N + 1, D, D]
      return jax.lax.dynamic_index_in_dim(S, i, axis=2, keepdims=False)

    r, qz0, A_own, zf = dispatch.l2_scan(q, k, v, g_TH, eta_H, entering, z0, **kw)
    A = gather(A_own, 2)[:, :, -1]  # the last shard's final state
  else:
    r0, qz0, Psi, zf = dispatch.l2_scan(q, k, v, g_TH, eta_H, zeros, z0, **kw)
    R = qn * decay_read[None, :, :, None]
    S = _across_shards(jnp.exp(g_last), gather(Psi, 2), zeros)
    r = r0 + memory._mm("bthd,bhde->bthe", R, jax.lax.dynamic_index_in_dim(S, i, axis=2, keepdims=False))
    A = S[:, :, -1]
  if z0 is None:
    return r, None, A, None
  Z = _across_shards(jnp.exp(g_last), gather(zf, 2)[..., None], z0[..., None])[..., 0]  # [B, H, N + 1, D]
  z_in = jax.lax.dynamic_index_in_dim(Z, i, axis=2, keepdims=False)
  qz = qz0 + memory._mm("bthd,bhd->bth", qn, z_in) * decay_read[None]
  return r, qz, A, Z[:, :, -1]


def _across_shards(Phi, Psi_BHNKV, S0_BHKV):
  """States entering each of the ``N`` shards and the final one, ``[B, H, N + 1, K, V]``, of
  ``S_{j+1} = Phi_j S_j + Psi_j``: ``Phi`` a decay ``[H, N]`` (linear rules) or matrices
  ``[B, H, N, K, K]`` (delta). ``N`` is the mesh axis, small: one step per shard, a handful
  of ``D x D`` products, where an associative scan would add a level of slices per doubling."""
  S = [S0_BHKV.astype(f32)]
  for j in range(Psi_BHNKV.shape[2]):
    if Phi.ndim == 2:
      S.append(Phi[None, :, j, None, None] * S[-1] + Psi_BHNKV[:, :, j])
    else:
      S.append(memory._mm("bhij,bhjk->bhik", Phi[:, :, j], S[-1]) + Psi_BHNKV[:, :, j])
  return jnp.stack(S, axis=2)


# ------------------------------------------------------------------ Infini-attention


def infini_scan(q, k, v, *, axis: str, rule: str, segment: int, impl=dispatch.Impl.AUTO) -> Float[Array, "B T H D"]:
  """Infini-attention reads on a shard (contiguous), the sequence starting from the empty
  state. Segments must not straddle shards: ``segment`` divides the shard length ``T``, or
  covers the whole sequence (then every token reads the empty state, as on one device)."""
  B, T, H, D = q.shape
  n = jax.lax.axis_size(axis)
  empty = InfiniState(*(_zeros(s, q) for s in ((B, H, D, D), (B, H, D), (B, H, D, D), (B, H, D))))
  if segment >= n * T:
    return dispatch.infini_scan(q, k, v, empty, rule=rule, segment=T, impl=impl)[0]
  if T % segment:
    raise ValueError(f"infini_segment={segment} must divide the shard length {T} (or cover the sequence).")
  scan = lambda st: dispatch.infini_scan(q, k, v, st, rule=rule, segment=segment, impl=impl)
  if rule == "linear":  # the state entering a shard: the sum of the earlier shards' writes
    _, own = scan(empty)
    state = empty._replace(M=_exclusive_sum(own.M, axis), z=_exclusive_sum(own.z, axis))
  else:  # the ring passes each shard's outgoing state on; exact on shard i after i rounds
    state = empty
    perm = [(j, j + 1) for j in range(n - 1)]
    for _ in range(n - 1):
      _, out = scan(state)
      state = empty._replace(M=jax.lax.ppermute(out.M, axis, perm), z=jax.lax.ppermute(out.z, axis, perm))
  return scan(state)[0]


def _exclusive_sum(x, axis: str):
  """``sum_{j < i} x_j`` over the shards ``j`` of ``axis``."""
  n = jax.lax.axis_size(axis)
  mask = jnp.arange(n) < jax.lax.axis_index(axis)
  allx = jax.lax.all_gather(x, axis)
  return jnp.sum(jnp.where(mask.reshape((n,) + (1,) * x.ndim), allx, 0.0), axis=0)
