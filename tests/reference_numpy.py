"""An independent NumPy oracle of the authors' PyTorch reference (``kswain98/tensor-cache``).

It re-implements, in float64 and with the reference's own loops, the two regimes of the
reference's ``tensor_cache/model.py`` (commit b633e87) and ``baselines/infini_attention.py``:

- ``forward(sd, cfg, tokens, attn_window)``: ``GPT.forward``, the training-style parallel
  forward (dense causal attention, or the sliding-window(+sinks) mask when ``attn_window`` is
  set and shorter than the sequence; Tensor Cache ``forward_full`` chunk-start scan; Infini
  ``forward_full`` segment scan).
- ``stream(sd, cfg, tokens)``: the ``GPT.stream_step`` loop, one token at a time (ring buffer
  of ``kv_window`` slots with sinks, eviction, Tensor Cache read-then-write of the evicted pair,
  Infini read-then-write of every token).

Inputs use the reference's conventions: ``sd`` is its ``state_dict`` (name -> array, PyTorch
layouts: a ``Linear`` weight is ``[out, in]``, ``c_attn`` packs q, k, v, heads split as
``[H, D]``), ``cfg`` a dict of its ``GPTConfig`` fields (missing keys take its defaults).
It is an oracle for tests, written for clarity, not speed, and shares no code with
``tensorcache``.
"""

from __future__ import annotations

import math

import numpy as np

# The reference's GPTConfig defaults.
DEFAULTS = dict(
    vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False,
    use_rope=True, rope_base=10000, rope_scaling_factor=1.0, use_kv_cache=True, kv_window=512,
    kv_num_sinks=0, tc_enabled=True, tc_layers=-1, tc_update_rule="delta", tc_chunk_size=64,
    tc_decay_init=0.995, tc_lr_init=0.05, tc_gate_init=-2.0, tc_normalize_k=True,
    tc_normalize_q=False, tc_value_scale=1.0, tc_write_on_evict=True, tc_write_on_insert=False,
    tc_two_timescales=False, tc_decay_slow_init=0.9995, tc_lr_slow_init=0.01, tc_alpha_init=0.5,
    tc_num_slots=1, tc_read_topk=1, tc_router_temp=1.0, tc_write_route="k",
    tc_freeze_decay_lr=False, tc_per_token_gate=False, tc_normalize_read=False,
    tc_normalize_read_eps=1.0, infini_enabled=False, infini_update_rule="delta",
    infini_segment_size=256, tc_use_in_full_forward=True,
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def full_config(cfg: dict) -> dict:
  c = dict(DEFAULTS)
  c.update(cfg)
  unsupported = {"bias": False, "use_rope": True, "tc_num_slots": 1, "dropout": 0.0}
  for key, value in unsupported.items():
    if c[key] != value:
      raise NotImplementedError(f"oracle supports only {key}={value!r}")
  return c


# ---------------------------------------------------------------------------------------------
# Backbone pieces
# ---------------------------------------------------------------------------------------------

def _w(sd, name):
  return np.asarray(sd[name], np.float64)


def linear(x, weight, bias=None):
  """``nn.Linear``: ``weight`` is ``[out, in]``."""
  y = x @ weight.T
  return y if bias is None else y + bias


def layer_norm(x, weight, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * weight


def gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis, keepdims=True)


def rope(x, positions, c):
  """Interleaved RoPE on ``x [B, H, T, D]`` at integer ``positions [T]``."""
  D = x.shape[-1]
  base = float(c["rope_base"])
  if c["rope_scaling_factor"] > 1.0:
    base = base * c["rope_scaling_factor"] ** (D / (D - 2))
  inv_freq = 1.0 / base ** (np.arange(0, D, 2, dtype=np.float64) / D)       # [D/2]
  freqs = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]    # [T, D/2]
  cos = np.repeat(np.cos(freqs), 2, axis=-1)                                # [T, D]: c0 c0 c1 c1 ...
  sin = np.repeat(np.sin(freqs), 2, axis=-1)
  rot = np.empty_like(x)                                                    # rotate_half, interleaved
  rot[..., 0::2] = -x[..., 1::2]
  rot[..., 1::2] = x[..., 0::2]
  return x * cos + rot * sin


