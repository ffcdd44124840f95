"""Tokenizers: byte level (default) and the locally trained BPE."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tensorcache.data import tokenizers

TEXTS = [
    "def f(x):\n    return x * 2  # doubles\n",
    "Ünïcödé — “quotes”, emoji 🎉 and CJK 漢字.\n",
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.\n",
] * 5


def test_byte_roundtrip_and_dtype():
  tok = tokenizers.ByteTokenizer()
  assert tok.vocab_size == 256 and tok.eos_id == 0 and tok.pad_id == 0
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.min() >= 0 and ids.max() < 256
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_byte_decode_replaces_invalid_utf8():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode("é")  # two bytes
  assert tok.decode(ids[:1]) == "\ufffd"
  with pytest.raises(ValueError, match=r"\[0, 256\)"):
    tok.decode([256])


def test_bpe_train_save_load_roundtrip(tmp_path):
  pytest.importorskip("tokenizers", reason="BPE needs the `bpe` extra: pip install -e '.[bpe]'")
  tok = tokenizers.BPETokenizer.train(iter(TEXTS), vocab_size=300, min_frequency=1)
  assert tok.eos_id == 0 and tok.pad_id == 0
  assert 257 <= tok.vocab_size <= 300
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
  # Merges happened: a repeated sentence takes fewer tokens than bytes.
  assert len(tok.encode(TEXTS[2])) < len(TEXTS[2].encode())
  path = tmp_path / "tok.json"
  tok.save(path)
  loaded = tokenizers.get_tokenizer("bpe", str(path))
  assert loaded.vocab_size == tok.vocab_size
  assert loaded.fingerprint() == tok.fingerprint()
  np.testing.assert_array_equal(loaded.encode(TEXTS[1]), tok.encode(TEXTS[1]))
  assert [a.tolist() for a in loaded.encode_batch(TEXTS[:3])] == [
      tok.encode(t).tolist() for t in TEXTS[:3]]


def test_get_tokenizer_errors(tmp_path):
  assert isinstance(tokenizers.get_tokenizer("byte"), tokenizers.ByteTokenizer)
  with pytest.raises(ValueError, match="valid choices: byte, bpe"):
    tokenizers.get_tokenizer("gpt2")
  with pytest.raises(ValueError, match="tokenizer_path"):
    tokenizers.get_tokenizer("bpe", None)
  pytest.importorskip("tokenizers", reason="BPE needs the `bpe` extra: pip install -e '.[bpe]'")
  with pytest.raises(FileNotFoundError, match="train-bpe"):
    tokenizers.get_tokenizer("bpe", str(tmp_path / "missing.json"))


def test_bpe_import_error_names_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  with pytest.raises(ImportError, match=r"pip install -e '\.\[bpe\]'"):
    tokenizers.BPETokenizer.train(iter(TEXTS), vocab_size=300)
