"""Model invariants (docs/method.md §5 parity requirement, STYLE.md habit 14).

Every test runs on perturbed parameters (``_util.perturb_params``: gates open, weights
N(0, 0.3), random decays and rates) and asserts that its comparison is meaningful, i.e.
that the same parameters without the mechanism give logits more than 1e-2 apart.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tensorcache import inference
from tensorcache import model as model_lib
from tensorcache.model import GPT

from _util import (B, T, VOCAB, assert_close, assert_differs, forward, init_model, normal, restrict_params,
                   set_param, small_config, tokens, value_and_grad)

W = 8  # small_config's window

MECH_CASES = {
    "full": dict(mechanism="full"),
    "window": dict(mechanism="window"),
    "sinks_absolute": dict(mechanism="sinks", sink_positions="absolute"),
    "sinks_cache": dict(mechanism="sinks", sink_positions="cache"),
    # Infini streams with the training segment (8): the library buffers the segment's writes
    # as pending and commits them at the segment end, so streaming equals the parallel form.
    "infini_linear": dict(mechanism="infini", infini_rule="linear"),
    "infini_delta": dict(mechanism="infini", infini_rule="delta"),
    "tc_outer": dict(mechanism="tc", rule="outer"),
    "tc_delta": dict(mechanism="tc", rule="delta"),
    "tc_wedge": dict(mechanism="tc", rule="wedge"),
    "tc_normalize_read": dict(mechanism="tc", rule="delta", normalize_read=True),
    "tc_two_timescales": dict(mechanism="tc", rule="outer", two_timescales=True),
    "tc_per_token_gate": dict(mechanism="tc", rule="delta", per_token_gate=True),
    "tc_memory_layers1": dict(mechanism="tc", rule="wedge", memory_layers=1),
    "tc_normalize_q": dict(mechanism="tc", rule="delta", normalize_q=True),
}
CASE_IDS = list(MECH_CASES)


def _seed(case: str) -> int:
  return CASE_IDS.index(case) + 1


def _closed(cfg, params):
  """The same params with the mechanism's contribution switched off (gate or mix at -1e4)."""
  if cfg.mechanism == "infini":
    return set_param(params, "beta", -1e4)
  return set_param(params, "gate_proj/bias" if cfg.per_token_gate else "gate", -1e4)


def _baseline_logits(cfg, params, toks):
  """Logits without the mechanism, same shared params: tc and infini with the gate / mix
  closed (equal to window-only, ``test_*_closed_*``), sinks and full as window-only, and
  window as full attention."""
  if cfg.mechanism in ("tc", "infini"):
    return forward(GPT(cfg), _closed(cfg, params), toks)
  other = small_config(mechanism="full" if cfg.mechanism == "window" else "window", n_layer=cfg.n_layer)
  return forward(GPT(other), restrict_params(params, other), toks)


def _decode_all(model, params, toks):
  cache = inference.init_cache(model.cfg, toks.shape[0])
  out = []
  for t in range(toks.shape[1]):
    logits, cache = inference.decode_step(model, params, cache, toks[:, t])
    out.append(logits)
  return jnp.stack(out, axis=1), cache


# ------------------------------------------------------------------ streaming == parallel


