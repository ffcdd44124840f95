"""Sequence parallelism on 8 fake CPU devices: every sharded forward and gradient equals the
unsharded one (float32, relative <= 1e-5).

Per-shard functions against oracles that share no code with them (the dense L1 mask, the
per-token memory recurrence), for shard lengths below, equal to and above the window; the
whole model for every mechanism and rule with ``seq`` beside ``data`` / ``fsdp``; a few
train steps on ``seq = 2`` against ``seq = 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from test_train import fixed_batch, step_config
from tensorcache import GPT, cache as cache_lib, dispatch, memory, optim, seq_parallel, sharding, train
from tensorcache.config import ModelConfig
from tensorcache.train_step import forward

RTOL = 1e-5
B, H, D = 2, 2, 8


def seq_mesh(n: int) -> Mesh:
  return Mesh(np.asarray(jax.devices()[:n]), (sharding.SEQ,))


def randn(seed: int, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def assert_close(got, want, rtol=RTOL):
  """Relative to the largest magnitude of each leaf of ``want``."""
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = np.abs(b).max()
    assert scale > 0, "a comparison against zeros proves nothing"
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=rtol * scale)


def value_and_vjp(fn, args, seed):
  """``fn(*args)`` and the gradient of ``<fn(*args), w>`` for a fresh random ``w``, jitted
  (collectives run compiled, never op by op)."""

  def run(*args):
    out, pull = jax.vjp(fn, *args)
    w = jax.tree.map(lambda o: randn(seed, o.shape), out)
    return out, pull(w)

  return jax.jit(run)(*args)


def sharded(fn, n, n_args, out_specs=P(None, sharding.SEQ)):
  """``fn`` per shard of the positions (axis 1 of every argument) on an ``n``-device ring."""
  return jax.shard_map(fn, mesh=seq_mesh(n), in_specs=(P(None, sharding.SEQ),) * n_args, out_specs=out_specs)


# ------------------------------------------------------------------ per-shard functions


@pytest.mark.parametrize("n,T_shard,m", [(4, 3, 2), (4, 3, 7), (8, 2, 15), (2, 5, 0)])
def test_preceding_fetches_the_halo_over_as_many_hops_as_needed(n, T_shard, m):
  x = randn(0, (B, n * T_shard, 3))
  got = jax.jit(sharded(lambda a: seq_parallel.preceding(a, m, sharding.SEQ), n, 1))(x)
  want = np.concatenate([np.zeros((B, m, 3), np.float32), np.asarray(x)], axis=1)
  want = np.concatenate([want[:, i * T_shard: i * T_shard + m] for i in range(n)], axis=1)
  np.testing.assert_array_equal(got, want)


# (window, num_sinks) on 4 shards of 6: shard length above, equal to, below the window
# (the last reaching back over 3 shards, into the sinks).
@pytest.mark.parametrize("window,num_sinks", [(4, 0), (6, 0), (15, 0), (4, 2), (13, 3)])
def test_window_attention_equals_the_dense_oracle(window, num_sinks):
  n, T = 4, 24
  q, k, v, qs = (randn(i, (B, T, H, D)) for i in range(4))
  q_sink = qs if num_sinks else None
  recent = window - num_sinks

  def ref(q, k, v):
    return dispatch.l1_attention(q, k, v, window=recent, num_sinks=num_sinks, q_sink=q_sink, impl="reference")

  def shard(q, k, v, qs):
    return seq_parallel.window_attention(q, k, v, axis=sharding.SEQ, window=recent, num_sinks=num_sinks,
                                         q_sink=qs if num_sinks else None, block=4, impl="xla")

  want = value_and_vjp(ref, (q, k, v), 7)
  got = value_and_vjp(lambda q, k, v: sharded(shard, n, 4)(q, k, v, qs), (q, k, v), 7)
  assert_close(got, want)


@pytest.mark.parametrize("balanced", [False, True])
def test_ring_attention_equals_full_causal_attention(balanced):
  n, T = 4, 24
  q, k, v = (randn(i, (B, T, H, D)) for i in range(3))
  order = seq_parallel.zigzag_order(T, n) if balanced else np.arange(T)

  def shard(q, k, v):
    return seq_parallel.ring_attention(q, k, v, axis=sharding.SEQ, block=2, balanced=balanced)

  want = value_and_vjp(lambda q, k, v: dispatch.l1_attention(q, k, v, window=None, impl="reference")[:, order],
                       (q, k, v), 3)
  got = value_and_vjp(lambda q, k, v: sharded(shard, n, 3)(q[:, order], k[:, order], v[:, order]), (q, k, v), 3)
  assert_close(got, want)


@pytest.mark.parametrize("rule,normalizer,read_first,impl", [
    ("outer", False, False, "xla"), ("wedge", True, True, "xla"), ("delta", False, True, "xla"),
    ("delta", True, False, "xla"), ("delta", False, False, "reference")])
def test_memory_scan_equals_the_per_token_recurrence(rule, normalizer, read_first, impl):
  """A write stream over 4 shards of 5 (chunk 2: chunks straddle nothing, the state crosses
  every shard boundary); the first 3 steps write nothing, as before the first eviction. The
  reads, the normaliser's ``q . z`` and the final state (on every shard) against the
  per-token recurrence; ``reference`` runs the delta rule's map phase separately."""
  n, T = 4, 20
  q, k, v = randn(0, (B, T, H, D)), randn(1, (B, T, H, D)), randn(2, (B, T, H, D))
  valid = jnp.arange(T) >= 3
  k = k * valid[None, :, None, None]
  g = memory.log_decay(jnp.log(jax.random.uniform(jax.random.PRNGKey(3), (H,), minval=0.7, maxval=0.95)), valid)
  eta = jax.random.uniform(jax.random.PRNGKey(4), (H,), minval=0.2, maxval=0.6)

  def ref(q, k, v, eta):
    qn, kn, vn = memory.prepare(q, k, v, normalize_q=True)
    z0 = jnp.zeros((B, H, D)) if normalizer else None
    r, qz, A, z = memory.memory_recurrence(qn, kn, vn, g, eta, jnp.zeros((B, H, D, D)), rule, read_first, z0)
    return (r, qz, jnp.broadcast_to(A, (n,) + A.shape)) if normalizer else (r, jnp.broadcast_to(A, (n,) + A.shape))

  def shard(q, k, v, g):
    r, qz, A, _ = seq_parallel.memory_scan(q, k, v, g, eta, normalizer=normalizer, axis=sharding.SEQ, rule=rule,
                                           chunk=2, read_first=read_first, normalize_q=True, impl=impl)
    return (r, qz, A[None]) if normalizer else (r, A[None])

  specs = (P(None, sharding.SEQ),) * 3 + (P(sharding.SEQ),)
  out_specs = (P(None, sharding.SEQ),) * (1 + normalizer) + (P(sharding.SEQ),)
  run = jax.shard_map(shard, mesh=seq_mesh(n), in_specs=specs, out_specs=out_specs)
  want = value_and_vjp(lambda q, k, v: ref(q, k, v, eta), (q, k, v), 5)
  got = value_and_vjp(lambda q, k, v: run(q, k, v, g), (q, k, v), 5)
  assert_close(got, want)


