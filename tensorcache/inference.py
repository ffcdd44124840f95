"""Streaming inference: cache construction, decode step, chunked prefill and generation.

All of them run ``GPT.extend``: a decode step is a chunk of one token, a prefill is a
``lax.scan`` over prompt chunks carrying the cache (same results as token by token), and
``generate`` runs prefill and the whole sampling loop inside one ``jit``.

The cache given to ``decode_step`` or ``prefill`` is donated: the call consumes it (its
buffers are updated in place) and returns the new one. Nothing is read back from the device
per step: token ids and the ``full`` cache's capacity are checked on the host where the
values are there already (host ids, prompt lengths); inside ``jit`` bad input yields NaN
logits instead (``GPT.extend``).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from tensorcache import cache as cache_lib
from tensorcache.config import ModelConfig
from tensorcache.model import GPT, check_tokens

PREFILL_CHUNK = 256  # tokens per prefill scan step, by default


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


def compute_params(cfg: ModelConfig, params):
  """``params`` with the matrices the model multiplies in its compute dtype (Dense kernels and
  the embedding) cast to ``cfg.dtype``, the rest (norm scales, decay and gate parameters)
  as they are.

  The model casts those matrices itself before every product, so its outputs are the same
  bit for bit; casting them once before a stream saves the per-step casts. Inside a decode
  loop a float32 copy cast per token is most of the step's traffic at small batch (GPT-124M,
  batch 1: the weights read as float32 and written back in bf16 every token). ``prefill``,
  ``prefill_logprobs`` and ``generate`` cast once per call; for a Python loop of
  ``decode_step``, cast once before it (casting cast parameters again costs nothing).
  """
  dt = jnp.dtype(cfg.dtype)

  def cast(path, x):
    return x.astype(dt) if getattr(path[-1], "key", None) in ("kernel", "embedding") else x

  return jax.tree_util.tree_map_with_path(cast, params)


def _check_capacity(cfg: ModelConfig, length: int) -> None:
  if cfg.mechanism == "full" and length > cfg.max_len:
    raise ValueError(
        f"sequence of {length} tokens exceeds the full-attention cache capacity max_len={cfg.max_len}; "
        "raise max_len or use a bounded mechanism (window, sinks, infini, tc).")


def _check_integer(tokens) -> None:
  """Float ids are refused (never truncated), from the host or the device: a static check."""
  if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
    raise TypeError(f"token ids must be integers, got dtype {jnp.result_type(tokens)}.")


def _check_prompt(tokens) -> None:
  """Integer ids of shape ``[batch, length]``, at least one token."""
  _check_integer(tokens)
  if jnp.ndim(tokens) != 2 or not jnp.shape(tokens)[1]:
    raise ValueError(f"a prompt must have shape [batch, length] with at least one token; got shape "
                     f"{jnp.shape(tokens)}.")


def _check_batch(tokens, cache: cache_lib.Cache, ndim: int, shape: str) -> None:
  """Static checks on the host: integer ``tokens`` of rank ``ndim`` (``shape`` names it), as
  many rows as the cache holds sequences."""
  _check_integer(tokens)
  if jnp.ndim(tokens) != ndim:
    raise ValueError(f"token ids must have shape {shape}; got shape {jnp.shape(tokens)}.")
  rows = cache.layers[0].kv.k.shape[0]
  if jnp.shape(tokens)[0] != rows:
    raise ValueError(f"{jnp.shape(tokens)[0]} sequences of token ids for a cache of {rows}; make the cache "
                     f"with init_cache(cfg, {jnp.shape(tokens)[0]}).")


def _count(name: str, value, least: int, what: str) -> int:
  """``value`` as an int of at least ``least``, or a ValueError naming ``name``."""
  try:
    n = None if isinstance(value, bool) else operator.index(value)
  except TypeError:
    n = None
  if n is None or n < least:
    raise ValueError(f"{name} must be an integer >= {least} ({what}); got {value!r}.")
  return n


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _extend(model: GPT, params, cache, tokens):
  return model.apply(compute_params(model.cfg, params), tokens, cache, method=GPT.extend)


def decode_step(model: GPT, params, cache: cache_lib.Cache, tokens):
  """One token per sequence ``tokens [B]``: returns logits ``[B, V]`` and the new cache.

  ``cache`` is donated; ``params`` may be ``compute_params(cfg, params)``, cast once before
  a loop of steps. Host ids (NumPy, lists) are checked; device arrays are not read back, so a
  step never waits for the device: an id outside ``[0, V)``, or a step past the ``full``
  cache's ``max_len``, gives NaN logits instead of an error.
  """
  if not isinstance(tokens, jax.Array):
    check_tokens(tokens, model.cfg.vocab_size)
  _check_batch(tokens, cache, 1, "[batch] (one token per sequence)")
  logits, cache = _extend(model, params, cache, jnp.asarray(tokens, jnp.int32)[:, None])
  return logits[:, 0], cache


def _stream(model: GPT, mode: str, chunk: int, params, cache, tokens, targets):
  """``GPT.extend`` over ``tokens [B, T]`` from ``cache``: a ``lax.scan`` over chunks of
  ``chunk`` tokens, then the remainder. Returns ``(out, cache)``; ``out`` per ``mode``:

  * ``"last"``: the last position's logits ``[B, V]``, carried through the scan;
  * ``"all"``: the logits ``[B, T, V]``;
  * ``"targets"``: ``(log p(targets) [B, T] float32, argmax [B, T] int32)``, each chunk's
    computed from its logits inside its step.

  Only ``"all"`` keeps anything of size ``T x V``. The cache comes in as an argument, never
  made inside: an empty cache built under ``jit`` is a constant, and XLA constant-folds the
  first chunk's attention against it (GPT-124M ``generate`` at batch 64 on a 2-core CPU host:
  78.1 s to compile with the cache made inside, 6.8 s with it passed in;
  ``benchmarks/compile_generate.py``, ``results/inference/compile_generate_cpu.jsonl``).
  """
  B, T = tokens.shape
  params = compute_params(model.cfg, params)  # once, not per chunk
  last = jnp.zeros((B, model.cfg.vocab_size), jnp.float32) if mode == "last" else None

  def step(carry, xs):
    cache, last = carry
    tok, tgt = xs
    logits, cache = model.apply(params, tok, cache, last_only=mode == "last", method=GPT.extend)
    if mode == "last":
      return (cache, logits[:, 0]), None
    if mode == "all":
      return (cache, last), logits
    logp = jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0] - jax.nn.logsumexp(logits, -1)
    return (cache, last), (logp, jnp.argmax(logits, -1).astype(jnp.int32))

  n = T // chunk
  carry, outs = (cache, last), []
  if n:
    chunks = jax.tree.map(lambda x: x[:, :n * chunk].reshape(B, n, chunk).swapaxes(0, 1), (tokens, targets))
    carry, out = jax.lax.scan(step, carry, chunks)
    outs.append(jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(B, n * chunk, *y.shape[3:]), out))
  if T > n * chunk:
    carry, out = step(carry, jax.tree.map(lambda x: x[:, n * chunk:], (tokens, targets)))
    outs.append(out)
  cache, last = carry
  if mode == "last":
    return last, cache
  return jax.tree.map(lambda *ys: jnp.concatenate(ys, axis=1), *outs), cache


_stream_jit = jax.jit(_stream, static_argnums=(0, 1, 2), donate_argnums=4)


def _checked_prompt(model: GPT, tokens, cache, chunk: int):
  """Ids and shapes checked on the host (once per call) and, under ``full``, the capacity
  (which reads ``cache.pos`` back when a cache is continued: once per call, never per step;
  not when the cache is traced by a caller's ``jit``). Returns the tokens as an int32 array,
  the cache (a fresh one for None: made here, outside ``jit``, see ``_stream``) and the chunk."""
  check_tokens(tokens, model.cfg.vocab_size)
  chunk = _count("chunk", chunk, 1, "tokens per prefill step")
  _check_prompt(tokens)
  if model.cfg.mechanism == "full":  # where the prompt starts: read back only from a concrete cache
    start = 0 if cache is None else None if isinstance(cache.pos, jax.core.Tracer) else int(cache.pos)
    if start is not None:
      _check_capacity(model.cfg, start + jnp.shape(tokens)[1])
  cache = init_cache(model.cfg, jnp.shape(tokens)[0]) if cache is None else cache
  _check_batch(tokens, cache, 2, "[batch, length]")
  return jnp.asarray(tokens, jnp.int32), cache, chunk


def prefill(model: GPT, params, tokens, cache: cache_lib.Cache | None = None, *, chunk: int = PREFILL_CHUNK,
            all_logits: bool = False):
  """Streams a prompt ``[B, T]`` through ``cache`` (default: a fresh one; donated) in chunks
  of ``chunk`` tokens (``lax.scan``).

  Returns the last position's logits ``[B, V]`` (or all ``[B, T, V]``) and the new cache.
  Besides the tokens and the requested logits nothing grows with ``T``: device memory is
  bounded for windowed mechanisms whatever the prompt length.
  """
  tokens, cache, chunk = _checked_prompt(model, tokens, cache, chunk)
  return _stream_jit(model, "all" if all_logits else "last", chunk, params, cache, tokens, None)


def prefill_logprobs(model: GPT, params, tokens, targets, cache: cache_lib.Cache | None = None, *,
                     chunk: int = PREFILL_CHUNK):
  """``prefill`` scoring ``targets [B, T]`` (e.g. the next tokens) inside the scan.

  Returns ``((log p(targets) [B, T] float32, argmax [B, T] int32), cache)``: each position's
  target log-probability and most likely token. A chunk's logits live only in its scan step,
  so no ``[B, T, V]`` array exists and a 1M-token stream scores in bounded memory.
  """
  tokens, cache, chunk = _checked_prompt(model, tokens, cache, chunk)
  check_tokens(targets, model.cfg.vocab_size)
  targets = jnp.asarray(targets, jnp.int32)
  if targets.shape != tokens.shape:
    raise ValueError(f"targets {targets.shape} and tokens {tokens.shape} must have one shape.")
  return _stream_jit(model, "targets", chunk, params, cache, tokens, targets)


def sample_logits(rng, logits, temperature: float, top_k: int | None):
  """Greedy for ``temperature == 0``; otherwise temperature and optional top-k sampling
  (exactly ``top_k`` candidates per row, ties at the k-th logit broken by ``lax.top_k``).
  ``logits [..., V]``."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    _, idx = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))
    keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), idx, True, axis=-1, inplace=False)
    logits = jnp.where(keep, logits, -jnp.inf)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 6, 7, 8), donate_argnums=2)