@pytest.mark.parity
@pytest.mark.parametrize("case", CASE_IDS)
def test_parallel_equals_decode_equals_prefill(case):
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=_seed(case))
  toks = tokens(_seed(case))
  parallel = forward(model, params, toks)
  assert parallel.shape == (B, T, VOCAB) and parallel.dtype == jnp.float32
  decoded, cache_dec = _decode_all(model, params, toks)
  prefilled, cache_pre = inference.prefill(model, params, toks, chunk=5, all_logits=True)
  assert_close(decoded, parallel, 1e-5, "decode_step vs parallel")
  assert_close(prefilled, parallel, 1e-5, "prefill(chunk=5) vs parallel")
  # Chunks longer than the window (the evicted pairs come partly from the chunk itself),
  # scored inside the scan: target log-probs and argmax, never the [B, T, V] logits.
  targets = tokens(_seed(case) + 800)
  (logp, argmax), _ = inference.prefill_logprobs(model, params, toks, targets, chunk=W + 3)
  want = jnp.take_along_axis(jax.nn.log_softmax(parallel, -1), targets[..., None], -1)[..., 0]
  assert logp.dtype == jnp.float32 and argmax.dtype == jnp.int32
  assert_close(logp, want, 1e-5, "prefill_logprobs(chunk=W+3) vs log_softmax of parallel")
  np.testing.assert_array_equal(argmax, jnp.argmax(parallel, -1))
  # Both streaming paths end in the same cache.
  assert int(cache_dec.pos) == int(cache_pre.pos) == T
  leaves_pre = jax.tree_util.tree_leaves(cache_pre)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(cache_dec), leaves_pre):
    assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
    if jnp.issubdtype(a.dtype, jnp.integer):
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    elif np.any(np.asarray(b) != 0):
      assert_close(a, b, 1e-5, f"cache {jax.tree_util.keystr(path)}")
  assert_differs(parallel, _baseline_logits(cfg, params, toks), what=f"{case} vs baseline")


def test_prefill_continues_from_a_cache():
  """Two prefills, split inside an Infini segment (pending writes carried in the cache),
  equal one parallel pass."""
  case = "infini_delta"
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=_seed(case))
  toks = tokens(_seed(case) + 50)
  parallel = forward(model, params, toks)
  first, cache = inference.prefill(model, params, toks[:, :21], chunk=5, all_logits=True)
  last, cache = inference.prefill(model, params, toks[:, 21:], cache, chunk=5)
  assert first.shape == (B, 21, VOCAB) and last.shape == (B, VOCAB)
  assert_close(first, parallel[:, :21], 1e-5, "first prefill")
  assert_close(last, parallel[:, -1], 1e-5, "continued prefill, last logits")
  assert int(cache.pos) == T


# ------------------------------------------------------------------ implementations agree


IMPL_CASES = {
    **{c: MECH_CASES[c] for c in ("tc_outer", "tc_delta", "tc_wedge", "tc_normalize_read", "tc_normalize_q",
                                  "window", "full")},
    "tc_two_timescales_delta": dict(mechanism="tc", rule="delta", two_timescales=True),
    "tc_delta_window_lt_chunk": dict(mechanism="tc", rule="delta", chunk=16),  # W = 8 < C = 16
    "tc_wedge_normalize_read": dict(mechanism="tc", rule="wedge", normalize_read=True),
}


def _assert_grads_close(got, want, tol=1e-5):
  """Every leaf of two gradient trees agrees to ``tol`` (relative), named by its path."""
  flat_want = jax.tree_util.tree_leaves_with_path(want)
  flat_got = jax.tree_util.tree_leaves(got)
  assert len(flat_want) == len(flat_got)
  for (path, b), a in zip(flat_want, flat_got):
    assert_close(a, b, tol, f"grad {jax.tree_util.keystr(path)}")


@pytest.mark.parity
@pytest.mark.parametrize("case", list(IMPL_CASES))
def test_reference_and_xla_impls_agree(case):
  """Dense attention + per-token recurrence vs chunked attention + chunked scan, logits and
  every gradient (one layer: the dispatch is per layer; sinks are covered in test_attention).
  small_config has W = 8 > C = 4 and T = 37, a multiple of neither."""
  cfg = small_config(**IMPL_CASES[case], n_layer=1)
  seed = list(IMPL_CASES).index(case) + 1
  toks = tokens(seed + 100)
  _, params = init_model(cfg, seed=seed)
  (loss_ref, l_ref), g_ref = value_and_grad(GPT(cfg.replace(impl="reference")), params, toks)
  (loss_xla, l_xla), g_xla = value_and_grad(GPT(cfg.replace(impl="xla")), params, toks)
  assert_close(l_xla, l_ref, 1e-5, "logits")
  assert_close(loss_xla, loss_ref, 1e-5, "loss")
  _assert_grads_close(g_xla, g_ref)
  if cfg.mechanism == "tc":  # the memory matters (same compiled function, gate closed)
    (_, l_closed), _ = value_and_grad(GPT(cfg.replace(impl="xla")), _closed(cfg, params), toks)
    assert_differs(l_xla, l_closed, what="memory on vs off")