def test_delta_scan_on_shards_through_the_state_kernel(monkeypatch):
  """``Impl.AUTO`` as it runs on a GPU (the CUDA branch; the state kernel in Pallas interpret
  mode) under ``shard_map``: each shard's entering state is a function of its own map, so the
  kernel carries the widened state. Reads, final state and gradients against the per-token
  recurrence, over 4 shards of 16 (chunk 16, head dim 16: the kernel's smallest)."""
  kernel = dispatch.delta_states_ops.delta_states
  monkeypatch.setattr(jax.lax, "platform_dependent", lambda *a, cuda, default: cuda(*a))
  monkeypatch.setattr(dispatch.delta_states_ops, "delta_states",
                      lambda *a, precision: kernel(*a, interpret=True))
  n, T, Dk = 4, 64, 16
  q, k, v = randn(10, (B, T, H, Dk)), randn(11, (B, T, H, Dk)), randn(12, (B, T, H, Dk))
  g = memory.log_decay(jnp.log(jax.random.uniform(jax.random.PRNGKey(13), (H,), minval=0.7, maxval=0.99)),
                       jnp.ones((T,), bool))
  eta = jax.random.uniform(jax.random.PRNGKey(14), (H,), minval=0.2, maxval=0.9)

  def ref(q, k, v):
    qn, kn, vn = memory.prepare(q, k, v, normalize_q=False)
    r, _, A, _ = memory.memory_recurrence(qn, kn, vn, g, eta, jnp.zeros((B, H, Dk, Dk)), "delta", False)
    return r, jnp.broadcast_to(A, (n,) + A.shape)

  def shard(q, k, v, g):
    r, _, A, _ = seq_parallel.memory_scan(q, k, v, g, eta, normalizer=False, axis=sharding.SEQ, rule="delta",
                                          chunk=16)
    return r, A[None]

  # Pallas' interpreter loops over the grid with carries it cannot type per mesh axis, so this
  # shard_map runs unchecked; the typed trace of the CUDA branch is test_train_steps_on_seq_2_equal_seq_1.
  run = jax.shard_map(shard, mesh=seq_mesh(n), in_specs=(P(None, sharding.SEQ),) * 3 + (P(sharding.SEQ),),
                      out_specs=(P(None, sharding.SEQ), P(sharding.SEQ)), check_vma=False)
  want = value_and_vjp(ref, (q, k, v), 15)
  got = value_and_vjp(lambda q, k, v: run(q, k, v, g), (q, k, v), 15)
  assert_close(got, want)


