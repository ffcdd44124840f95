"""Evaluation protocols and sampling on a tiny trained model: CSV columns and values checked
against the parallel forward, short documents, recall accuracy, greedy sampling = argmax."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import ROOT
from tensorcache import checkpoint, evaluate, sample, train
from tensorcache.data import get_tokenizer
from tensorcache.model import GPT

from configs import base  # noqa: E402  (test_train puts the repository root on sys.path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny tc model trained 3 steps on the stdlib corpus (the embedded default)."""
  root = tmp_path_factory.mktemp("eval")
  os.environ["TENSORCACHE_DATA"] = str(root / "data")
  config = base.smoke(base.get_config("tiny,tc"), steps=3)
  train.train(config, str(root / "run"))
  cfg, params, _ = checkpoint.load_model(str(root / "run"))
  return str(root / "run"), cfg, params, config


def _nll_parallel(cfg, params, inputs, targets):
  logp = jax.nn.log_softmax(GPT(cfg).apply(params, jnp.asarray(inputs)), -1)
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], -1)[..., 0])


def test_stratified_nll_rows_match_the_parallel_forward(trained):
  _, cfg, params, config = trained
  rows = evaluate.evaluate_nll(cfg, params, config.data, [48, 80], num_windows=3, chunk=16)
  assert [r["context_length"] for r in rows] == [48, 80]
  for row in rows:
    assert list(row)[:5] == ["mode", "context_length", "nll_all", "nll_far", "nll_vfar"]
    assert {"tokens", "tokens_per_s", "cache_bytes", "peak_device_bytes"} <= set(row)
    assert row["mode"] == "tc" and row["tokens_per_s"] > 0
  # Recompute the 80-token row with the parallel forward (exact mode: parallel == streaming).
  from tensorcache import data
  win = data.make_eval_windows(config.data, seq_len=80, num_windows=3)
  nll = _nll_parallel(cfg, params, win["inputs"], win["targets"])
  W = cfg.window
  row = rows[1]
  np.testing.assert_allclose(row["nll_all"], nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(row["nll_far"], nll[:, W:].mean(), rtol=1e-5)
  np.testing.assert_allclose(row["nll_vfar"], nll[:, 4 * W:].mean(), rtol=1e-5)
  assert np.isnan(rows[0]["nll_vfar"])  # 48 < 4W = 64: no position that far
  assert row["cache_bytes"] == rows[0]["cache_bytes"]  # bounded: independent of the length


def test_documents_shorter_than_the_context(trained, tmp_path):
  _, cfg, params, _ = trained
  (tmp_path / "docs").mkdir()
  rng = np.random.default_rng(0)
  for i, n in enumerate((300, 40)):  # one long enough, one short
    (tmp_path / "docs" / f"d{i}.txt").write_text("".join(rng.choice(list("abcdefgh \n"), n)))
  dc = dict(source="dir", path=str(tmp_path / "docs"), val_fraction=0.999, cache=False)
  rows = evaluate.evaluate_nll(cfg, params, dc, [128], num_windows=8, min_len=20)
  assert rows[0]["tokens"] == 2 * 128 + 39  # the short document counts only its own tokens
  assert np.isfinite(rows[0]["nll_all"])


def test_recall_accuracy_by_distance(trained):
  _, cfg, params, _ = trained
  dc = dict(source="mqar", num_pairs=4, distance=0, distance_max=30, key_vocab=16, value_vocab=16,
            filler_vocab=8)
  from tensorcache import data
  small = cfg.replace(vocab_size=max(cfg.vocab_size, data.vocab_size(dc)))
  rows = evaluate.recall_accuracy(small, params, dc, seq_len=64, num_examples=16, bin_edges=(0, 1, 2))
  assert {r["distance_lo_W"] for r in rows} <= {0, 1, 2} and rows
  ex = data.make_eval_windows(dc, seq_len=64, num_windows=16)
  pred = np.asarray(jnp.argmax(GPT(small).apply(params, jnp.asarray(ex["inputs"])), -1))
  answer = ex["weights"] > 0
  total = sum(r["answers"] for r in rows)
  assert total == answer.sum()
  correct = sum(r["accuracy"] * r["answers"] for r in rows)
  np.testing.assert_allclose(correct, (pred == ex["targets"])[answer].sum(), atol=1e-6)


def test_greedy_sample_equals_argmax_of_full_forward(trained):
  workdir, cfg, params, _ = trained
  prompt = "def main():\n    "
  text = sample.sample_text(workdir, prompt, 24, temperature=0.0, top_k=None)[0]
  tok = get_tokenizer("byte")
  ids = np.concatenate([tok.encode(prompt), tok.encode(text)])[None]
  assert ids.shape[1] == len(tok.encode(prompt)) + 24
  logits = GPT(cfg).apply(params, jnp.asarray(ids[:, :-1]))
  greedy = np.asarray(jnp.argmax(logits, -1))[0, len(tok.encode(prompt)) - 1:]
  np.testing.assert_array_equal(greedy, ids[0, len(tok.encode(prompt)):])


def test_evaluate_cli_writes_csv(trained, tmp_path):
  workdir, _, _, _ = trained
  out = tmp_path / "nll.csv"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-m", "tensorcache.evaluate", f"--workdir={workdir}",
                  "--context_lengths=40", "--num_windows=2", "--chunk=8", f"--output={out}"],
                 check=True, cwd=ROOT, env=env, capture_output=True)
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and rows[0]["context_length"] == "40" and float(rows[0]["nll_all"]) > 0
