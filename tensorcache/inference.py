"""Streaming inference: cache construction, decode step, chunked prefill and generation.

All three run ``GPT.extend``: a decode step is a chunk of one token, a prefill is a
``lax.scan`` over prompt chunks carrying the cache (same results as token by token), and
``generate`` runs prefill and the whole sampling loop inside one ``jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tensorcache import cache as cache_lib
from tensorcache.config import ModelConfig
from tensorcache.model import GPT, check_tokens


def init_cache(cfg: ModelConfig, batch: int) -> cache_lib.Cache:
  """An empty cache; its shapes depend on the config only, never on the stream length."""
  dt = jnp.dtype(cfg.dtype)
  S = cfg.cache_size
  layers = []
  for layer in range(cfg.n_layer):
    if cfg.has_memory(layer):
      mem = cache_lib.empty_memory(batch, cfg.n_head, cfg.head_dim, cfg.normalize_read, cfg.two_timescales)
    elif cfg.mechanism == "infini":
      mem = cache_lib.empty_infini(batch, cfg.n_head, cfg.head_dim)
    else:
      mem = None
    layers.append(cache_lib.LayerCache(cache_lib.empty_kv(batch, S, cfg.n_head, cfg.head_dim, dt), mem))
  return cache_lib.Cache(jnp.zeros((), jnp.int32), jnp.full((S,), -1, jnp.int32), tuple(layers))


def _check_capacity(cfg: ModelConfig, length: int) -> None:
  if cfg.mechanism == "full" and length > cfg.max_len:
    raise ValueError(
        f"sequence of {length} tokens exceeds the full-attention cache capacity max_len={cfg.max_len}; "
        "raise max_len or use a bounded mechanism (window, sinks, infini, tc).")


@functools.partial(jax.jit, static_argnums=0)
def _extend(model: GPT, params, cache, tokens):
  return model.apply(params, tokens, cache, method=GPT.extend)


def decode_step(model: GPT, params, cache: cache_lib.Cache, tokens):
  """One token per sequence ``tokens [B]``: returns logits ``[B, V]`` and the new cache."""
  check_tokens(tokens, model.cfg.vocab_size)
  if model.cfg.mechanism == "full":
    _check_capacity(model.cfg, int(cache.pos) + 1)
  logits, cache = _extend(model, params, cache, jnp.asarray(tokens)[:, None])
  return logits[:, 0], cache


def _prefill(model: GPT, params, cache, tokens, chunk: int, all_logits: bool):
  B, T = tokens.shape
  n, rest = divmod(T, chunk)

  def body(cache, tok):
    logits, cache = model.apply(params, tok, cache, method=GPT.extend)
    return cache, logits if all_logits else logits[:, -1:]

  outs = []
  if n:
    chunks = tokens[:, : n * chunk].reshape(B, n, chunk).swapaxes(0, 1)
    cache, logits = jax.lax.scan(body, cache, chunks)
    outs.append(logits.swapaxes(0, 1).reshape(B, -1, logits.shape[-1]))
  if rest:
    cache, logits = body(cache, tokens[:, n * chunk:])
    outs.append(logits)
  logits = jnp.concatenate(outs, axis=1)
  return (logits if all_logits else logits[:, -1]), cache


_prefill_jit = jax.jit(_prefill, static_argnums=(0, 4, 5))


def prefill(model: GPT, params, tokens, cache: cache_lib.Cache | None = None, *, chunk: int = 256,
            all_logits: bool = False):
  """Streams a prompt ``[B, T]`` in chunks of ``chunk`` tokens (``lax.scan``).

  Returns the last position's logits ``[B, V]`` (or all ``[B, T, V]``) and the cache.
  Memory stays bounded for windowed mechanisms whatever ``T``.
  """
  tokens = jnp.asarray(tokens)
  check_tokens(tokens, model.cfg.vocab_size)
  if cache is None:
    cache = init_cache(model.cfg, tokens.shape[0])
  if model.cfg.mechanism == "full":
    _check_capacity(model.cfg, int(cache.pos) + tokens.shape[1])
  return _prefill_jit(model, params, cache, tokens, chunk, all_logits)


def sample_logits(rng, logits, temperature: float, top_k: int | None):
  """Greedy for ``temperature == 0``; otherwise temperature and optional top-k sampling."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 3, 5, 6, 7))
def _generate(model, params, prompt, max_new_tokens, rng, temperature, top_k, chunk):
  cache = init_cache(model.cfg, prompt.shape[0])
  logits, cache = _prefill(model, params, cache, prompt, chunk, False)

  def step(carry, rng):
    logits, cache = carry
    tok = sample_logits(rng, logits, temperature, top_k)
    logits, cache = model.apply(params, tok[:, None], cache, method=GPT.extend)
    return (logits[:, 0], cache), tok

  _, toks = jax.lax.scan(step, (logits, cache), jax.random.split(rng, max_new_tokens))
  return jnp.concatenate([prompt, toks.swapaxes(0, 1)], axis=1)


def generate(model: GPT, params, prompt, max_new_tokens: int, rng=None, *, temperature: float = 1.0,
             top_k: int | None = None, prefill_chunk: int = 256):
  """Prompt ``[B, T]`` -> ``[B, T + max_new_tokens]``; prefill and sampling in one ``jit``."""
  prompt = jnp.asarray(prompt, jnp.int32)
  check_tokens(prompt, model.cfg.vocab_size)
  _check_capacity(model.cfg, prompt.shape[1] + max_new_tokens)
  if max_new_tokens <= 0:
    return prompt
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate(model, params, prompt, max_new_tokens, rng, float(temperature), top_k, prefill_chunk)
