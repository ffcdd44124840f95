"""Misuse fails early with a message that says what is wrong (and, where possible, the fix)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorcache import dispatch, inference, memory
from tensorcache.config import ModelConfig

from _util import B, VOCAB, init_model, normal, small_config, tokens


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize("field,value,match", [
    ("mechanism", "windw", r"Unknown mechanism 'windw'.*did you mean 'window'"),
    ("mechanism", "tensor_cache", r"Unknown mechanism 'tensor_cache'"),
    ("rule", "deltas", r"Unknown rule 'deltas'.*did you mean 'delta'"),
    ("rule", "hebbian", r"Unknown rule 'hebbian'; choose one of \('outer', 'delta', 'wedge'\)"),
    ("memory_mode", "exactly", r"Unknown memory_mode 'exactly'.*did you mean 'exact'"),
    ("memory_mode", "mean", r"Unknown memory_mode 'mean'"),
    ("infini_rule", "outer", r"Unknown infini_rule 'outer'"),
    ("impl", "pallas_gpu", r"Unknown impl 'pallas_gpu'"),
])
def test_unknown_choice(field, value, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig(**{field: value})


@pytest.mark.parametrize("mechanism", ["window", "sinks", "infini", "tc"])
@pytest.mark.parametrize("window", [0, -3])
def test_windowed_mechanism_needs_positive_window(mechanism, window):
  with pytest.raises(ValueError, match=rf"mechanism '{mechanism}' needs window > 0 \(got {window}\)"):
    ModelConfig(mechanism=mechanism, window=window)


def test_full_attention_ignores_window():
  assert ModelConfig(mechanism="full", window=0).l1_window(training=False) is None


@pytest.mark.parametrize("num_sinks,window", [(8, 8), (9, 8), (0, 8), (-1, 8)])
def test_sinks_must_fit_in_window(num_sinks, window):
  with pytest.raises(ValueError, match=r"sinks needs 0 < num_sinks < window"):
    ModelConfig(mechanism="sinks", num_sinks=num_sinks, window=window)
  ModelConfig(mechanism="tc", num_sinks=num_sinks, window=window)  # only sinks uses num_sinks


def test_d_model_divisible_by_n_head():
  with pytest.raises(ValueError, match=r"d_model=30 is not divisible by n_head=4"):
    ModelConfig(d_model=30, n_head=4)


def test_replace_unknown_field_names_close_match():
  cfg = small_config()
  with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['windw'\].*'window'"):
    cfg.replace(windw=1)
  with pytest.raises(ValueError, match=r"unknown_field"):
    cfg.replace(unknown_field=1)


def test_replace_validates_new_values():
  with pytest.raises(ValueError, match=r"needs window > 0"):
    small_config().replace(window=0)
  assert small_config().replace(window=4).window == 4


def test_memory_functions_reject_unknown_rule():
  x = normal(0, (1, 5, 2, 4))
  g = jnp.zeros((5, 2))
  eta = jnp.full((2,), 0.1)
  A = normal(1, (1, 2, 4, 4))
  msg = r"Unknown memory write rule 'hebb'; choose one of \('outer', 'delta', 'wedge'\)"
  with pytest.raises(ValueError, match=msg):
    memory.memory_recurrence(x, x, x, g, eta, A, "hebb")
  with pytest.raises(ValueError, match=msg):
    memory.memory_scan(x, x, x, g, eta, A, "hebb", 4)
  with pytest.raises(ValueError, match=msg):
    memory.chunk_start_scan(x, x, x, g[0], jnp.ones((5,), bool), eta, A, "hebb", 4, mean=False)


def test_unknown_impl_in_dispatch():
  with pytest.raises(ValueError, match="pallas_tpu"):
    dispatch.Impl("pallas_tpu")


# ------------------------------------------------------------------ token ids


@pytest.fixture(scope="module")
def window_model():
  return init_model(small_config(mechanism="window"), seed=0)


@pytest.fixture(scope="module")
def full_model():
  return init_model(small_config(mechanism="full", max_len=16), seed=0)


BAD_IDS = {"too_large": VOCAB, "negative": -1}


@pytest.mark.parametrize("bad", list(BAD_IDS))
def test_bad_token_ids(window_model, bad):
  model, params = window_model
  toks = tokens(1, B, 12).at[1, 5].set(BAD_IDS[bad])
  match = rf"token ids must lie in \[0, {VOCAB}\)"
  with pytest.raises(ValueError, match=match):
    model.apply(params, toks)
  with pytest.raises(ValueError, match=match):  # host ids are checked
    inference.decode_step(model, params, inference.init_cache(model.cfg, B), np.asarray(toks[:, 5]))
  # Device ids are not read back (no host sync per step): the bad row's logits are NaN.
  logits, _ = inference.decode_step(model, params, inference.init_cache(model.cfg, B), toks[:, 5])
  assert bool(jnp.all(jnp.isnan(logits[1]))) and bool(jnp.all(jnp.isfinite(logits[0])))
  with pytest.raises(ValueError, match=match):
    inference.prefill(model, params, toks, chunk=4)
  with pytest.raises(ValueError, match=match):
    inference.generate(model, params, toks, 3, jax.random.PRNGKey(0))


def test_streaming_shapes_and_arguments_checked(window_model):
  """Impossible shapes and arguments get an error naming the argument, before any compile:
  an empty prompt, ids of the wrong rank, more rows than the cache holds, and generation
  settings out of range."""
  model, params = window_model
  toks = tokens(8, B, 6)
  cache = lambda: inference.init_cache(model.cfg, B)
  for call, match in [
      (lambda: inference.prefill(model, params, toks[:, :0]), r"at least one token; got shape \(2, 0\)"),
      (lambda: inference.prefill(model, params, toks[0]), r"shape \[batch, length\]"),
      (lambda: inference.prefill(model, params, toks, inference.init_cache(model.cfg, B + 1)),
       rf"{B} sequences of token ids for a cache of {B + 1}"),
      (lambda: inference.prefill(model, params, toks, chunk=0), "chunk must be an integer >= 1"),
      (lambda: inference.prefill_logprobs(model, params, toks, toks, chunk=-4), "chunk must be an integer >= 1"),
      (lambda: inference.decode_step(model, params, cache(), toks[:, :1]), r"shape \[batch\]"),
      (lambda: inference.decode_step(model, params, cache(), toks[:1, 0]),
       rf"1 sequences of token ids for a cache of {B}"),
      (lambda: inference.generate(model, params, toks[:, :0], 3), "at least one token"),
      (lambda: inference.generate(model, params, toks, -3), "max_new_tokens must be an integer >= 0"),
      (lambda: inference.generate(model, params, toks, 3, temperature=-1.0), "temperature must be finite and >= 0"),
      (lambda: inference.generate(model, params, toks, 3, temperature=float("nan")), "temperature must be finite"),
      (lambda: inference.generate(model, params, toks, 3, top_k=0), "top_k must be an integer >= 1"),
      (lambda: inference.generate(model, params, toks, 3, prefill_chunk=0), "prefill_chunk must be an integer >= 1"),
  ]:
    with pytest.raises(ValueError, match=match):
      call()


def test_float_token_ids_rejected(window_model):
  """Float ids are refused, never truncated, whether they come from the host or the device."""
  model, params = window_model
  ids = 1.7 * jnp.ones((B, 4), jnp.float32)
  for call in (lambda: model.apply(params, ids), lambda: inference.prefill(model, params, ids),
               lambda: inference.decode_step(model, params, inference.init_cache(model.cfg, B), ids[:, 0]),
               lambda: inference.generate(model, params, ids, 2)):
    with pytest.raises(TypeError, match="token ids must be integers"):
      call()


def test_explicit_sharding_refused_by_name(window_model):
  """Ids sharded in explicit mode, or any call under an explicit mesh, get one error naming
  the mode and the fix (JAX's own error comes from deep inside the embedding gather), for
  training, prefill and generation; the same ids on an automatic mesh run."""
  model, params = window_model
  axis = jax.sharding.AxisType
  toks = tokens(9, B, 6)
  explicit = jax.make_mesh((B,), ("data",), axis_types=(axis.Explicit,), devices=jax.devices()[:B])
  auto = jax.make_mesh((B,), ("data",), axis_types=(axis.Auto,), devices=jax.devices()[:B])
  put = lambda mesh: jax.device_put(toks, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  calls = [lambda t: model.apply(params, t), lambda t: inference.prefill(model, params, t, chunk=3)[0],
           lambda t: inference.generate(model, params, t, 2, temperature=0.0, prefill_chunk=3)]
  for call in calls:
    with pytest.raises(ValueError, match=r"sharded in explicit mode.*tensorcache.sharding.make_mesh"):
      call(put(explicit))
    with jax.set_mesh(explicit), pytest.raises(ValueError, match=r"sharded in explicit mode"):
      call(toks)
    assert np.all(np.isfinite(np.asarray(call(put(auto)), np.float32)))


# ------------------------------------------------------------------ full-attention capacity


def test_full_cache_capacity_prefill(full_model):
  model, params = full_model
  match = r"sequence of 17 tokens exceeds the full-attention cache capacity max_len=16"
  with pytest.raises(ValueError, match=match):
    inference.prefill(model, params, tokens(2, B, 17), chunk=4)
  _, cache = inference.prefill(model, params, tokens(3, B, 10), chunk=4)
  with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds"):
    inference.prefill(model, params, tokens(4, B, 7), cache, chunk=4)


def test_full_cache_capacity_under_a_callers_jit(full_model):
  """A prefill traced by the caller's ``jit`` with a fresh cache still checks the capacity
  (the prompt's length is static); with a traced cache it cannot read the start back."""
  model, params = full_model
  with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds"):
    jax.jit(lambda t: inference.prefill(model, params, t, chunk=4)[0])(tokens(2, B, 17))


def test_full_cache_capacity_generate(full_model):
  """The last sampled token is never fed through the model: 10 + 7 tokens need 16 slots."""
  model, params = full_model
  out = inference.generate(model, params, tokens(5, B, 10), 7, jax.random.PRNGKey(0))
  assert out.shape == (B, 17) and int(out.min()) >= 0 and int(out.max()) < VOCAB
  with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds .* max_len=16"):
    inference.generate(model, params, tokens(5, B, 10), 8, jax.random.PRNGKey(0))


def test_full_cache_capacity_decode_step(full_model):
  """A decode step does not read the position back to the host: past capacity its logits are
  NaN (the step's slot would wrap onto the oldest token)."""
  model, params = full_model
  cache = inference.init_cache(model.cfg, B)
  toks = tokens(6, B, 18)
  for t in range(16):  # exactly max_len tokens fit
    logits, cache = inference.decode_step(model, params, cache, toks[:, t])
  assert bool(jnp.all(jnp.isfinite(logits)))
  for t in (16, 17):
    logits, cache = inference.decode_step(model, params, cache, toks[:, t])
    assert bool(jnp.all(jnp.isnan(logits))), f"step {t}"


def test_bounded_mechanisms_have_no_capacity_limit(window_model):
  model, params = window_model
  logits, cache = inference.prefill(model, params, tokens(7, B, 3 * model.cfg.max_len), chunk=64)
  assert int(cache.pos) == 3 * model.cfg.max_len and bool(jnp.all(jnp.isfinite(logits)))