@pytest.mark.parametrize("rule,segment", [("linear", 3), ("delta", 6), ("delta", 64)])
def test_infini_scan_carries_the_state_across_shards(rule, segment):
  n, T = 4, 24
  q, k, v = (randn(i, (B, T, H, D)) for i in range(3))
  empty = cache_lib.empty_infini(B, H, D)
  if segment >= T:  # every token reads the empty state: zero reads, on one device and sharded
    got = jax.jit(sharded(lambda q, k, v: seq_parallel.infini_scan(q, k, v, axis=sharding.SEQ, rule=rule,
                                                                   segment=segment), n, 3))(q, k, v)
    np.testing.assert_array_equal(got, dispatch.infini_scan(q, k, v, empty, rule=rule, segment=segment)[0])
    return
  want = value_and_vjp(lambda q, k, v: dispatch.infini_scan(q, k, v, empty, rule=rule, segment=segment)[0],
                       (q, k, v), 2)
  shard = lambda q, k, v: seq_parallel.infini_scan(q, k, v, axis=sharding.SEQ, rule=rule, segment=segment)
  got = value_and_vjp(sharded(shard, n, 3), (q, k, v), 2)
  assert_close(got, want)


# ------------------------------------------------------------------ the model

# T = 32 over seq = 4: shards of 8 against windows of 12 (<), 8 (=) and 4 (>).
MODELS = {
    "full": dict(mechanism="full"),
    "window_dense": dict(mechanism="window", train_window=False),  # full causal, zigzag
    "window": dict(mechanism="window", window=12),
    "sinks": dict(mechanism="sinks", window=10, num_sinks=3, sink_positions="cache"),
    "infini": dict(mechanism="infini", window=4, infini_segment=4, infini_rule="delta"),
    "tc_outer": dict(mechanism="tc", rule="outer", window=12),
    "tc_wedge": dict(mechanism="tc", rule="wedge", window=8, normalize_read=True),
    "tc_delta": dict(mechanism="tc", rule="delta", window=4),
    "tc_delta_options": dict(mechanism="tc", rule="delta", window=8, compat="reference", two_timescales=True,
                             per_token_gate=True, normalize_q=True),
}


def model_case(name):
  cfg = ModelConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, chunk=4, attn_block=8, decay_init=0.8,
                    lr_init=0.3, gate_init=0.5, **MODELS[name])
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 32), 0, cfg.vocab_size)
  params = GPT(cfg).init(jax.random.PRNGKey(0), tokens)
  return cfg, tokens, params


# (data, fsdp, seq): seq beside data, and beside fsdp for one case.
@pytest.mark.parametrize("name,mesh_shape", [(m, (1, 2, 4) if m == "tc_delta" else (2, 1, 4)) for m in MODELS])
def test_sharded_model_equals_one_device(name, mesh_shape):
  cfg, tokens, params = model_case(name)
  mesh = sharding.make_mesh(mesh_shape[0], mesh_shape[1], seq=mesh_shape[2])
  assert cfg.seq_balanced == (name in ("full", "window_dense"))

  def sharded_logits(params):
    x = sharding.to_seq_layout(tokens, mesh, cfg.seq_balanced)
    return sharding.from_seq_layout(forward(params, x, cfg, mesh)[0], mesh, cfg.seq_balanced)

  want = value_and_vjp(lambda p: GPT(cfg).apply(p, tokens), (params,), 9)
  got = value_and_vjp(sharded_logits, (params,), 9)
  assert_close(got, want)


