"""Flax Linen modules: the GPT backbone of docs/method.md §3 and the mechanism-aware attention.

Modules own parameters and call the pure functions of ``mechanisms``; every method is a
pure function of (params, inputs, cache). ``GPT.__call__`` is the parallel (training)
forward; ``GPT.extend`` consumes a chunk of tokens against a streaming ``Cache``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tensorcache import cache as cache_lib, mechanisms
from tensorcache.config import ModelConfig
from tensorcache.rope import apply_rope

f32 = jnp.float32


def _logit(p: float) -> float:
  return float(np.clip(math.log(p / (1.0 - p)), -10.0, 10.0))


def _precision(cfg: ModelConfig):
  """float32 models get float32 matmuls on every platform (XLA's default is TF32 on GPU and
  one bf16 pass on TPU); half-precision models keep the fast default."""
  return jax.lax.Precision.HIGHEST if cfg.dtype == "float32" else None


def head_logits(h_BTM, embedding_VM, cfg: ModelConfig):
  """The tied head: float32 logits from a product in the compute dtype with float32
  accumulation. A bf16 model's head runs on the bf16 tensor cores forward and backward (a
  float32 product would be TF32 on Hopper, at half the rate: the largest matmul of the GPT-2
  sizes); a float32 model's is float32 (HIGHEST)."""
  dt = jnp.dtype(cfg.dtype)
  h_BTM, embedding_VM = h_BTM.astype(dt), embedding_VM.astype(dt)
  if dt == jnp.bfloat16:
    return _bf16_head(h_BTM, embedding_VM)
  return jnp.einsum("btm,vm->btv", h_BTM, embedding_VM, precision=_precision(cfg), preferred_element_type=f32)


@jax.custom_vjp
def _bf16_head(h_BTM, embedding_VM):
  """``h @ E^T`` of bf16 operands with float32 logits. Its backward multiplies the logits'
  cotangent rounded to bf16, accumulating in float32, as mixed-precision training does
  (PyTorch autocast's bf16 linear layers take a bf16 output gradient). Autodiff would
  multiply the float32 cotangent against an upcast operand: two TF32 products, 3.8 ms of the
  55 ms GPT-124M tc step of 8192 tokens on an H200 (the profile in
  results/seq_parallel/run3_weak_x2.json)."""
  return jnp.einsum("btm,vm->btv", h_BTM, embedding_VM, preferred_element_type=f32)


def _bf16_head_fwd(h_BTM, embedding_VM):
  return _bf16_head(h_BTM, embedding_VM), (h_BTM, embedding_VM)


def _bf16_head_bwd(res, g_BTV):
  h_BTM, embedding_VM = res
  g = g_BTV.astype(jnp.bfloat16)
  dh = jnp.einsum("btv,vm->btm", g, embedding_VM, preferred_element_type=f32)
  de = jnp.einsum("btv,btm->vm", g, h_BTM, preferred_element_type=f32)
  return dh.astype(jnp.bfloat16), de.astype(jnp.bfloat16)


_bf16_head.defvjp(_bf16_head_fwd, _bf16_head_bwd)


GEMM_ROWS = 16


