"""``tensorcache.convert``: the authors' PyTorch checkpoints reproduce their model exactly.

Three layers of evidence:

1. Golden logits produced by the PyTorch reference itself (``tests/data/reference_tc_outer.npz``)
   are reproduced by the converted model (parallel forward and streaming prefill) and by the
   NumPy oracle ``reference_numpy`` (which validates the oracle).
2. For every mechanism and rule, a random reference ``state_dict`` (the reference's names and
   shapes, scales chosen so every part matters) is converted and our model is compared with
   the oracle in both of the reference's regimes: the training-style full forward and the
   token-by-token streaming loop (our chunked prefill, chunk 1 and 5). Each case also checks
   that the comparison is meaningful (the feature under test changes the oracle's logits).
3. Errors on configs and state_dicts we cannot reproduce, and the ``.pt`` route.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

import reference_numpy as ref_np
from tensorcache import convert, inference
from tensorcache.model import GPT

DATA = pathlib.Path(__file__).parent / "data" / "reference_tc_outer.npz"
TOL = 1e-4          # absolute, on logits of magnitude ~1-10
MEANINGFUL = 1e-3   # a removed feature must move the oracle's logits by more than this
B, T = 2, 40        # memory chunks of 7 (the last, partial, of 5), Infini segments of 6 (last of 4),
                    # prefill chunks of 5
KV_WINDOW = 8


@functools.lru_cache(maxsize=None)
def _golden():
  z = np.load(DATA)
  ref = json.loads(str(z["config_json"]))
  sd = {k[2:]: z[k] for k in z.files if k.startswith("w.")}
  return z, ref, sd


def _max_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _ours_parallel(cfg, params, tokens):
  return np.asarray(jax.jit(GPT(cfg).apply)(params, tokens))


def _ours_stream(cfg, params, tokens, chunk):
  logits, _ = inference.prefill(GPT(cfg), params, tokens, chunk=chunk, all_logits=True)
  return np.asarray(logits)


# -------------------------------------------------------------------------------------------
# 1. Golden logits from the PyTorch reference
# -------------------------------------------------------------------------------------------

def test_oracle_reproduces_golden_logits():
  z, ref, sd = _golden()
  full = ref_np.forward(sd, ref, z["tokens"], attn_window=ref["kv_window"])
  stream = ref_np.stream(sd, ref, z["tokens"])
  assert _max_err(full, z["logits_full"]) <= TOL
  assert _max_err(stream, z["logits_stream"]) <= TOL
  # The two regimes genuinely differ in the reference (its train/inference mismatch).
  assert _max_err(z["logits_full"], z["logits_stream"]) > 1e-2


def test_golden_full_forward():
  z, ref, sd = _golden()
  cfg = convert.config_from_reference(ref)
  assert cfg.mechanism == "tc" and cfg.rule == "outer" and cfg.compat == "reference"
  params = convert.params_from_state_dict(sd, cfg)
  assert _max_err(_ours_parallel(cfg, params, z["tokens"]), z["logits_full"]) <= TOL


@pytest.mark.parametrize("chunk", [1, 7])
def test_golden_streaming(chunk):
  z, ref, sd = _golden()
  cfg = convert.config_from_reference(ref)
  params = convert.params_from_state_dict(sd, cfg)
  assert _max_err(_ours_stream(cfg, params, z["tokens"], chunk), z["logits_stream"]) <= TOL


# -------------------------------------------------------------------------------------------
# 2. Every mechanism and rule against the NumPy oracle
# -------------------------------------------------------------------------------------------

def _preset(ref: dict, mode: str) -> dict:
  """The reference's ``GPTConfig.apply_kv_mode`` on a config dict."""
  ref = dict(ref, use_kv_cache=True, tc_enabled=False, infini_enabled=False, kv_num_sinks=0)
  if mode == "full_kv":
    ref["kv_window"] = 0
  elif mode == "tc":
    ref.update(tc_enabled=True, tc_write_on_evict=True)
  elif mode == "streaming_llm":
    ref["kv_num_sinks"] = 4
  elif mode == "infini":
    ref["infini_enabled"] = True
  else:
    assert mode == "window_kv", mode
  return ref


def _small_ref(mode: str, **changes) -> dict:
  _, golden_ref, _ = _golden()
  ref = dict(golden_ref, n_layer=2, n_head=4, n_embd=64, vocab_size=96, block_size=64,
             kv_window=KV_WINDOW, tc_chunk_size=7, infini_segment_size=6)
  ref = _preset(ref, mode)
  ref.update(changes)
  return ref


