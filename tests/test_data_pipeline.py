"""The grain pipeline: split, packing, eval windows, process sharding, checkpointing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tensorcache.data import pipeline
from tensorcache.data import synthetic

T = 64


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """40 documents of 30..3000 bytes (some shorter than a window, some many windows long)."""
  d = tmp_path_factory.mktemp("docs")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "tensor", "cache", "window", "memory", "é", "—"]
  for i in range(40):
    n = int(rng.integers(5, 500))
    text = f"document {i}: " + " ".join(rng.choice(words, size=n)) + "\n"
    (d / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
  return d


@pytest.fixture
def cfg(corpus_dir, tmp_path):
  return {"source": "dir", "path": str(corpus_dir), "data_root": str(tmp_path / "root"),
          "val_fraction": 0.25, "read_threads": 1}


def _doc_bytes(corpus_dir, doc_id):
  return np.frombuffer((corpus_dir / doc_id).read_bytes(), np.uint8).astype(np.int32)


def test_split_disjoint_covering_deterministic(cfg):
  tc = pipeline.load_tokenized_corpus(cfg)
  train, val = pipeline.split_documents(tc.doc_ids, 0.25)
  assert len(np.intersect1d(train, val)) == 0
  assert sorted(np.concatenate([train, val]).tolist()) == list(range(tc.num_docs))
  assert 3 <= len(val) <= 20
  train2, val2 = pipeline.split_documents(tc.doc_ids, 0.25)
  np.testing.assert_array_equal(train, train2)
  np.testing.assert_array_equal(val, val2)
  # A document's side depends on its id only (adding documents moves nothing).
  _, val_sub = pipeline.split_documents(tc.doc_ids[:20], 0.25)
  np.testing.assert_array_equal(val_sub, val[val < 20])
  # Larger fractions only add validation documents.
  _, val_more = pipeline.split_documents(tc.doc_ids, 0.5)
  assert set(val.tolist()) <= set(val_more.tolist())


def test_token_cache_reused(cfg):
  a = pipeline.load_tokenized_corpus(cfg)
  b = pipeline.load_tokenized_corpus(cfg)
  assert isinstance(b.tokens, np.memmap) and b.tokens.dtype == np.uint8
  np.testing.assert_array_equal(a.tokens, b.tokens)
  c = pipeline.load_tokenized_corpus({**cfg, "cache": False})
  np.testing.assert_array_equal(c.tokens, b.tokens)
  np.testing.assert_array_equal(c.offsets, b.offsets)
  assert c.doc_ids == b.doc_ids and b.doc_ids == tuple(sorted(b.doc_ids))


def test_packing_reconstructs_training_stream(cfg, corpus_dir):
  ds = pipeline.make_train_dataset({**cfg, "shuffle": False, "num_epochs": 1}, seq_len=T,
                                   global_batch_size=1, seed=0)
  tc = pipeline.load_tokenized_corpus(cfg)
  train, _ = pipeline.split_documents(tc.doc_ids, 0.25)
  stream = np.concatenate(
      [np.append(_doc_bytes(corpus_dir, tc.doc_ids[d]), 0) for d in train])  # EOS = 0
  n = len(ds)
  assert n == -(-(len(stream) - 1) // T)  # ceil: every token is a target exactly once
  for i in range(n):
    b = ds[i]
    assert b["inputs"].shape == (1, T) and b["inputs"].dtype == np.int32
    assert b["targets"].dtype == np.int32 and b["weights"].dtype == np.float32
    np.testing.assert_array_equal(b["targets"][0, :-1], b["inputs"][0, 1:])
    valid = int(b["weights"][0].sum())
    np.testing.assert_array_equal(b["inputs"][0, :valid], stream[i * T : i * T + valid])
    np.testing.assert_array_equal(b["targets"][0, :valid], stream[i * T + 1 : i * T + valid + 1])
    if i < n - 1:
      assert valid == T
    else:  # only the last window is padded, and padding has weight 0
      assert np.all(b["weights"][0, valid:] == 0) and np.all(b["inputs"][0, valid:] == 0)


def test_train_iterator_shapes_and_epoch_coverage(cfg):
  it = pipeline.make_train_iterator({**cfg, "num_epochs": 1}, seq_len=T, global_batch_size=4,
                                    seed=1)
  batches = list(it)
  assert batches and all(b["inputs"].shape == (4, T) for b in batches)
  rows = np.concatenate([b["inputs"] for b in batches])
  # One epoch: windows appear once each (shuffled order).
  assert len({r.tobytes() for r in rows}) == len(rows)
  for b in batches:
    np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])


def test_deterministic_given_seed(cfg):
  def first(seed, n=3):
    it = pipeline.make_train_iterator(cfg, seq_len=T, global_batch_size=4, seed=seed)
    return np.stack([next(it)["inputs"] for _ in range(n)])
  np.testing.assert_array_equal(first(0), first(0))
  assert not np.array_equal(first(0), first(1))


def test_epochs_reshuffle(cfg):
  ds = pipeline.make_train_dataset({**cfg, "num_epochs": 2}, seq_len=T, global_batch_size=1,
                                   seed=0)
  half = len(ds) // 2
  e0 = [ds[i]["inputs"].tobytes() for i in range(half)]
  e1 = [ds[i]["inputs"].tobytes() for i in range(half, 2 * half)]
  assert sorted(e0) == sorted(e1) and e0 != e1


@pytest.mark.parametrize("source", ["dir", "mqar"])
def test_process_sharding_disjoint_and_covering(cfg, source):
  c = cfg if source == "dir" else {"source": "mqar", "num_pairs": 4, "distance": 8,
                                    "read_threads": 1}
  whole = pipeline.make_train_dataset(c, seq_len=T, global_batch_size=8, seed=3)
  shards = [pipeline.make_train_dataset(c, seq_len=T, global_batch_size=8, seed=3,
                                        process_index=p, process_count=4) for p in range(4)]
  for step in range(5):
    parts = [s[step] for s in shards]
    assert all(p["inputs"].shape == (2, T) for p in parts)
    for key in whole[step]:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[step][key])
  # Disjoint: no window is read by two processes over an epoch.
  if source == "dir":
    seen = {}
    n_steps = min(len(s) for s in shards)
    for p, s in enumerate(shards):
      for step in range(min(n_steps, 8)):
        for row in s[step]["inputs"]:
          seen.setdefault(row.tobytes(), set()).add(p)
    assert all(len(v) == 1 for v in seen.values())


@pytest.mark.parametrize("source", ["dir", "recall"])
def test_iterator_state_roundtrip(cfg, source):
  c = {**cfg, "read_threads": 2} if source == "dir" else {
      "source": "recall", "num_pairs": 4, "distance": 8, "read_threads": 2}
  kwargs = dict(seq_len=T, global_batch_size=4, seed=5, process_index=1, process_count=2)
  it = pipeline.make_train_iterator(c, **kwargs)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
  expected = [next(it) for _ in range(4)]
  resumed = pipeline.make_train_iterator(c, **kwargs)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # And a fresh iterator is NOT at that position (the test would notice a no-op).
  fresh = pipeline.make_train_iterator(c, **kwargs)
  assert not np.array_equal(next(fresh)["inputs"], expected[0]["inputs"])


def test_eval_windows_inside_one_document(cfg, corpus_dir):
  tc = pipeline.load_tokenized_corpus(cfg)
  _, val = pipeline.split_documents(tc.doc_ids, 0.25)
  val_ids = {tc.doc_ids[d] for d in val}
  out = pipeline.make_eval_windows(cfg, seq_len=T, num_windows=12)
  n = len(out["inputs"])
  assert 1 <= n <= 12 and out["inputs"].shape == (n, T)
  assert np.all(out["lengths"] == T) and np.all(out["weights"] == 1)
  for r in range(n):
    doc_id, off = str(out["doc_ids"][r]), int(out["offsets"][r])
    assert doc_id in val_ids
    doc = _doc_bytes(corpus_dir, doc_id)
    assert off + T + 1 <= len(doc)  # the whole window (with its last target) is in the doc
    np.testing.assert_array_equal(out["inputs"][r], doc[off : off + T])
    np.testing.assert_array_equal(out["targets"][r], doc[off + 1 : off + T + 1])
  # Round-robin: the first windows come from distinct documents, each at offset 0.
  k = len(set(out["doc_ids"].tolist()))
  assert np.all(out["offsets"][:k] == 0)


def test_eval_windows_short_documents(cfg, corpus_dir):
  long_t = 1024  # longer than most documents
  skipped = pipeline.make_eval_windows(cfg, seq_len=long_t, num_windows=50, min_len=None)
  assert np.all(skipped["lengths"] == long_t)
  short = pipeline.make_eval_windows(cfg, seq_len=long_t, num_windows=50, min_len=32)
  assert len(short["inputs"]) > len(skipped["inputs"])
  for r in range(len(short["inputs"])):
    n = int(short["lengths"][r])
    assert 32 <= n <= long_t
    assert np.all(short["weights"][r, :n] == 1) and np.all(short["weights"][r, n:] == 0)
    doc = _doc_bytes(corpus_dir, str(short["doc_ids"][r]))
    off = int(short["offsets"][r])
    np.testing.assert_array_equal(short["inputs"][r, :n], doc[off : off + n])
    if n < long_t:  # a short document is returned whole
      assert off == 0 and n == len(doc) - 1
  with pytest.raises(ValueError, match="no validation document"):
    pipeline.make_eval_windows(cfg, seq_len=100_000, num_windows=2)


def test_eval_windows_process_sharding(cfg):
  whole = pipeline.make_eval_windows(cfg, seq_len=T, num_windows=10)
  parts = [pipeline.make_eval_windows(cfg, seq_len=T, num_windows=10, process_index=p,
                                      process_count=3) for p in range(3)]
  n = len(whole["inputs"])
  rebuilt = np.zeros_like(whole["inputs"])
  for p, part in enumerate(parts):
    rebuilt[p::3] = part["inputs"]
  assert sum(len(p["inputs"]) for p in parts) == n
  np.testing.assert_array_equal(rebuilt, whole["inputs"])


def test_task_batches_and_eval():
  c = {"source": "passkey", "distance": 20, "distance_max": 40, "read_threads": 1}
  it = pipeline.make_train_iterator(c, seq_len=T, global_batch_size=3, seed=0)
  b = next(it)
  assert set(b) == {"inputs", "targets", "weights", "distance"}
  assert b["inputs"].shape == (3, T) and b["distance"].dtype == np.int32
  assert np.all(b["weights"].sum(1) == 5)
  np.testing.assert_array_equal(b["inputs"][1], synthetic.generate_example(
      pipeline.task_config(pipeline.resolve_data_config(c), T), 0, 1)["inputs"])
  ev = pipeline.make_eval_windows(c, seq_len=T, num_windows=4)
  assert ev["inputs"].shape == (4, T) and np.all(ev["lengths"] == T)
  assert not np.array_equal(ev["inputs"][:3], b["inputs"])  # validation stream differs
  assert pipeline.vocab_size(c) == synthetic.task_vocab_size("passkey")


def test_stdlib_default_source(tmp_path):
  c = {"data_root": str(tmp_path), "read_threads": 1}  # source defaults to stdlib
  assert pipeline.resolve_data_config(c)["source"] == "stdlib"
  it = pipeline.make_train_iterator(c, seq_len=256, global_batch_size=2, seed=0)
  b = next(it)
  assert b["inputs"].shape == (2, 256) and b["weights"].sum() == 2 * 256
  ev = pipeline.make_eval_windows(c, seq_len=1024, num_windows=4)
  assert len(ev["inputs"]) == 4
  text = bytes(ev["inputs"][0].astype(np.uint8)).decode("utf-8", "replace")
  assert text.strip()
  assert pipeline.vocab_size(c) == 256


def test_bpe_pipeline(cfg, tmp_path):
  pytest.importorskip("tokenizers", reason="BPE needs the `bpe` extra: pip install -e '.[bpe]'")
  path = str(tmp_path / "bpe.json")
  tok = pipeline.train_bpe(cfg, 300, path)
  c = {**cfg, "tokenizer": "bpe", "tokenizer_path": path}
  assert pipeline.vocab_size(c) == tok.vocab_size
  tc = pipeline.load_tokenized_corpus(c)
  assert tc.tokens.dtype == np.uint16 and tc.eos_id == 0
  b = next(pipeline.make_train_iterator(c, seq_len=32, global_batch_size=2, seed=0))
  assert b["inputs"].max() < tok.vocab_size
  d = 0
  assert tok.decode(tc.doc(d)) == open(f"{cfg['path']}/{tc.doc_ids[d]}", encoding="utf-8").read()


def test_default_config_and_errors(cfg):
  dc = pipeline.default_data_config()
  assert set(dc.keys()) == set(pipeline.DEFAULTS) == set(pipeline.FIELD_DOCS)
  assert pipeline.resolve_data_config(dc)["distance"] == (64, 64)
  dc.distance_max = 80
  assert pipeline.resolve_data_config(dc)["distance"] == (64, 80)
  assert pipeline.resolve_data_config({"distance": (3, 9)})["distance"] == (3, 9)
  with pytest.raises(ValueError, match=r"unknown data config key\(s\) \['val_frac'\].*"
                                       r"did you mean 'val_fraction'.*valid keys: source"):
    pipeline.resolve_data_config({"val_frac": 0.1})
  with pytest.raises(ValueError, match="unknown data source 'kvj'.*did you mean 'kjv'.*"
                                       "valid choices: recall, mqar, passkey, stdlib"):
    pipeline.make_train_iterator({"source": "kvj"}, seq_len=8, global_batch_size=1, seed=0)
  with pytest.raises(ValueError, match="valid choices: byte, bpe"):
    pipeline.resolve_data_config({"tokenizer": "gpt2"})
  with pytest.raises(ValueError, match="val_fraction"):
    pipeline.resolve_data_config({"val_fraction": 1.0})
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.make_train_iterator(cfg, seq_len=8, global_batch_size=3, seed=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.make_train_iterator(cfg, seq_len=8, global_batch_size=4, seed=0, process_index=2,
                                 process_count=2)
  with pytest.raises(ValueError, match="needs seq_len"):
    pipeline.make_train_iterator({"source": "recall", "distance": 500}, seq_len=64,
                                 global_batch_size=1, seed=0)
  with pytest.raises(ValueError, match="min_len"):
    pipeline.make_eval_windows(cfg, seq_len=8, num_windows=1, min_len=9)