def test_sharded_blockwise_loss_equals_one_device():
  """The training loss path under ``seq`` (per-token cross entropy computed per shard, the
  head over blocks of 3 positions, which straddle nothing) against whole logits on one device."""
  cfg, tokens, params = model_case("tc_delta")
  targets = jax.random.randint(jax.random.PRNGKey(7), tokens.shape, 0, cfg.vocab_size)
  mesh = sharding.make_mesh(2, 1, seq=4)

  def sharded(params):
    x, t = (sharding.to_seq_layout(a, mesh, cfg.seq_balanced) for a in (tokens, targets))
    ce = forward(params, x, cfg.replace(loss_block=3), mesh, targets=t)[0]
    return sharding.from_seq_layout(ce, mesh, cfg.seq_balanced)

  want = value_and_vjp(lambda p: optax.softmax_cross_entropy_with_integer_labels(GPT(cfg).apply(p, tokens), targets),
                       (params,), 8)
  assert_close(value_and_vjp(sharded, (params,), 8), want)


def test_bfloat16_sharded_model_matches_one_device():
  """The compute dtype of GPU training: logits and the gradient vector within bf16 rounding
  (a bf16 sum in another order moves a near-cancelling 1-element gradient by tens of percent,
  so the gradient is compared as one vector)."""
  cfg, tokens, params = model_case("tc_delta")
  cfg = cfg.replace(dtype="bfloat16")
  mesh = sharding.make_mesh(2, 1, seq=4)
  want = value_and_vjp(lambda p: GPT(cfg).apply(p, tokens), (params,), 4)
  got = value_and_vjp(lambda p: forward(p, tokens, cfg, mesh)[0], (params,), 4)
  assert_close(got[0], want[0], rtol=2e-2)
  flat = lambda t: np.concatenate([np.ravel(x).astype(np.float32) for x in jax.tree.leaves(t)])
  g_got, g_want = flat(got[1]), flat(want[1])
  assert np.linalg.norm(g_got - g_want) <= 2e-2 * np.linalg.norm(g_want)


def test_unsupported_memory_modes_raise():
  cfg, tokens, params = model_case("tc_delta")
  cfg = cfg.replace(memory_mode="chunk_mean")
  with pytest.raises(NotImplementedError, match="exact"):
    jax.eval_shape(lambda p: forward(p, tokens, cfg, sharding.make_mesh(2, 1, seq=4)), params)


# ------------------------------------------------------------------ the trainer


def losses(config, mesh, steps: int = 3):
  spec = train.StepSpec(train.model_config(config.model), optim.optim_config(config.optim, config.train.steps),
                        mesh, bool(config.train.internal_metrics), bool(config.train.fast_compile))
  state, _ = train.create_train_state(spec, int(config.train.seed))
  step = train.make_train_step(spec)
  out = []
  for i in range(steps):
    state, metrics = step(state, sharding.shard_batch(fixed_batch(config, seed=i), mesh))
    out.append(float(metrics["loss"]))
  return np.asarray(out)


@pytest.mark.parametrize("mechanism", ["tc", "full"])
def test_train_steps_on_seq_2_equal_seq_1(mechanism):
  config = step_config()
  with config.unlocked():
    config.model.mechanism = mechanism
  one = losses(config, sharding.make_mesh(-1, 1, jax.devices()[:2]))
  two = losses(config, sharding.make_mesh(-1, 1, seq=2))  # data 4 x seq 2
  assert np.ptp(one) > 1e-3  # the steps trained
  np.testing.assert_allclose(two, one, rtol=1e-5)


# ------------------------------------------------------------------ evaluation


def test_sharded_evaluation_equals_streaming():
  """Long-context NLL from the parallel forward split over seq = 4 equals the streaming pass."""
  from tensorcache import evaluate
  cfg, tokens, params = model_case("tc_delta")
  inputs = np.asarray(tokens)
  targets = np.roll(inputs, -1, axis=1)
  want = evaluate.streaming_logprobs(GPT(cfg), params, inputs, targets, chunk=8, batch=4)
  compiles = evaluate._sharded_logprobs._cache_size  # pylint: disable=protected-access
  before = compiles()
  got = evaluate.sharded_logprobs(cfg, params, inputs, targets, 4, batch=4)
  assert_close(got, want)
  assert compiles() == before + 1
  again = evaluate.sharded_logprobs(cfg, params, targets, inputs, 4, batch=4)  # other ids, same shapes
  assert compiles() == before + 1, "a second call of one shape compiled again"
  assert np.abs(again - got).max() > 1e-2 * np.abs(got).max()  # it scored the other ids
  with pytest.raises(ValueError, match="seq_shards"):
    evaluate.sharded_logprobs(cfg.replace(compat="reference"), params, inputs, targets, 4)