def _tokens(ref, seed=1):
  return np.random.default_rng(seed).integers(0, ref["vocab_size"], (B, T)).astype(np.int32)


def _constant_gate(sd):
  """The per-token gate made constant (its weight zeroed): the same gate for every token."""
  return {k: np.zeros_like(v) if k.endswith("tc_gate_proj.weight") else v for k, v in sd.items()}


# name: (kv_mode, reference config changes, [oracle config changes, or state_dict edits, that
# each remove a feature under test]). Features share cases where they compose, to keep the number of compiles down;
# the scalar gate with the outer rule is the golden model's configuration.
CASES = {
    "tc_outer_per_token_gate": ("tc", dict(tc_update_rule="outer", tc_per_token_gate=True), [_constant_gate]),
    "tc_delta_normalize_q_value_scale_ntk": (
        "tc", dict(tc_update_rule="delta", tc_normalize_q=True, tc_value_scale=0.5, rope_scaling_factor=2.0),
        [dict(tc_update_rule="outer"), dict(tc_normalize_q=False), dict(tc_value_scale=1.0),
         dict(rope_scaling_factor=1.0)]),
    "tc_wedge": ("tc", dict(tc_update_rule="wedge", tc_freeze_decay_lr=True), [dict(tc_update_rule="outer")]),
    "tc_normalize_read": ("tc", dict(tc_update_rule="delta", tc_normalize_read=True, tc_normalize_read_eps=0.5),
                          [dict(tc_normalize_read=False)]),
    "tc_two_timescales": ("tc", dict(tc_update_rule="delta", tc_two_timescales=True), [dict(tc_two_timescales=False)]),
    "window_kv": ("window_kv", {}, []),
    "streaming_llm": ("streaming_llm", {}, [dict(kv_num_sinks=0)]),
    "full_kv": ("full_kv", {}, []),
    "infini_linear": ("infini", dict(infini_update_rule="linear"), [dict(infini_enabled=False)]),
    "infini_delta": ("infini", dict(infini_update_rule="delta"), [dict(infini_update_rule="linear")]),
}


def _check_case(ref, mode, sd, tokens, params, variants):
  """Our model vs the oracle in both regimes; returns the max errors."""
  cfg = convert.config_from_reference(ref, kv_mode=mode)
  if params is None:
    params = convert.params_from_state_dict(sd, cfg)
  # The reference trains tc / infini with its window, full / window / sinks dense.
  attn_window = ref["kv_window"] if mode in ("tc", "infini") else None
  want_full = ref_np.forward(sd, ref, tokens, attn_window=attn_window)
  want_stream = ref_np.stream(sd, ref, tokens)

  errs = {"full": _max_err(_ours_parallel(cfg, params, tokens), want_full)}
  for chunk in (1, 5):
    errs[f"stream_c{chunk}"] = _max_err(_ours_stream(cfg, params, tokens, chunk), want_stream)
  assert max(errs.values()) <= TOL, errs

  # Meaningful: the comparison would notice the feature under test missing.
  if mode == "full_kv":
    # Unbounded cache: streaming equals the dense forward, and differs from a window of W.
    assert _max_err(want_full, want_stream) < 1e-9
    windowed = ref_np.stream(sd, dict(ref, kv_window=KV_WINDOW), tokens)
    assert _max_err(windowed, want_stream) > MEANINGFUL
  else:
    # Streaming (window of W) is not the dense / W+1-key training forward.
    assert _max_err(want_full, want_stream) > MEANINGFUL
  if mode == "tc":
    removed = dict(ref, tc_layers=0)
    assert _max_err(ref_np.forward(sd, removed, tokens, attn_window), want_full) > MEANINGFUL
    assert _max_err(ref_np.stream(sd, removed, tokens), want_stream) > MEANINGFUL
  for variant in variants:
    if callable(variant):  # a change of weights
      other, other_sd = ref, variant(sd)
    else:                  # a change of config
      other, other_sd = dict(ref, **variant), sd
    assert _max_err(ref_np.stream(other_sd, other, tokens), want_stream) > MEANINGFUL, variant
    if mode in ("tc", "infini"):  # sinks change nothing in the dense training forward
      assert _max_err(ref_np.forward(other_sd, other, tokens, attn_window), want_full) > MEANINGFUL, variant
  return errs


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_oracle(name):
  mode, changes, variants = CASES[name]
  ref = _small_ref(mode, **changes)
  assert convert.infer_kv_mode(ref) == mode
  sd = ref_np.random_state_dict(ref, seed=list(CASES).index(name))
  _check_case(ref, mode, sd, _tokens(ref), None, variants)