@pytest.mark.parametrize("remat", ["memory", "block"])
@pytest.mark.parametrize("case", ["tc_delta", "tc_two_timescales"])
def test_remat_changes_nothing(case, remat):
  """Recomputing the memory scan (or whole blocks) in the backward gives the same loss and
  gradients as storing them (two layers, so a remat'ed block feeds another), and the
  backward keeps fewer residuals."""
  cfg = small_config(**MECH_CASES[case], impl="xla")
  toks = tokens(_seed(case) + 200)
  _, params = init_model(cfg, seed=_seed(case))

  def residual_floats(c):
    vjp = lambda p: jax.vjp(lambda p: GPT(c).apply(p, toks), p)[1]
    return sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(vjp, params)))

  assert residual_floats(cfg.replace(remat=remat)) < residual_floats(cfg)
  (loss, _), g = value_and_grad(GPT(cfg), params, toks)
  (loss_r, _), g_r = value_and_grad(GPT(cfg.replace(remat=remat)), params, toks)
  assert_close(loss_r, loss, 1e-6, "loss")
  _assert_grads_close(g_r, g)


@pytest.mark.parametrize("loss_block", [1, 8, 36, 64])
def test_loss_block_changes_nothing(loss_block):
  """The head and cross entropy over blocks of positions (T = 37: the last block padded;
  64 >= T: one block) give the per-token losses and gradients of whole logits."""
  cfg = small_config(**MECH_CASES["tc_delta"], impl="xla")
  toks = tokens(301)
  targets = jax.random.randint(jax.random.PRNGKey(302), toks.shape, 0, VOCAB)
  cot = jax.random.uniform(jax.random.PRNGKey(303), toks.shape, minval=0.5, maxval=1.5)
  _, params = init_model(cfg, seed=304)

  def whole(p):
    return optax.softmax_cross_entropy_with_integer_labels(GPT(cfg).apply(p, toks), targets)

  def blocked(p):
    return GPT(cfg.replace(loss_block=loss_block)).apply(p, toks, targets, method=GPT.token_losses)

  (ce, pull), (ce_b, pull_b) = jax.vjp(whole, params), jax.vjp(blocked, params)
  assert ce_b.shape == (B, T)
  assert_close(ce_b, ce, 1e-6, "per-token loss")
  _assert_grads_close(pull_b(cot)[0], pull(cot)[0])


def test_half_precision_head_rounds_only_its_operands_and_cotangent():
  """A bf16 model's tied head: float32 logits of the bf16-rounded operands; its gradients
  are products of the bf16-rounded logit cotangent, rounded to bf16 (what mixed-precision
  training does). Against NumPy float64 products of the same roundings the bf16 gradients
  agree bit for bit (all but a rare rounding tie: >= 99 %); without rounding the cotangent
  only about 60 % would."""
  cfg = small_config(dtype="bfloat16")
  h, emb, cot = normal(311, (2, 5, 32)), normal(312, (VOCAB, 32)), normal(313, (2, 5, VOCAB))
  logits, pull = jax.vjp(lambda h, e: model_lib.head_logits(h, e, cfg), h, emb)
  bf = lambda x: np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  h16, e16, g16, g = bf(h), bf(emb), bf(cot), np.asarray(cot, np.float64)
  assert logits.dtype == jnp.float32
  assert_close(logits, np.einsum("btm,vm->btv", h16, e16), 1e-6, "logits")
  for got, spec, other in zip(pull(cot), ("btv,vm->btm", "btv,btm->vm"), (e16, h16)):
    got = np.asarray(got, np.float64)
    assert np.mean(got == bf(np.einsum(spec, g16, other))) >= 0.99
    assert np.mean(got == bf(np.einsum(spec, g, other))) < 0.9  # the cotangent's rounding shows


# ------------------------------------------------------------------ causality


PROBES = (0, W - 1, W, 2 * W + 3, T - 2)


