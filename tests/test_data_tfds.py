"""TFDS (optional `[tfds]` extra): build a local dataset from a tiny corpus, read it back.

Offline: the dataset is generated from files in tmp_path (array_record format, no
TensorFlow needed). Reading catalog datasets such as pg19 needs network and is not tested.
"""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets not installed: pip install -e '.[tfds]' to test the TFDS path")

from tensorcache.data import corpora  # noqa: E402
from tensorcache.data import pipeline  # noqa: E402
from tensorcache.data import tfds_builder  # noqa: E402


def test_build_and_read_local_tfds_dataset(tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(12):
    (docs / f"d{i:02d}.txt").write_text(f"document {i} " + "word " * (20 * i + 30))
  corpus = corpora.get_corpus("dir", str(docs))
  dataset_dir = tfds_builder.build_local_dataset(corpus, tmp_path / "tfds")
  assert "tensorcache_corpus" in dataset_dir

  read = tfds_builder.TfdsCorpus(dataset_dir)
  got = list(read.documents())
  assert sorted(got) == sorted(corpus.documents())
  assert [d for d, _ in read.documents()] == [d for d, _ in got]  # stable order

  c = {"source": "tfds", "path": dataset_dir, "data_root": str(tmp_path / "root"),
       "val_fraction": 0.25, "read_threads": 1}
  b = next(pipeline.make_train_iterator(c, seq_len=32, global_batch_size=2, seed=0))
  assert b["inputs"].shape == (2, 32)
  np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
  ev = pipeline.make_eval_windows(c, seq_len=32, num_windows=3)
  for doc_id, off, row in zip(ev["doc_ids"], ev["offsets"], ev["inputs"]):
    text = (docs / str(doc_id)).read_bytes()
    assert bytes(row.astype(np.uint8)) == text[off : off + 32]

  with pytest.raises(FileNotFoundError, match="tfds_download"):
    tfds_builder.TfdsCorpus("tensorcache_corpus/austen", data_dir=str(tmp_path / "empty"))