def _generate(model, params, cache, prompt, max_new_tokens, rng, temperature, top_k, chunk):
  params = compute_params(model.cfg, params)
  logits, cache = _stream(model, "last", chunk, params, cache, prompt, None)

  def step(carry, rng):
    logits, cache = carry
    tok = sample_logits(rng, logits, temperature, top_k)
    logits, cache = model.apply(params, tok[:, None], cache, method=GPT.extend)
    return (logits[:, 0], cache), tok

  rngs = jax.random.split(rng, max_new_tokens)  # the last token is sampled, never fed back
  (logits, cache), toks = jax.lax.scan(step, (logits, cache), rngs[:-1])
  last = sample_logits(rngs[-1], logits, temperature, top_k)
  return jnp.concatenate([prompt, toks.swapaxes(0, 1), last[:, None]], axis=1), cache  # cache: in place


def generate(model: GPT, params, prompt, max_new_tokens: int, rng=None, *, temperature: float = 1.0,
             top_k: int | None = None, prefill_chunk: int = PREFILL_CHUNK):
  """Prompt ``[B, T]`` -> ``[B, T + max_new_tokens]``; prefill and sampling in one ``jit``.
  ``temperature`` 0 is greedy; ``top_k`` (None: all) limits the candidates per token. The
  last sampled token is not fed through the model, so a ``full`` cache needs ``T +
  max_new_tokens - 1`` slots."""
  check_tokens(prompt, model.cfg.vocab_size)
  _check_prompt(prompt)
  prompt = jnp.asarray(prompt, jnp.int32)
  max_new_tokens = _count("max_new_tokens", max_new_tokens, 0, "tokens to sample")
  if not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature must be finite and >= 0 (0: greedy); got {temperature!r}.")
  top_k = None if top_k is None else _count("top_k", top_k, 1, "candidates per token, or None for all")
  prefill_chunk = _count("prefill_chunk", prefill_chunk, 1, "tokens per prefill step")
  if max_new_tokens == 0:
    return prompt
  _check_capacity(model.cfg, prompt.shape[1] + max_new_tokens - 1)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  cache = init_cache(model.cfg, prompt.shape[0])  # outside jit: see _stream
  return _generate(model, params, cache, prompt, max_new_tokens, rng, float(temperature), top_k, prefill_chunk)[0]