def gemm_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """``lax.dot_general`` for ``nn.Dense`` (``x @ kernel``) that pads fewer than ``GEMM_ROWS``
  rows of ``x`` with zero rows, and drops their results.

  XLA on GPU rewrites a product of a few rows (a decode step: one row per sequence) into an
  elementwise product and a reduction, and writes the whole ``rows x d_in x d_out`` product
  to memory between the two; 16 rows stay a GEMM, which reads the kernel once (GPT-124M
  decode at batch 1 on an H200: the rewritten products took about half of the step's GPU
  time; padded, decode ran 1.89k instead of 1.35k tokens/s). Every row's result is the same
  product either way; 16 rows or more pass through unchanged.
  """
  (lc, rc), batch = dimension_numbers
  if batch != ((), ()) or lc != (lhs.ndim - 1,) or rc != (0,):
    raise ValueError(f"gemm_dot takes Dense's contraction (x's last axis with the kernel's first), "
                     f"not {dimension_numbers}.")
  rows = math.prod(lhs.shape[:-1])
  dot = lambda x: jax.lax.dot_general(x, rhs, dimension_numbers=(((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                                      preferred_element_type=preferred_element_type)
  if rows >= GEMM_ROWS:
    return dot(lhs)
  x = jnp.pad(lhs.reshape(rows, lhs.shape[-1]), ((0, GEMM_ROWS - rows), (0, 0)))
  return dot(x)[:rows].reshape(*lhs.shape[:-1], rhs.shape[-1])


def _dense(cfg: ModelConfig, features: int, kernel_init, *, use_bias: bool = False, **kwargs) -> nn.Dense:
  """The model's projections: compute dtype ``cfg.dtype``, float32 parameters, ``gemm_dot``."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, dtype=jnp.dtype(cfg.dtype),
                  precision=_precision(cfg), dot_general=gemm_dot, **kwargs)


def _const(value: float):
  return lambda key, shape, dtype=f32: jnp.full(shape, value, dtype)


def check_tokens(tokens, vocab_size: int) -> None:
  """Raises on token ids sharded in explicit mode (a static check) and on ids outside
  ``[0, vocab_size)`` when the ids are concrete."""
  _check_auto_sharding(tokens)
  if isinstance(tokens, jax.core.Tracer):
    return
  t = np.asarray(tokens)
  if not np.issubdtype(t.dtype, np.integer):
    raise TypeError(f"token ids must be integers, got dtype {t.dtype}.")
  if t.size and (t.min() < 0 or t.max() >= vocab_size):
    raise ValueError(
        f"token ids must lie in [0, {vocab_size}); got min {t.min()}, max {t.max()}. "
        "Check the tokenizer against the model's vocab_size.")


def _check_auto_sharding(tokens) -> None:
  """The modules leave sharding to the compiler (``jax.sharding.AxisType.Auto`` meshes, as
  ``tensorcache.sharding.make_mesh`` makes them); under explicit sharding their gathers and
  cache updates have no single output sharding, and JAX would fail deep inside the model."""
  aval_mesh = getattr(getattr(jax.typeof(tokens), "sharding", None), "mesh", None)
  types = tuple(getattr(aval_mesh, "axis_types", ())) + tuple(jax.sharding.get_abstract_mesh().axis_types)
  if jax.sharding.AxisType.Explicit in types:
    raise ValueError(
        "token ids are sharded in explicit mode (a mesh with jax.sharding.AxisType.Explicit axes); "
        "tensorcache models run under automatic sharding: make the mesh with tensorcache.sharding.make_mesh "
        "or jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,) * n).")


class Attention(nn.Module):
  """Causal self-attention with the configured mechanism (L1 window, sinks, Infini, L2)."""

  cfg: ModelConfig
  layer: int

  def setup(self):
    c = self.cfg
    normal = nn.initializers.normal(0.02)
    resid = nn.initializers.normal(0.02 / math.sqrt(2 * c.n_layer))
    self.c_attn = _dense(c, 3 * c.d_model, normal)
    self.c_proj = _dense(c, c.d_model, resid)
    self.memory = c.has_memory(self.layer)
    H = c.n_head
    if self.memory:
      self.decay_logit = self.param("decay_logit", _const(_logit(c.decay_init)), (H,))
      self.lr_logit = self.param("lr_logit", _const(_logit(c.lr_init)), (H,))
      if c.two_timescales:
        self.decay_slow_logit = self.param("decay_slow_logit", _const(_logit(c.decay_slow_init)), (H,))
        self.lr_slow_logit = self.param("lr_slow_logit", _const(_logit(c.lr_slow_init)), (H,))
        self.alpha_logit = self.param("alpha_logit", _const(_logit(c.alpha_init)), (H,))
      if c.per_token_gate:
        self.gate_proj = _dense(c, 1, nn.initializers.zeros, use_bias=True, bias_init=_const(c.gate_init))
      else:
        self.gate = self.param("gate", _const(c.gate_init), (1,))
      self.tc_proj = _dense(c, c.d_model, normal)
    if c.mechanism == "infini":
      self.beta = self.param("beta", nn.initializers.zeros, (H,))

  def _qkv(self, x, positions):
    c = self.cfg
    B, T, _ = x.shape
    q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
    q, k, v = (t.reshape(B, T, c.n_head, c.head_dim) for t in (q, k, v))
    q_sink = mechanisms.sink_query(q, positions, c)
    q = apply_rope(q, positions, c.rope_base, c.rope_scaling)
    k = apply_rope(k, positions, c.rope_base, c.rope_scaling)
    return q, k, v, q_sink

  def _memory_params(self) -> mechanisms.MemoryParams:
    sg = jax.lax.stop_gradient if self.cfg.freeze_decay_lr else (lambda a: a)
    mp = mechanisms.MemoryParams(jax.nn.log_sigmoid(sg(self.decay_logit)), jax.nn.sigmoid(sg(self.lr_logit)))
    if self.cfg.two_timescales:
      mp = mp._replace(
          log_lam_slow=jax.nn.log_sigmoid(sg(self.decay_slow_logit)),
          eta_slow=jax.nn.sigmoid(sg(self.lr_slow_logit)),
          alpha=jax.nn.sigmoid(self.alpha_logit))
    return mp

  def _output(self, x, local, mem_read):
    """``c_proj(merge(L1)) + gate * W_tc(merge(r))``."""
    B, T = x.shape[:2]
    y = self.c_proj(local.reshape(B, T, -1))
    if mem_read is None:
      return y
    gate = jax.nn.sigmoid(self.gate_proj(x) if self.cfg.per_token_gate else self.gate)
    l2 = gate.astype(y.dtype) * self.tc_proj(mem_read.astype(y.dtype).reshape(B, T, -1))
    if self._collecting_metrics():
      n1, n2 = (jnp.linalg.norm(t.astype(jnp.float32), axis=-1).mean() for t in (y, l2))
      self.sow("metrics", "gate", gate.astype(jnp.float32).mean())
      self.sow("metrics", "read_share", n2 / (n1 + n2 + 1e-12))  # L2's share of the output norm
    return y + l2

  def _collecting_metrics(self) -> bool:
    """Only when the caller asks for the ``metrics`` collection (the trainer does); never
    during ``init``, so parameters are the only variables a model has."""
    return self.is_mutable_collection("metrics") and not self.is_initializing()

  def _sow_parameters(self) -> None:
    """Token-independent per-layer metrics (means over heads): the memory's decay lambda,
    write rate eta and horizon 1 / (1 - lambda); Infini-attention's mixing sigma(beta)."""
    if not self._collecting_metrics():
      return
    f32 = lambda a: a.astype(jnp.float32)
    if self.memory:
      lam = jax.nn.sigmoid(f32(self.decay_logit))
      self.sow("metrics", "lambda", lam.mean())
      self.sow("metrics", "eta", jax.nn.sigmoid(f32(self.lr_logit)).mean())
      self.sow("metrics", "horizon", (1.0 / jnp.maximum(1.0 - lam, 1e-12)).mean())
      if self.cfg.two_timescales:
        self.sow("metrics", "lambda_slow", jax.nn.sigmoid(f32(self.decay_slow_logit)).mean())
        self.sow("metrics", "eta_slow", jax.nn.sigmoid(f32(self.lr_slow_logit)).mean())
        self.sow("metrics", "alpha", jax.nn.sigmoid(f32(self.alpha_logit)).mean())
    if self.cfg.mechanism == "infini":
      self.sow("metrics", "beta", jax.nn.sigmoid(f32(self.beta)).mean())

  def __call__(self, x):
    c = self.cfg
    positions = mechanisms.train_positions(x.shape[1], c)
    q, k, v, q_sink = self._qkv(x, positions)
    local = mechanisms.l1_parallel(q, k, v, c, q_sink)
    if c.mechanism == "infini":
      local = mechanisms.infini_mix(local, mechanisms.infini_parallel(q, k, v, c), self.beta)
    mem = None
    if self.memory:
      mem, memory_norm = mechanisms.tc_parallel(q, k, v, self._memory_params(), c)
      if self._collecting_metrics():
        self.sow("metrics", "memory_norm", memory_norm)  # mean |A|_F after the last position
    self._sow_parameters()
    return self._output(x, local, mem)

  def extend(self, x, lc: cache_lib.LayerCache, slot_pos, pos, positions, writes: cache_lib.Writes):
    c = self.cfg
    q, k, v, q_sink = self._qkv(x, positions)
    local = mechanisms.l1_extend(q, k, v, lc.kv, slot_pos, positions, c, q_sink)
    mem_state, mem = lc.mem, None
    if c.mechanism == "infini":
      r, mem_state = mechanisms.infini_extend(q, k, v, positions, lc.mem, c)
      local = mechanisms.infini_mix(local, r, self.beta)
    elif self.memory:
      k_ev, v_ev, valid = mechanisms.evicted_stream(lc.kv, pos, k, v)
      mem, mem_state = mechanisms.tc_extend(q, k_ev, v_ev, valid, self._memory_params(), lc.mem, c)
    kv = cache_lib.insert(lc.kv, k, v, writes)
    return self._output(x, local, mem), cache_lib.LayerCache(kv, mem_state)


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    h = _dense(c, 4 * c.d_model, nn.initializers.normal(0.02), name="fc")(x)
    h = jax.nn.gelu(h, approximate=False)
    resid = nn.initializers.normal(0.02 / math.sqrt(2 * c.n_layer))
    return _dense(c, c.d_model, resid, name="proj")(h)


def _layer_norm(cfg: ModelConfig, name: str):
  return nn.LayerNorm(epsilon=1e-5, use_bias=False, dtype=jnp.dtype(cfg.dtype), name=name)


class Block(nn.Module):
  cfg: ModelConfig
  layer: int

  def setup(self):
    self.ln1 = _layer_norm(self.cfg, "ln1")
    self.attn = Attention(self.cfg, self.layer)
    self.ln2 = _layer_norm(self.cfg, "ln2")
    self.mlp = MLP(self.cfg)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.mlp(self.ln2(x))

  def extend(self, x, lc, slot_pos, pos, positions, writes):
    a, lc = self.attn.extend(self.ln1(x), lc, slot_pos, pos, positions, writes)
    x = x + a
    return x + self.mlp(self.ln2(x)), lc


class GPT(nn.Module):
  """Pre-LN GPT, no biases, tied embedding / head, RoPE; logits are float32."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    self.wte = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(0.02))
    block = nn.remat(Block) if c.remat == "block" else Block  # remat wraps __call__ only
    self.blocks = [block(c, i) for i in range(c.n_layer)]
    self.ln_f = _layer_norm(c, "ln_f")

  def _head(self, x):
    return head_logits(self.ln_f(x), self.wte.embedding, self.cfg)

  def _features(self, tokens):
    check_tokens(tokens, self.cfg.vocab_size)
    x = self.wte(tokens).astype(jnp.dtype(self.cfg.dtype))
    for block in self.blocks:
      x = block(x)
    return self.ln_f(x)

  def __call__(self, tokens):
    """Parallel forward: logits ``[B, T, V]`` for every position."""
    return head_logits(self._features(tokens), self.wte.embedding, self.cfg)

  def token_losses(self, tokens, targets):
    """Parallel forward to the per-token cross entropy ``[B, T]`` (float32) of ``targets``.

    With ``cfg.loss_block = L`` the head runs on blocks of ``L`` positions, each block's
    logits recomputed in the backward pass, so ``[B, T, V]`` logits never exist at once
    (the largest tensor of a long-context step: 13 GB in float32 for 65536 positions of the
    GPT-2 vocabulary). The same numbers either way."""
    h = self._features(tokens)
    emb = self.wte.embedding
    ce = lambda h, t: optax.softmax_cross_entropy_with_integer_labels(head_logits(h, emb, self.cfg), t)
    B, T, M = h.shape
    L = self.cfg.loss_block
    if not L or L >= T:
      return ce(h, targets)
    n = -(-T // L)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, n * L - T)) + ((0, 0),) * (x.ndim - 2))
    blocks = lambda x: pad(x).reshape(B, n, L, *x.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(lambda a: jax.checkpoint(ce)(*a), (blocks(h), blocks(targets)))
    return out.swapaxes(0, 1).reshape(B, n * L)[:, :T]

  def extend(self, tokens, cache: cache_lib.Cache, last_only: bool = False):
    """Streams a chunk ``tokens [B, P]`` through the cache: logits ``[B, P, V]`` (``[B, 1, V]``,
    the last position's, with ``last_only``) and the new cache. Exactly the per-token
    semantics whatever ``P``; ``P = 1`` is a decode step.

    Traced inputs are never read back to the host, so bad input shows as NaN: an id outside
    ``[0, V)`` gets a NaN embedding (its logits are NaN, and so are later ones that read its
    slot: until the ring overwrites it under ``window``/``sinks`` (a masked NaN value still
    poisons the value product), for good as a sink or through the memory under
    ``tc``/``infini``),
    and under ``full`` every position ``>= max_len`` gets NaN logits (its slot would wrap).
    """
    c = self.cfg
    check_tokens(tokens, c.vocab_size)
    P = tokens.shape[1]
    positions = cache.pos + jnp.arange(P)
    writes = cache_lib.write_slots(positions, c.cache_size, c.n_sinks)
    x = self.wte(tokens).astype(jnp.dtype(c.dtype))
    x = jnp.where(((tokens >= 0) & (tokens < c.vocab_size))[..., None], x, jnp.nan)
    layers = []
    for block, lc in zip(self.blocks, cache.layers):
      x, lc = block.extend(x, lc, cache.slot_pos, cache.pos, positions, writes)
      layers.append(lc)
    out_pos = positions[-1:] if last_only else positions
    logits = self._head(x[:, -1:] if last_only else x)
    if c.mechanism == "full":
      logits = jnp.where(out_pos[None, :, None] >= c.max_len, jnp.nan, logits)
    return logits, cache_lib.Cache(cache.pos + P, cache_lib.record(cache.slot_pos, writes, positions), tuple(layers))