def test_tc_layers_top_k_numerics():
  """``tc_layers=1``: memory only in the top layer. The reference still holds TC parameters in
  the lower layers (unused); the converter drops them."""
  ref = _small_ref("tc", tc_update_rule="delta", tc_layers=1, n_layer=3)
  sd = ref_np.random_state_dict(ref, seed=7)
  cfg = convert.config_from_reference(ref, kv_mode="tc")
  params = convert.params_from_state_dict(sd, cfg)
  assert "decay_logit" not in params["params"]["blocks_0"]["attn"]
  _check_case(ref, "tc", sd, _tokens(ref), params, [dict(tc_layers=-1)])


def test_streaming_llm_keeps_the_checkpoints_sink_count():
  ref = _small_ref("streaming_llm", kv_num_sinks=2)
  assert convert.config_from_reference(ref).num_sinks == 2


@pytest.mark.parametrize("mode", ["tc", "infini"])
def test_sinks_with_memory_rejected(mode):
  """Our tc and infini keep no sinks: a checkpoint trained with them is refused, not altered."""
  with pytest.raises(ValueError, match="kv_num_sinks"):
    convert.config_from_reference(_small_ref(mode, kv_num_sinks=2), kv_mode=mode)


def test_convert_cli_checkpoint_loads_in_evaluate_and_sample(tmp_path):
  """``python -m tensorcache.convert`` writes a checkpoint that ``load_model`` (evaluate's and
  sample's loader) restores to the same logits, and that ``sample`` runs from."""
  from tensorcache import checkpoint, evaluate, sample

  z, _, _ = _golden()
  convert.main(["--from-npz", str(DATA), "--workdir", str(tmp_path)])
  cfg, params, step = checkpoint.load_model(str(tmp_path))
  assert step == 0 and cfg.compat == "reference"
  assert _max_err(_ours_parallel(cfg, params, z["tokens"]), z["logits_full"]) <= TOL
  assert len(sample.sample_text(str(tmp_path), "ab", 5, temperature=0.0, top_k=None)[0]) > 0
  logp = evaluate.streaming_logprobs(GPT(cfg), params, z["tokens"][:, :-1], z["tokens"][:, 1:], chunk=8)
  assert logp.shape == (1, 95) and np.all(logp < 0)


# -------------------------------------------------------------------------------------------
# 3. Errors and the .pt route
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("not_a_gpt_config_key", 1), ("tc_num_slots", 2), ("bias", True)])
def test_unusable_config_raises(key, value):
  _, ref, _ = _golden()
  with pytest.raises(ValueError, match=key):
    convert.config_from_reference(dict(ref, **{key: value}))


def test_unexpected_parameter_raises():
  _, ref, sd = _golden()
  cfg = convert.config_from_reference(ref)
  name = "transformer.h.0.attn.bogus.weight"
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    convert.params_from_state_dict(dict(sd, **{name: np.zeros((4, 4), np.float32)}), cfg)


def test_missing_parameter_raises():
  _, ref, sd = _golden()
  cfg = convert.config_from_reference(ref)
  sd = {k: v for k, v in sd.items() if k != "transformer.h.1.attn.tc_proj.weight"}
  # The message names the missing parameter (as a path in our tree: blocks_1 / attn / tc_proj).
  with pytest.raises(ValueError, match=r"missing \[.*blocks_1.*tc_proj"):
    convert.params_from_state_dict(sd, cfg)


def test_load_torch_checkpoint(tmp_path):
  torch = pytest.importorskip("torch")
  z, ref, sd = _golden()
  path = tmp_path / "ckpt.pt"
  torch.save({"model": {k: torch.tensor(v) for k, v in sd.items()}, "model_args": ref}, path)
  cfg, params = convert.load_torch_checkpoint(str(path))
  assert cfg == convert.config_from_reference(ref)
  want = _ours_parallel(cfg, convert.params_from_state_dict(sd, cfg), z["tokens"])
  assert _max_err(_ours_parallel(cfg, params, z["tokens"]), want) == 0.0
  assert _max_err(want, z["logits_full"]) <= TOL