@pytest.mark.parametrize("case", CASE_IDS)
def test_causality_by_token_change(case):
  """Changing the tokens after t leaves logits[:, :t+1] bitwise identical (every mechanism;
  the gradient form below differentiates w.r.t. the embedded inputs)."""
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=_seed(case))
  toks = tokens(_seed(case) + 200)
  base = np.asarray(forward(model, params, toks))
  for t in PROBES:
    bump = jax.random.randint(jax.random.PRNGKey(t), (B, T - t - 1), 1, VOCAB)
    changed = toks.at[:, t + 1:].set((toks[:, t + 1:] + bump) % VOCAB)
    out = np.asarray(forward(model, params, changed))
    np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1], err_msg=f"t={t}")
    assert np.max(np.abs(out[:, t + 1:] - base[:, t + 1:])) > 1e-3, f"t={t}: the change had no effect"


def _embeddings_to_logits(module, x):
  """GPT.__call__ after the embedding lookup, so jax can differentiate w.r.t. the inputs."""
  for block in module.blocks:
    x = block(x)
  return module._head(x)


@functools.partial(jax.jit, static_argnums=0)
def _input_grad(model, params, x, t, cot):
  """Logits of the embedded input x and d <logits[:, t], cot> / d x."""
  def f(x):
    logits = model.apply(params, x, method=_embeddings_to_logits)
    return jnp.sum(logits[:, t] * cot), logits
  grad, logits = jax.grad(f, has_aux=True)(x)
  return logits, grad


GRAD_CAUSALITY_CASES = ["full", "window", "sinks_cache", "infini_delta", "tc_delta", "tc_memory_layers1"]


@pytest.mark.parametrize("case", GRAD_CAUSALITY_CASES)
def test_causality_by_gradient(case):
  """d logits[:, t] / d x[:, s] is exactly zero for s > t and nonzero at s = t (x: embedded
  input, the blocks applied through ``model.apply(..., method=fn)``).

  Reach of the last position: the first token (beyond two windows, two layers) influences
  it through the memory, the sinks or full attention, never through the window alone.
  """
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=_seed(case))
  toks = tokens(_seed(case) + 300)
  x = jnp.take(params["params"]["wte"]["embedding"], toks, axis=0)
  cot = jax.random.normal(jax.random.PRNGKey(7), (B, VOCAB))
  logits, _ = _input_grad(model, params, x, 0, cot)
  assert_close(logits, forward(model, params, toks), 1e-5, "embedding-input forward")
  for t in PROBES + (T - 1,):
    g = np.asarray(_input_grad(model, params, x, t, cot)[1])
    np.testing.assert_array_equal(g[:, t + 1:], 0.0, err_msg=f"t={t}: future inputs leak")
    assert np.all(np.abs(g[:, t]).max(-1) > 0), f"t={t}: own input has no gradient"
  g_last = np.asarray(_input_grad(model, params, x, T - 1, cot)[1])
  reaches_first = bool(np.all(np.abs(g_last[:, 0]).max(-1) > 0))
  assert reaches_first == (cfg.mechanism != "window"), f"{case}: reach of position 0 is {reaches_first}"


# ------------------------------------------------------------------ reductions


@pytest.mark.parametrize("case", ["tc_delta", "tc_per_token_gate", "infini_delta"])
def test_closed_gate_equals_window(case):
  """tc with the gate (or per-token gate bias) at -1e4, infini with beta at -1e4: exactly the
  window-only model with the shared parameters (tc-only / infini-only params dropped)."""
  cfg = small_config(**MECH_CASES[case])
  model, params = init_model(cfg, seed=_seed(case))
  toks = tokens(_seed(case) + 400)
  win_cfg = small_config(mechanism="window")
  want = forward(GPT(win_cfg), restrict_params(params, win_cfg), toks)
  open_logits = forward(model, params, toks)
  assert_differs(open_logits, want, what="open gate vs window")
  if cfg.mechanism == "tc":  # the memory is empty before step W: window-only logits there
    assert_close(open_logits[:, :W], want[:, :W], 1e-6, "positions < W")
  closed = _closed(cfg, params)
  assert_close(forward(model, closed, toks), want, 1e-6, "closed gate, parallel")
  streamed, _ = inference.prefill(model, closed, toks, chunk=5, all_logits=True)
  # 1e-5: streaming L1 sums its cache and chunk blocks apart (float32 reassociation).
  assert_close(streamed, want, 1e-5, "closed gate, prefill")