def l2norm(x, eps=1e-5):
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def split_heads(x, H):
  B, T, C = x.shape
  return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)                    # [B, H, T, D]


def merge_heads(x):
  B, H, T, D = x.shape
  return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def tc_module_present(c) -> bool:
  """``CausalSelfAttention.tc_enabled``: TC modules exist in every layer when on."""
  return bool(c["tc_enabled"]) and not bool(c["infini_enabled"])


def tc_active_for_layer(c, layer: int) -> bool:
  """``GPT._tc_active_for_layer``: all layers, none, or the top-k."""
  if not c["tc_enabled"]:
    return False
  k = int(c["tc_layers"])
  if k < 0:
    return True
  if k == 0:
    return False
  k = min(k, c["n_layer"])
  return layer >= c["n_layer"] - k


# ---------------------------------------------------------------------------------------------
# Tensor Cache (FastWeightTensorCache, single slot)
# ---------------------------------------------------------------------------------------------

class _TC:
  def __init__(self, sd, prefix, c, H, D):
    self.c, self.H, self.D = c, H, D
    self.rule = c["tc_update_rule"]
    self.chunk = max(1, int(c["tc_chunk_size"]))
    self.two = bool(c["tc_two_timescales"])
    self.norm_read = bool(c["tc_normalize_read"])
    self.eps_read = float(c["tc_normalize_read_eps"])
    if self.norm_read and self.two:
      raise ValueError("tc_normalize_read needs a single timescale")
    self.decay = sigmoid(_w(sd, prefix + "tc.logit_decay_fast"))            # [H]
    self.lr = sigmoid(_w(sd, prefix + "tc.logit_lr_fast"))
    if self.two:
      self.decay_slow = sigmoid(_w(sd, prefix + "tc.logit_decay_slow"))
      self.lr_slow = sigmoid(_w(sd, prefix + "tc.logit_lr_slow"))
      self.alpha = sigmoid(_w(sd, prefix + "tc.logit_alpha"))

  def init_state(self, B):
    A = np.zeros((B, self.H, self.D, self.D))
    if self.two:
      return (A, A.copy())
    if self.norm_read:
      return (A, np.zeros((B, self.H, self.D)))
    return A

  def _read(self, q, A, z):
    """q [B, H, T, D] (or [B, H, D]) against A [B, H, D, D]."""
    step = q.ndim == 3
    if step:
      q = q[:, :, None, :]
    num = np.einsum("bhtd,bhde->bhte", q, A)
    if z is not None:
      denom = np.abs(np.einsum("bhtd,bhd->bht", q, z))
      num = num / np.maximum(denom, self.eps_read)[..., None]
    return num[:, :, 0] if step else num

  def _write_single(self, k, v, A, decay, lr):
    """One write of ``k, v [B, H, D]`` with per-head ``decay, lr [H]``."""
    d = decay[None, :, None, None]
    e = lr[None, :, None, None]
    if self.rule == "outer":
      upd = k[..., :, None] * v[..., None, :]
    elif self.rule == "wedge":
      upd = k[..., :, None] * v[..., None, :] - v[..., :, None] * k[..., None, :]
    elif self.rule == "delta":
      v_hat = np.einsum("bhd,bhde->bhe", k, A)
      upd = k[..., :, None] * (v - v_hat)[..., None, :]
    else:
      raise ValueError(self.rule)
    return d * A + e * upd

  def forward_step(self, q, write_k, write_v, state):
    if self.c["tc_normalize_q"]:
      q = l2norm(q)
    if not self.two:
      A, z = state if self.norm_read else (state, None)
      mem = self._read(q, A, z)
      if write_k is None:
        return mem, state
      k = l2norm(write_k) if self.c["tc_normalize_k"] else write_k
      v = write_v * self.c["tc_value_scale"]
      A_new = self._write_single(k, v, A, self.decay, self.lr)
      if self.norm_read:
        z_new = self.decay[None, :, None] * z + self.lr[None, :, None] * k
        return mem, (A_new, z_new)
      return mem, A_new
    A_fast, A_slow = state
    mem = self._read(q, A_fast, None) + self.alpha[None, :, None] * self._read(q, A_slow, None)
    if write_k is None:
      return mem, state
    k = l2norm(write_k) if self.c["tc_normalize_k"] else write_k
    v = write_v * self.c["tc_value_scale"]
    return mem, (self._write_single(k, v, A_fast, self.decay, self.lr),
                 self._write_single(k, v, A_slow, self.decay_slow, self.lr_slow))

  def forward_full(self, q, k, v, state):
    """The reference's chunk scan over ``q, k, v [B, H, T, D]``."""
    B, H, T, D = q.shape
    if self.c["tc_normalize_q"]:
      q = l2norm(q)
    if self.c["tc_normalize_k"]:
      k = l2norm(k)
    v = v * self.c["tc_value_scale"]
    mem = np.zeros_like(q)
    cs = self.chunk
    if not self.two:
      A, z = state if self.norm_read else (state, None)
      for t0 in range(0, T, cs):
        t1 = min(t0 + cs, T)
        n = t1 - t0
        mem[:, :, t0:t1] = self._read(q[:, :, t0:t1], A, z)              # chunk-start state
        kc, vc = k[:, :, t0:t1], v[:, :, t0:t1]
        contribution = np.zeros((B, H, D, D))
        z_contribution = np.zeros((B, H, D))
        for j in range(n):                                                # token j of the chunk
          w = self.decay ** (n - 1 - j)                                   # [H]
          kj, vj = kc[:, :, j], vc[:, :, j]
          if self.rule == "outer":
            term = kj[..., :, None] * vj[..., None, :]
          elif self.rule == "wedge":
            term = kj[..., :, None] * vj[..., None, :] - vj[..., :, None] * kj[..., None, :]
          else:  # delta: error against the chunk-start state
            err = vj - np.einsum("bhd,bhde->bhe", kj, A)
            term = kj[..., :, None] * err[..., None, :]
          contribution += w[None, :, None, None] * term
          z_contribution += w[None, :, None] * kj
        A_old = A
        A = (self.decay ** n)[None, :, None, None] * A_old + self.lr[None, :, None, None] * contribution
        if z is not None:
          z = (self.decay ** n)[None, :, None] * z + self.lr[None, :, None] * z_contribution
      return mem, ((A, z) if self.norm_read else A)
    A_fast, A_slow = state
    for t0 in range(0, T, cs):
      t1 = min(t0 + cs, T)
      qc = q[:, :, t0:t1]
      mem[:, :, t0:t1] = self._read(qc, A_fast, None) + self.alpha[None, :, None, None] * self._read(qc, A_slow, None)
      k_bar = k[:, :, t0:t1].mean(axis=2)
      v_bar = v[:, :, t0:t1].mean(axis=2)
      A_fast = self._write_single(k_bar, v_bar, A_fast, self.decay, self.lr)
      A_slow = self._write_single(k_bar, v_bar, A_slow, self.decay_slow, self.lr_slow)
    return mem, (A_fast, A_slow)


