"""The experiment runner and plotter: every experiment's smoke arm runs, the runner writes the
CSVs (with provenance) that the plotter reads, arms split across processes, and the study
functions' own arithmetic against direct computations on fresh random inputs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from absl import app

from test_train import ROOT  # noqa: F401  (puts the repository root on sys.path)

from experiments import plot, run, studies  # noqa: E402

EXPERIMENTS = ("recall", "memory_capacity", "long_context_lm", "ablations", "systems_scaling")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _rows(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _check_smoke(experiment: str, out) -> None:
  """What each study's smoke arm must have measured."""
  if experiment == "recall":
    for r in _rows(out / "distance.csv") + _rows(out / "pairs.csv"):
      assert 0.0 <= float(r["accuracy"]) <= 1.0 and int(r["answers"]) > 0
    (s,) = _rows(out / "summary.csv")
    assert int(s["answers_beyond_W"]) > 0 and float(s["chance"]) == pytest.approx(1 / 16)
  elif experiment == "memory_capacity":
    rows = _rows(out / "capacity.csv")
    exact = [r for r in rows if r["write"] == "exact"]
    assert exact and all(float(r["scan_vs_recurrence"]) < 1e-5 for r in exact)
    assert all(math.isfinite(float(r["cosine"])) and 0 <= float(r["top1"]) <= 1 for r in rows)
    # Fewer pairs than dimensions: exact writes recall them far above chance, chunk means do not.
    few = {r["write"]: float(r["top1"]) for r in rows if r["D"] == "16" and r["pairs"] == "8"}
    assert few["exact"] > 0.8 > few["chunk_mean"]
  elif experiment in ("long_context_lm", "ablations"):
    nll = _rows(out / "nll.csv")
    assert {int(r["context_length"]) for r in nll} == {64, 128}
    assert all(0 < float(r["nll_all"]) < 10 and 0 < float(r["nll_far"]) < 10 for r in nll)
    assert _rows(out / "nll_distance.csv")
  else:
    rows = {int(r["length"]): r for r in _rows(out / "systems.csv")}
    assert [rows[n]["status"] for n in sorted(rows)] == ["ok", "ok", "probe"]
    assert all(rows[n]["logits_finite"] == "True" for n in rows)
    for n in (256, 512):  # timed; the probe only allocates and runs one segment
      assert float(rows[n]["prefill_tok_s"]) > 0 and float(rows[n]["ttft_s"]) > 0 and float(rows[n]["decode_tok_s"]) > 0
    assert rows[1024]["decode_tok_s"] == "" and int(rows[1024]["prompt_tokens_run"]) == 256
    # full attention: the cache grows with the prompt it must hold.
    assert int(rows[1024]["cache_bytes"]) > int(rows[512]["cache_bytes"]) > int(rows[256]["cache_bytes"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_arm_runs_and_plots(experiment, tmp_path):
  out = tmp_path / "results"
  result = run.run_arm(experiment, "smoke", str(out), str(tmp_path / "work"))
  meta = result["meta"]
  assert meta["arm"] == "smoke" and meta["run_s"] > 0 and meta["jax_version"]
  assert f"--experiment={experiment} --arms=smoke" in meta["command"]
  counts = run.collect(str(out))
  assert counts and all(n > 0 for n in counts.values())
  for table in counts:
    header = _rows(out / f"{table}.csv")[0]
    assert set(run.PROVENANCE) <= set(header), table  # every row says where and how it was measured
  _check_smoke(experiment, out)
  paths = plot.FIGURES[experiment](str(out))
  assert paths
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_experiment_has_a_smoke_arm_and_a_plot():
  for experiment in EXPERIMENTS:
    module = run.experiment_module(experiment)
    assert "smoke" in module.sweep() and experiment in plot.FIGURES
    assert module.get_config("smoke").study.kind in studies.KINDS
  with pytest.raises(app.UsageError, match="Unknown experiment"):
    run.experiment_module("recal")


def test_arm_shares_cover_the_sweep_once():
  sweep = run.experiment_module("recall").sweep()
  assert "smoke" not in run.select_arms(sweep, None, False, 0, 1)
  shares = [run.select_arms(sweep, None, False, i, 4) for i in range(4)]
  flat = [a for s in shares for a in s]
  assert sorted(flat) == sorted(a for a in sweep if a != "smoke") and len(flat) == len(set(flat))
  assert run.select_arms(sweep, ["tc_s1", "window_s0"], False, 1, 2) == ["window_s0"]
  assert run.select_arms(sweep, None, True, 0, 1) == ["smoke"]
  with pytest.raises(app.UsageError, match="Unknown arm"):
    run.select_arms(sweep, ["tc_s9"], False, 0, 1)


def test_collect_joins_arms_with_their_provenance(tmp_path):
  rng = np.random.default_rng(0)
  values = rng.random(3)
  for i, arm in enumerate(("a", "b")):
    (tmp_path / "arms").mkdir(exist_ok=True)
    meta = {k: f"{k}-{arm}" for k in run.PROVENANCE}
    records = [{"table": "t", "x": float(values[i])}] + ([{"table": "u", "y": float(values[2])}] if i else [])
    (tmp_path / "arms" / f"{arm}.json").write_text(json.dumps({"meta": meta, "records": records}))
  assert run.collect(str(tmp_path)) == {"t": 2, "u": 1}
  t = plot.read_csv(str(tmp_path / "t.csv"))
  assert [r["x"] for r in t] == pytest.approx(values[:2].tolist())
  assert [r["arm"] for r in t] == ["arm-a", "arm-b"]
  assert plot.read_csv(str(tmp_path / "u.csv"))[0]["y"] == pytest.approx(values[2])


def test_distance_bins_match_direct_means():
  rng = np.random.default_rng(1)
  nll = rng.random((3, 40)).astype(np.float32)
  weights = (rng.random((3, 40)) > 0.3).astype(np.float32)
  rows = studies.distance_bins(nll, weights, window=8, edges=(0.0, 1.0, 2.5))
  pos = np.arange(40)
  for row, (lo, hi) in zip(rows, ((0, 8), (8, 20), (20, 40))):
    sel = (pos >= lo) & (pos < hi)
    w = weights[:, sel]
    assert row["tokens"] == int(w.sum())
    assert row["nll"] == pytest.approx(float((nll[:, sel] * w).sum() / w.sum()), rel=1e-6)


@pytest.mark.parametrize("B,H", [(32, 1), (2, 4)])
def test_capacity_reads_match_float64_sums(B, H):
  """Outer rule, lambda = eta = 1: ``A = sum_i k_i (x) v_i`` (exact) and the sum over chunks of
  the chunk means' outer product (chunk-mean writes); padded steps write nothing. The shape
  (32, 1) is one where a jitted chunk-mean scan returned wrong states on the CPU."""
  rng = np.random.default_rng(2)
  N, D, C, n = 64, 16, 16, 48
  k = rng.standard_normal((B, N, H, D)).astype(np.float32)
  v = rng.standard_normal((B, N, H, D)).astype(np.float32)
  reads, reads_mean, err = studies.write_and_read(k, v, np.arange(N) < n, "outer", 1.0, 1.0, C)
  kn = (k / (np.linalg.norm(k, axis=-1, keepdims=True) + 1e-5)).astype(np.float64)[:, :n]
  vn = v.astype(np.float64)[:, :n]
  A = np.einsum("bnhd,bnhe->bhde", kn, vn)
  kb, vb = (x.reshape(B, n // C, C, H, D).mean(2) for x in (kn, vn))
  A_mean = np.einsum("bchd,bche->bhde", kb, vb)
  np.testing.assert_allclose(np.asarray(reads)[:, :n], np.einsum("bnhd,bhde->bnhe", kn, A), atol=2e-5)
  np.testing.assert_allclose(np.asarray(reads_mean)[:, :n], np.einsum("bnhd,bhde->bnhe", kn, A_mean), atol=2e-5)
  assert float(err) < 1e-5