def test_window_at_least_sequence_equals_full():
  full_cfg = small_config(mechanism="full")
  model_full, params = init_model(full_cfg, seed=5)
  toks = tokens(402)
  want = forward(model_full, params, toks)
  win = GPT(full_cfg.replace(mechanism="window", window=T))
  assert_close(forward(win, params, toks), want, 1e-5, "parallel, window = T")
  streamed, _ = inference.prefill(win, params, toks, chunk=5, all_logits=True)
  assert_close(streamed, want, 1e-5, "prefill, window = T")
  wider = GPT(full_cfg.replace(mechanism="window", window=2 * T))
  assert_close(forward(wider, params, toks), want, 1e-5, "parallel, window = 2T")
  short = GPT(full_cfg.replace(mechanism="window", window=T // 2))
  assert_differs(forward(short, params, toks), want, what="window < T vs full")


def test_sinks_cache_positions_reindex_only_full_cache():
  """StreamingLLM in-cache positions: a query scores the sinks from its cache slot
  ``min(t, W - 1)``. Until the cache is full (t <= W - 1) that is its absolute position, so
  the logits equal absolute-position sinks; from t = W on they differ at every position."""
  cfg = small_config(**MECH_CASES["sinks_cache"])
  model, params = init_model(cfg, seed=_seed("sinks_cache"))
  toks = tokens(403)
  cache_pos = np.asarray(forward(model, params, toks))
  absolute = np.asarray(forward(GPT(cfg.replace(sink_positions="absolute")), params, toks))
  assert_close(cache_pos[:, :W], absolute[:, :W], 1e-6, "t < W")
  per_position = np.abs(cache_pos - absolute).max(axis=(0, 2)) / np.abs(absolute).max()
  assert np.all(per_position[W:] > 1e-4), per_position


# ------------------------------------------------------------------ bounded cache


@pytest.mark.parametrize("case", ["window", "sinks_absolute", "tc_delta", "infini_delta"])
def test_cache_pytree_does_not_grow(case):
  """The cache after 100 and after 10,000 streamed tokens has the same pytree of shapes and
  dtypes (100 prefill calls of 100 tokens: one compile)."""
  cfg = small_config(**MECH_CASES[case]).replace(d_model=16, n_layer=1, n_head=2)
  model, params = init_model(cfg, seed=_seed(case))
  spec = lambda c: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), c)
  stream = tokens(500, 1, 10_000)
  cache = inference.init_cache(cfg, 1)
  empty = spec(cache)
  for i in range(100):
    logits, cache = inference.prefill(model, params, stream[:, 100 * i: 100 * (i + 1)], cache, chunk=100)
    if i == 0:
      after_100 = spec(cache)
      assert int(cache.pos) == 100
  assert int(cache.pos) == 10_000
  assert spec(cache) == after_100 == empty
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(cache))


# ------------------------------------------------------------------ gradients


def _attn_grads(grads, layer):
  return grads["params"][f"blocks_{layer}"]["attn"]


@pytest.mark.parametrize("case", ["tc_delta", "tc_two_timescales"])
def test_memory_parameters_receive_gradients(case):
  cfg = small_config(**MECH_CASES[case])
  assert T > 2 * cfg.window  # the memory is read
  model, params = init_model(cfg, seed=_seed(case))
  (loss, _), grads = value_and_grad(model, params, tokens(600))
  assert np.isfinite(loss)
  names = ["decay_logit", "lr_logit", "gate"]
  if cfg.two_timescales:
    names += ["decay_slow_logit", "lr_slow_logit", "alpha_logit"]
  for layer in range(cfg.n_layer):
    g = _attn_grads(grads, layer)
    for name in names:
      assert np.all(np.isfinite(g[name])) and np.all(g[name] != 0), f"layer {layer} {name}: {g[name]}"
    kernel = np.asarray(g["tc_proj"]["kernel"])
    assert np.all(np.isfinite(kernel)) and np.mean(kernel != 0) > 0.9, f"layer {layer} tc_proj"


