"""Shared test helpers: small configs, random inputs, parameter perturbation, error metrics.

At init the memory barely touches the logits (gate ``sigma(-2)``, weights N(0, 0.02)), so
an equality test on init params could pass with a wrong memory. ``perturb_params`` makes
every part of the model matter; equivalence tests also assert, with ``assert_differs``, that
the comparison would have noticed a missing component.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from tensorcache.config import ModelConfig
from tensorcache.model import GPT

# Small shapes: T is not a multiple of the memory chunk (4), the attention block (8), the
# Infini segment (8) or the prefill chunk (5); T > 4W so the memory is read a lot.
B, T, VOCAB = 2, 37, 64
SMALL = dict(
    vocab_size=VOCAB, n_layer=2, n_head=2, d_model=32, window=8, chunk=4, attn_block=8,
    infini_segment=8, num_sinks=2, max_len=64)


def small_config(**changes) -> ModelConfig:
  return ModelConfig(**{**SMALL, **changes})


def rel_err(a, b) -> float:
  """``max|a - b| / max|b|`` in float64."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), "non-finite values"
  denom = np.max(np.abs(b))
  assert denom > 0, "reference is identically zero: the comparison would be vacuous"
  return float(np.max(np.abs(a - b)) / denom)


def assert_close(a, b, tol: float, what: str = "") -> None:
  err = rel_err(a, b)
  assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def assert_differs(a, b, min_rel: float = 1e-2, what: str = "") -> None:
  """The comparison is meaningful: ``a`` and ``b`` differ by more than ``min_rel``."""
  err = rel_err(a, b)
  assert err > min_rel, f"{what}: only {err:.3g} apart; the equality test would be vacuous"


def tokens(seed: int, batch: int = B, length: int = T, vocab: int = VOCAB):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, vocab, jnp.int32)


def normal(seed: int, shape, scale: float = 1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _flat(params):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params))


def perturb_params(params, rng, std: float = 0.3):
  """Fresh random weights under which every mechanism visibly contributes.

  Dense kernels and the embedding: N(0, std). LayerNorm scales: 1 + N(0, 0.1). Gates
  (``gate``, per-token gate bias): +2 (sigma = 0.88). Per head: ``decay_logit`` in [1, 4]
  (lam in [0.73, 0.98]), ``lr_logit`` in [-2, 0] (eta in [0.12, 0.5]), slow timescale
  decay in [3, 6] and rate in [-3, -1], ``alpha_logit`` and Infini ``beta`` N(0, 1).
  Every leaf is replaced (``params`` may be ``jax.eval_shape`` structs). An unknown
  parameter name fails loudly so new parameters are not silently left at init.

  One padded ``jax.random`` draw feeds all leaves: one small compile per process instead of
  one per leaf shape.
  """
  flat = _flat(params)
  sizes = [int(np.prod(x.shape)) for x in flat.values()]
  pad = -(-sum(sizes) // 65536) * 65536
  k_normal, k_uniform = jax.random.split(rng)
  normals = np.asarray(jax.random.normal(k_normal, (pad,), jnp.float32))
  uniforms = np.asarray(jax.random.uniform(k_uniform, (pad,), jnp.float32))
  out, offset = {}, 0
  for size, (path, x) in zip(sizes, flat.items()):
    n = normals[offset:offset + size].reshape(x.shape)
    u = uniforms[offset:offset + size].reshape(x.shape)
    offset += size
    name, parent = path[-1], path[-2]
    if name in ("kernel", "embedding"):
      new = std * n
    elif name == "scale":
      new = 1.0 + 0.1 * n
    elif name == "gate" or (parent == "gate_proj" and name == "bias"):
      new = np.full(x.shape, 2.0)
    elif name == "decay_logit":
      new = 1.0 + 3.0 * u
    elif name == "lr_logit":
      new = -2.0 + 2.0 * u
    elif name == "decay_slow_logit":
      new = 3.0 + 3.0 * u
    elif name == "lr_slow_logit":
      new = -3.0 + 2.0 * u
    elif name in ("alpha_logit", "beta"):
      new = n
    else:
      raise KeyError(f"perturb_params does not know parameter {'/'.join(path)}")
    out[path] = jnp.asarray(new, x.dtype)
  return flax.traverse_util.unflatten_dict(out)


def init_model(cfg: ModelConfig, seed: int = 0):
  """``(model, params)`` with perturbed random params (shapes from ``eval_shape(init)``)."""
  model = GPT(cfg)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  return model, perturb_params(shapes, jax.random.PRNGKey(seed))


def restrict_params(params, cfg: ModelConfig):
  """``params`` restricted to the parameters of a ``cfg`` model (drops mechanism-only ones)."""
  like = jax.eval_shape(GPT(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  flat = _flat(params)
  want = _flat(like)
  missing = set(want) - set(flat)
  assert not missing, f"params lack {missing}"
  return flax.traverse_util.unflatten_dict({p: flat[p] for p in want})


def set_param(params, name: str, value: float):
  """Sets every leaf called ``name`` (e.g. ``gate``, or ``bias`` under ``gate_proj``) to ``value``."""
  flat = _flat(params)
  hits = 0
  for path in flat:
    if "/".join(path).endswith(name):
      flat[path] = jnp.full_like(flat[path], value)
      hits += 1
  assert hits, f"no parameter named {name}"
  return flax.traverse_util.unflatten_dict(flat)


@functools.partial(jax.jit, static_argnums=0)
def forward(model: GPT, params, toks):
  """Parallel logits; jitted with the (hashable) model static, so compiles are shared
  by every test of a process that uses the same config."""
  return model.apply(params, toks)


def nll(model: GPT, params, toks):
  """Mean next-token cross-entropy and the logits."""
  logits = model.apply(params, toks)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return -jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1).mean(), logits


# Loss and gradient w.r.t. params (and the logits as aux), compiled once per config.
value_and_grad = jax.jit(jax.value_and_grad(nll, argnums=1, has_aux=True), static_argnums=0)


def cache_positions(size: int, num_sinks: int, pos: int) -> np.ndarray:
  """Slot positions after streaming positions ``0 .. pos - 1`` (sinks, then a ring)."""
  held = np.full(size, -1)
  for p in range(pos):
    held[p if p < num_sinks else num_sinks + (p - num_sinks) % (size - num_sinks)] = p
  return held


def attention_oracle(q, k_c, v_c, pos_c, k, v, pos_p, window, num_sinks, q_sink, use_cache=True):
  """Per query, per head: a float64 softmax over the visible keys, listed one by one (cache
  ``[B, H, S, D]``, chunk ``[B, P, H, D]``)."""
  q, k_c, v_c, k, v = (np.asarray(x, np.float64) for x in (q, k_c, v_c, k, v))
  qs = q if q_sink is None else np.asarray(q_sink, np.float64)
  keys = [(k_c[:, :, s], v_c[:, :, s], int(pos_c[s])) for s in range(k_c.shape[2]) if use_cache]
  keys += [(k[:, j], v[:, j], int(pos_p[j])) for j in range(k.shape[1])]
  out = np.zeros_like(q)
  for i, t in enumerate(np.asarray(pos_p)):
    seen = [(kk, vv, s) for kk, vv, s in keys
            if 0 <= s <= t and (window is None or s > t - window or s < num_sinks)]
    scores = np.stack([np.einsum("bhd,bhd->bh", qs[:, i] if s < num_sinks else q[:, i], kk)
                       for kk, _, s in seen], -1) / np.sqrt(q.shape[-1])
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, i] = np.einsum("bhs,sbhd->bhd", p, np.stack([vv for _, vv, _ in seen]))
  return out