# ---------------------------------------------------------------------------------------------
# Infini-attention memory
# ---------------------------------------------------------------------------------------------

class _Infini:
  eps = 1e-5

  def __init__(self, sd, prefix, c, H, D):
    self.rule = c["infini_update_rule"]
    if self.rule not in ("linear", "delta"):
      raise ValueError(self.rule)
    self.segment = int(c["infini_segment_size"])
    self.H, self.D = H, D
    self.beta = _w(sd, prefix + "infini.beta")

  def gate(self):
    return sigmoid(self.beta)                                             # [H]

  @staticmethod
  def phi(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))) + 1.0        # ELU + 1

  def init_state(self, B):
    return np.zeros((B, self.H, self.D, self.D)), np.zeros((B, self.H, self.D))

  def _read(self, qm, M, z):
    """qm [B, H, T, D]."""
    num = np.einsum("bhtd,bhde->bhte", qm, M)
    den = np.einsum("bhtd,bhd->bht", qm, z)[..., None] + self.eps
    return num / den

  def _write(self, km, v, M, z):
    """km, v [B, H, T, D] (a segment or a single token with T = 1)."""
    if self.rule == "delta":
      wv = v - self._read(km, M, z)
    else:
      wv = v
    return M + np.einsum("bhtd,bhte->bhde", km, wv), z + km.sum(axis=2)

  def forward_step(self, q, k, v, state):
    """q, k, v [B, H, D]: read, then write this token."""
    M, z = state
    mem = self._read(self.phi(q)[:, :, None], M, z)[:, :, 0]
    M, z = self._write(self.phi(k)[:, :, None], v[:, :, None], M, z)
    return mem, (M, z)

  def forward_full(self, q, k, v, state):
    M, z = state
    T = q.shape[2]
    out = []
    for s0 in range(0, T, self.segment):
      s1 = min(s0 + self.segment, T)
      out.append(self._read(self.phi(q[:, :, s0:s1]), M, z))
      M, z = self._write(self.phi(k[:, :, s0:s1]), v[:, :, s0:s1], M, z)
    return np.concatenate(out, axis=2), (M, z)