def test_freeze_decay_lr_stops_their_gradients():
  cfg = small_config(**MECH_CASES["tc_two_timescales"], freeze_decay_lr=True)
  model, params = init_model(cfg, seed=9)
  _, grads = value_and_grad(model, params, tokens(601))
  for layer in range(cfg.n_layer):
    g = _attn_grads(grads, layer)
    for name in ("decay_logit", "lr_logit", "decay_slow_logit", "lr_slow_logit"):
      np.testing.assert_array_equal(g[name], 0.0, err_msg=f"layer {layer} {name}")
    for name in ("gate", "alpha_logit"):
      assert np.all(g[name] != 0), f"layer {layer} {name} should still train"
    assert np.any(g["tc_proj"]["kernel"] != 0)


# ------------------------------------------------------------------ generation


def test_generate_greedy_and_top_k_one():
  """Greedy tokens are the argmax of the parallel forward on the generated sequence; top_k=1
  sampling (any temperature, any key) is greedy."""
  case = "tc_delta"
  model, params = init_model(small_config(**MECH_CASES[case]), seed=_seed(case))
  T0, n = 10, 20
  prompt = tokens(700, B, T0)
  out = inference.generate(model, params, prompt, n, jax.random.PRNGKey(1), temperature=0.0,
                           prefill_chunk=5)
  assert out.shape == (B, T0 + n) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out[:, :T0], prompt)
  assert int(out.min()) >= 0 and int(out.max()) < VOCAB
  logits = forward(model, params, out)
  np.testing.assert_array_equal(out[:, T0:], jnp.argmax(logits[:, T0 - 1:-1], axis=-1))
  # At temperature 1.5 without top_k, 40 sampled tokens would not all be the argmax.
  top1 = inference.generate(model, params, prompt, n, jax.random.PRNGKey(2), temperature=1.5, top_k=1,
                            prefill_chunk=5)
  np.testing.assert_array_equal(top1, out)


def test_top_k_keeps_exactly_k_candidates_under_ties():
  """Tied logits: ``top_k=2`` samples only the two candidates ``lax.top_k`` picks (not every
  token tied with the second), and both of them."""
  logits = jnp.zeros((3, 7)).at[:, 5].set(1.0)  # one best token, then a six-way tie
  draws = jax.vmap(lambda key: inference.sample_logits(key, logits, 1.0, 2))(
      jax.random.split(jax.random.PRNGKey(3), 400))
  _, idx = jax.lax.top_k(logits, 2)
  for row in range(3):
    assert set(np.unique(np.asarray(draws[:, row]))) == set(np.asarray(idx[row]).tolist())
  for shape in [(7,), (2, 3, 7)]:  # any leading dims
    draw = inference.sample_logits(jax.random.PRNGKey(4), jnp.broadcast_to(logits[0], shape), 1.0, 2)
    assert draw.shape == shape[:-1] and set(np.unique(np.asarray(draw))) <= set(np.asarray(idx[0]).tolist())


def test_generate_zero_new_tokens_returns_prompt():
  model, params = init_model(small_config(), seed=1)
  prompt = tokens(701, B, 6)
  np.testing.assert_array_equal(inference.generate(model, params, prompt, 0), prompt)


@pytest.mark.parametrize("lead", [(1, 1), (3, 5), (4, 4), (2, 9)])
def test_gemm_dot_is_the_dense_product(lead):
  """``gemm_dot`` (fewer than 16 rows padded with zero rows) equals ``x @ kernel`` for 1, 15,
  16 and 18 rows, and refuses a contraction that is not Dense's."""
  x = normal(61, lead + (32,))
  kernel = normal(62, (32, 48))
  got = model_lib.gemm_dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision="highest")
  assert got.shape == lead + (48,)
  assert_close(got, np.asarray(x, np.float64) @ np.asarray(kernel, np.float64), 1e-6, f"{lead}")
  with pytest.raises(ValueError, match="Dense's contraction"):
    model_lib.gemm_dot(x, kernel.T, (((x.ndim - 1,), (1,)), ((), ())))
