"""Synthetic tasks: reproducible by (seed, index), correct answers, requested distances."""

from __future__ import annotations

import numpy as np
import pytest

from tensorcache.data import synthetic


def _check_recall(cfg, ex):
  lay = cfg.layout
  inputs, targets, weights, dist = ex["inputs"], ex["targets"], ex["weights"], ex["distance"]
  seq = np.concatenate([inputs, targets[-1:]])
  np.testing.assert_array_equal(targets[:-1], inputs[1:])  # next-token targets
  n = cfg.num_pairs
  assert seq[0] == synthetic.BOS_ID
  keys, values = seq[1 : 1 + 2 * n : 2], seq[2 : 2 + 2 * n : 2]
  assert np.all((keys >= lay.key_start) & (keys < lay.value_start))
  assert np.all((values >= lay.value_start) & (values < lay.filler_start))
  assert len(set(keys.tolist())) == n  # distinct keys
  key_pos = {int(k): 1 + 2 * i for i, k in enumerate(keys)}
  answers = np.flatnonzero(weights)
  assert len(answers) == cfg.queries
  assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
  for t in answers:
    k = int(inputs[t])
    assert k in key_pos, "a query must be a stored key"
    # The answer is the value stored right after that key.
    assert targets[t] == seq[key_pos[k] + 1]
    assert dist[t] == t - key_pos[k]
    # Equivalently: answer position minus stored value position.
    assert dist[t] == (t + 1) - (key_pos[k] + 1)
  assert np.all(dist[weights == 0] == 0)
  assert seq.max() < cfg.vocab_size and seq.min() >= 0
  return dist[answers]


@pytest.mark.parametrize("task", ["recall", "mqar"])
def test_recall_answers_and_distances(task):
  cfg = synthetic.make_task(task, seq_len=160, num_pairs=8, distance=40)
  all_d = []
  for i in range(50):
    all_d.append(_check_recall(cfg, synthetic.generate_example(cfg, seed=3, index=i)))
  all_d = np.concatenate(all_d)
  assert all_d.min() >= 40 + 2
  assert all_d.max() <= 40 + 2 * 8 + 2 * (cfg.queries - 1)
  assert cfg.queries == (1 if task == "recall" else 8)


def test_mqar_more_queries_than_pairs():
  cfg = synthetic.make_task("mqar", seq_len=128, num_pairs=4, num_queries=20, distance=10)
  ex = synthetic.generate_example(cfg, 0, 0)
  _check_recall(cfg, ex)
  assert ex["weights"].sum() == 20


def test_distance_range_and_beyond_window():
  window = 64
  cfg = synthetic.make_task("mqar", seq_len=256, num_pairs=8, distance=(window, window + 50))
  fillers = set()
  for i in range(40):
    ex = synthetic.generate_example(cfg, 1, i)
    d = _check_recall(cfg, ex)
    assert np.all(d > window), "every answer must lie beyond the window"
    first_query = int(np.flatnonzero(ex["weights"])[0])
    fillers.add(first_query - (1 + 2 * 8))
  assert min(fillers) >= window and max(fillers) <= window + 50
  assert len(fillers) > 10  # the filler length really varies


def test_passkey():
  cfg = synthetic.make_task("passkey", seq_len=200, distance=(30, 120), passkey_len=5)
  lay = cfg.layout
  for i in range(20):
    ex = synthetic.generate_example(cfg, 7, i)
    seq = np.concatenate([ex["inputs"], ex["targets"][-1:]])
    m = int(np.flatnonzero(seq == synthetic.KEY_ID)[0])
    q = int(np.flatnonzero(seq == synthetic.QUERY_ID)[0])
    stored = seq[m + 1 : m + 6]
    assert np.all((stored >= lay.digit_start) & (stored < lay.vocab_size))
    answers = np.flatnonzero(ex["weights"])
    np.testing.assert_array_equal(answers, np.arange(q, q + 5))
    np.testing.assert_array_equal(ex["targets"][answers], stored)
    filler = q - (m + 6)
    assert 30 <= filler <= 120
    np.testing.assert_array_equal(ex["distance"][answers], q - m)
    assert q - m == filler + 5 + 1
    assert ex["weights"].sum() == 5 and np.all(ex["distance"][ex["weights"] == 0] == 0)
    assert seq[0] == synthetic.BOS_ID and np.all(seq != synthetic.PAD_ID)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_reproducible_by_seed_and_index(task):
  cfg = synthetic.make_task(task, seq_len=128, num_pairs=8, distance=(10, 40))
  a = synthetic.generate_example(cfg, 5, 17)
  b = synthetic.generate_example(cfg, 5, 17)
  for k in ("inputs", "targets", "weights", "distance"):
    np.testing.assert_array_equal(a[k], b[k])
    assert a[k].shape == (128,)
  assert a["inputs"].dtype == np.int32 and a["targets"].dtype == np.int32
  assert a["weights"].dtype == np.float32 and a["distance"].dtype == np.int32
  for other in (synthetic.generate_example(cfg, 5, 18), synthetic.generate_example(cfg, 6, 17),
                synthetic.generate_example(cfg, 5, 17, "validation")):
    assert not np.array_equal(a["inputs"], other["inputs"])
  src = synthetic.TaskSource(cfg, 5)
  np.testing.assert_array_equal(src[17]["inputs"], a["inputs"])


def test_vocab_layout():
  lay = synthetic.VocabLayout(key_vocab=10, value_vocab=20, filler_vocab=5)
  assert (lay.key_start, lay.value_start, lay.filler_start, lay.digit_start) == (4, 14, 34, 39)
  assert lay.vocab_size == 49
  assert synthetic.task_vocab_size("passkey", key_vocab=10, value_vocab=20, filler_vocab=5) == 49
  assert synthetic.task_vocab_size("recall") == 4 + 64 + 64 + 16 + 10


def test_task_config_errors():
  with pytest.raises(ValueError, match="needs seq_len >= 78"):
    synthetic.make_task("recall", seq_len=64, num_pairs=8, distance=60)
  with pytest.raises(ValueError, match="largest distance that fits"):
    synthetic.make_task("passkey", seq_len=64, distance=100)
  with pytest.raises(ValueError, match="key_vocab"):
    synthetic.make_task("recall", seq_len=512, num_pairs=65)
  with pytest.raises(ValueError, match="mqar"):
    synthetic.make_task("recall", seq_len=512, num_pairs=4, num_queries=5)
  with pytest.raises(ValueError, match="valid choices: recall, mqar, passkey"):
    synthetic.make_task("copy", seq_len=512)
  with pytest.raises(ValueError, match="min <= max"):
    synthetic.make_task("recall", seq_len=512, distance=(10, 5))