# ---------------------------------------------------------------------------------------------
# Attention layer, both regimes
# ---------------------------------------------------------------------------------------------

class _Attention:
  def __init__(self, sd, layer, c):
    self.c = c
    self.layer = layer
    self.H = c["n_head"]
    self.C = c["n_embd"]
    self.D = self.C // self.H
    p = f"transformer.h.{layer}.attn."
    self.c_attn = _w(sd, p + "c_attn.weight")
    self.c_proj = _w(sd, p + "c_proj.weight")
    self.tc = None
    if tc_module_present(c):
      self.tc = _TC(sd, p, c, self.H, self.D)
      self.tc_proj = _w(sd, p + "tc_proj.weight")
      if c["tc_per_token_gate"]:
        self.gate_w = _w(sd, p + "tc_gate_proj.weight")
        self.gate_b = _w(sd, p + "tc_gate_proj.bias")
      else:
        self.gate = _w(sd, p + "tc_gate")
    self.infini = _Infini(sd, p, c, self.H, self.D) if c["infini_enabled"] else None

  def _gate(self, x):
    if self.c["tc_per_token_gate"]:
      return sigmoid(linear(x, self.gate_w, self.gate_b))                 # [B, T, 1]
    return sigmoid(self.gate)

  def _qkv(self, x, positions):
    qkv = linear(x, self.c_attn)
    q, k, v = np.split(qkv, 3, axis=-1)
    q, k, v = (split_heads(t, self.H) for t in (q, k, v))
    return rope(q, positions, self.c), rope(k, positions, self.c), v

  def forward(self, x, attn_window, tc_active):
    B, T, C = x.shape
    q, k, v = self._qkv(x, np.arange(T))
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    if attn_window and attn_window < T:
      allowed = (j <= i) & (j >= i - attn_window)
      if self.c["kv_num_sinks"] > 0:
        allowed = allowed | (j < self.c["kv_num_sinks"])
    else:
      allowed = j <= i
    att = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(self.D)
    att = np.where(allowed, att, -np.inf)
    out = np.einsum("bhij,bhjd->bhid", softmax(att), v)
    if self.infini is not None:
      mem, _ = self.infini.forward_full(q, k, v, self.infini.init_state(B))
      g = self.infini.gate()[None, :, None, None]
      out = g * mem + (1.0 - g) * out
    y = linear(merge_heads(out), self.c_proj)
    if tc_active and self.tc is not None and self.c["tc_use_in_full_forward"]:
      mem, _ = self.tc.forward_full(q, k, v, self.tc.init_state(B))
      y = y + self._gate(x) * linear(merge_heads(mem), self.tc_proj)
    return y

  def init_stream(self, B, tc_active):
    W = int(self.c["kv_window"]) if self.c["use_kv_cache"] else 0
    if W == 0:
      kv = {"k": np.zeros((B, self.H, 0, self.D)), "v": np.zeros((B, self.H, 0, self.D))}
    else:
      kv = {"k": np.zeros((B, self.H, W, self.D)), "v": np.zeros((B, self.H, W, self.D)), "len": 0, "pos": 0}
    if self.infini is not None:
      mem = self.infini.init_state(B)
    elif self.tc is not None and tc_active:
      mem = self.tc.init_state(B)
    else:
      mem = None
    return {"kv": kv, "mem": mem, "W": W}

  def stream_step(self, x, pos, st, tc_active):
    """x [B, 1, C] at absolute position ``pos``; mutates the layer state ``st``."""
    B = x.shape[0]
    q, k, v = self._qkv(x, np.array([pos]))                                # [B, H, 1, D]
    kv, W = st["kv"], st["W"]
    n_sinks = int(self.c["kv_num_sinks"])
    k_ev = v_ev = None
    if W == 0:
      kv["k"] = np.concatenate([kv["k"], k], axis=2)
      kv["v"] = np.concatenate([kv["v"], v], axis=2)
      k_cat, v_cat = kv["k"], kv["v"]
    else:
      if kv["len"] < W:                                                    # still filling
        kv["k"][:, :, kv["len"]] = k[:, :, 0]
        kv["v"][:, :, kv["len"]] = v[:, :, 0]
        kv["len"] += 1
      else:                                                                # ring after the sinks
        ring_size = W - n_sinks
        slot = n_sinks + kv["pos"]
        if tc_active and self.tc is not None and self.c["tc_write_on_evict"]:
          k_ev = kv["k"][:, :, slot].copy()
          v_ev = kv["v"][:, :, slot].copy()
        kv["k"][:, :, slot] = k[:, :, 0]
        kv["v"][:, :, slot] = v[:, :, 0]
        kv["pos"] = (kv["pos"] + 1) % ring_size
      L = kv["len"]
      if L < W:
        order = list(range(L))
      else:
        p = n_sinks + kv["pos"]                                            # oldest ring slot
        order = list(range(n_sinks)) + list(range(p, W)) + list(range(n_sinks, p))
      k_cat, v_cat = kv["k"][:, :, order], kv["v"][:, :, order]
    att = softmax(np.einsum("bhd,bhld->bhl", q[:, :, 0], k_cat) / math.sqrt(self.D))
    out = np.einsum("bhl,bhld->bhd", att, v_cat)                           # [B, H, D]
    if self.infini is not None:
      mem, st["mem"] = self.infini.forward_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], st["mem"])
      g = self.infini.gate()[None, :, None]
      out = g * mem + (1.0 - g) * out
    y = linear(out.reshape(B, 1, -1), self.c_proj)
    if tc_active and self.tc is not None:
      if self.c["tc_write_on_evict"] and k_ev is not None:
        wk, wv = k_ev, v_ev
      elif self.c["tc_write_on_insert"]:
        wk, wv = k[:, :, 0], v[:, :, 0]
      else:
        wk = wv = None
      mem, st["mem"] = self.tc.forward_step(q[:, :, 0], wk, wv, st["mem"])
      y = y + self._gate(x) * linear(mem.reshape(B, 1, -1), self.tc_proj)
    return y


class _Model:
  def __init__(self, sd, cfg):
    self.c = c = full_config(cfg)
    self.wte = _w(sd, "transformer.wte.weight")
    if "lm_head.weight" in sd:
      self.head = _w(sd, "lm_head.weight")
    else:
      self.head = self.wte
    self.ln_f = _w(sd, "transformer.ln_f.weight")
    self.layers = []
    for i in range(c["n_layer"]):
      p = f"transformer.h.{i}."
      self.layers.append(dict(
          ln1=_w(sd, p + "ln1.weight"), ln2=_w(sd, p + "ln2.weight"), attn=_Attention(sd, i, c),
          fc=_w(sd, p + "mlp.fc.weight"), proj=_w(sd, p + "mlp.proj.weight"),
          tc_active=tc_active_for_layer(c, i)))

  def mlp(self, L, x):
    return linear(gelu(linear(x, L["fc"])), L["proj"])

  def forward(self, tokens, attn_window):
    x = self.wte[np.asarray(tokens)]
    for L in self.layers:
      x = x + L["attn"].forward(layer_norm(x, L["ln1"]), attn_window, L["tc_active"])
      x = x + self.mlp(L, layer_norm(x, L["ln2"]))
    return linear(layer_norm(x, self.ln_f), self.head)

  def stream(self, tokens):
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    states = [L["attn"].init_stream(B, L["tc_active"]) for L in self.layers]
    out = []
    for t in range(T):
      x = self.wte[tokens[:, t:t + 1]]                                     # [B, 1, C]
      for L, st in zip(self.layers, states):
        x = x + L["attn"].stream_step(layer_norm(x, L["ln1"]), t, st, L["tc_active"])
        x = x + self.mlp(L, layer_norm(x, L["ln2"]))
      out.append(linear(layer_norm(x, self.ln_f), self.head))
    return np.concatenate(out, axis=1)


def forward(sd, cfg, tokens, attn_window=None):
  """The reference ``GPT.forward(tokens, attn_window=...)``: logits ``[B, T, V]`` (float64)."""
  return _Model(sd, cfg).forward(tokens, attn_window)


def stream(sd, cfg, tokens):
  """The reference ``stream_step`` loop from an empty state: logits ``[B, T, V]`` (float64)."""
  return _Model(sd, cfg).stream(tokens)


# ---------------------------------------------------------------------------------------------
# Random reference checkpoints
# ---------------------------------------------------------------------------------------------

def random_state_dict(cfg, seed=0, std=0.15):
  """A random ``state_dict`` with the reference's names and shapes for ``cfg``.

  Scales are chosen so attention is far from uniform and the memory matters: matrices
  N(0, std) (token embedding 0.3), gates around +1, decay logits in [1, 4], write-rate logits
  in [-2, 0], Infini betas N(0, 1).
  """
  c = full_config(cfg)
  rng = np.random.default_rng(seed)
  C, H, V = c["n_embd"], c["n_head"], c["vocab_size"]
  f32 = np.float32

  def mat(*shape, s=std):
    return (rng.standard_normal(shape) * s).astype(f32)

  sd = {"transformer.wte.weight": mat(V, C, s=0.3)}
  for i in range(c["n_layer"]):
    p = f"transformer.h.{i}."
    sd[p + "ln1.weight"] = (1.0 + 0.1 * rng.standard_normal(C)).astype(f32)
    sd[p + "attn.c_attn.weight"] = mat(3 * C, C)
    sd[p + "attn.c_proj.weight"] = mat(C, C, s=0.1)
    if tc_module_present(c):
      sd[p + "attn.tc.logit_decay_fast"] = rng.uniform(1.0, 4.0, H).astype(f32)
      sd[p + "attn.tc.logit_lr_fast"] = rng.uniform(-2.0, 0.0, H).astype(f32)
      if c["tc_two_timescales"]:
        sd[p + "attn.tc.logit_decay_slow"] = rng.uniform(3.0, 6.0, H).astype(f32)
        sd[p + "attn.tc.logit_lr_slow"] = rng.uniform(-3.0, -1.0, H).astype(f32)
        sd[p + "attn.tc.logit_alpha"] = rng.uniform(-1.0, 1.0, H).astype(f32)
      sd[p + "attn.tc_proj.weight"] = mat(C, C, s=0.15)
      if c["tc_per_token_gate"]:
        sd[p + "attn.tc_gate_proj.weight"] = mat(1, C, s=0.2)
        sd[p + "attn.tc_gate_proj.bias"] = np.array([1.0], f32)
      else:
        sd[p + "attn.tc_gate"] = np.array([1.0 + 0.2 * rng.standard_normal()], f32)
    if c["infini_enabled"]:
      sd[p + "attn.infini.beta"] = rng.standard_normal(H).astype(f32)
    sd[p + "ln2.weight"] = (1.0 + 0.1 * rng.standard_normal(C)).astype(f32)
    sd[p + "mlp.fc.weight"] = mat(4 * C, C)
    sd[p + "mlp.proj.weight"] = mat(C, 4 * C, s=0.1)
  sd["transformer.ln_f.weight"] = (1.0 + 0.1 * rng.standard_normal(C)).astype(f32)
  sd["lm_head.weight"] = sd["transformer.wte.weight"]
  return sd
