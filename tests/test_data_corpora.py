"""Corpora: the stdlib default, directories, installed corpora (skipped when absent)."""

from __future__ import annotations

import pathlib

import pytest

from tensorcache.data import corpora


def test_stdlib_corpus_nonempty_stable_and_without_tests():
  corpus = corpora.get_corpus("stdlib")
  assert len(corpus) > 300
  ids = corpus.relpaths
  assert ids == sorted(ids) and len(set(ids)) == len(ids)
  assert all(i.endswith(".py") for i in ids)
  assert not any({"test", "tests", "site-packages"} & set(i.split("/")[:-1]) for i in ids)
  assert "json/decoder.py" in ids
  first = next(iter(corpus))
  assert first[0] == ids[0] and isinstance(first[1], str)
  assert corpora.get_corpus("stdlib").relpaths == ids  # stable
  assert corpus.fingerprint() == corpora.get_corpus("stdlib").fingerprint()


def test_dir_corpus(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "two.txt").write_text("two")
  (tmp_path / "a.txt").write_text("one")
  (tmp_path / "c.md").write_text("three")
  corpus = corpora.get_corpus("dir", str(tmp_path), glob="**/*.txt")
  assert list(corpus) == [("a.txt", "one"), ("b/two.txt", "two")]
  both = corpora.get_corpus("dir", str(tmp_path), glob="**/*.txt, *.md")
  assert [d for d, _ in both] == ["a.txt", "b/two.txt", "c.md"]
  before = corpus.fingerprint()
  (tmp_path / "a.txt").write_text("one, changed")
  assert corpora.get_corpus("dir", str(tmp_path)).fingerprint() != before
  with pytest.raises(FileNotFoundError, match="no file"):
    corpora.get_corpus("dir", str(tmp_path), glob="*.rst")
  with pytest.raises(FileNotFoundError):
    corpora.get_corpus("dir", str(tmp_path / "absent"))
  with pytest.raises(ValueError, match="needs `path`"):
    corpora.get_corpus("dir", None)


@pytest.mark.parametrize("name", corpora.INSTALLABLE)
def test_missing_installed_corpus_names_installer(tmp_path, name):
  with pytest.raises(FileNotFoundError, match=f"python scripts/install_corpora.py {name}"):
    corpora.get_corpus(name, data_root=str(tmp_path))


def test_unknown_corpus():
  with pytest.raises(ValueError, match="valid choices: stdlib, austen"):
    corpora.get_corpus("gutenberg")


def test_data_root_env(monkeypatch, tmp_path):
  monkeypatch.setenv(corpora.DATA_ROOT_ENV, str(tmp_path))
  assert corpora.default_data_root() == str(tmp_path)
  assert corpora.corpus_dir("kjv") == str(tmp_path / "kjv")


EXPECTED = {  # name: (min documents, a document id, text it contains)
    "austen": (6, "02_pride_and_prejudice.txt", "truth universally acknowledged"),
    "kjv": (66, "01_Genesis.txt", "In the beginning God created the heaven and the earth."),
    "pydocs": (400, "library/os.rst.txt", ":mod:`os`"),
    "linux": (10000, "kernel/fork.c", "copy_process"),
}


@pytest.mark.parametrize("name", corpora.INSTALLABLE)
def test_installed_corpus(name):
  if not corpora.is_installed(name):
    pytest.skip(f"optional corpus {name!r} not installed under {corpora.default_data_root()}; "
                f"install it with `python scripts/install_corpora.py {name}`")
  corpus = corpora.get_corpus(name)
  min_docs, doc_id, snippet = EXPECTED[name]
  assert len(corpus) >= min_docs
  assert doc_id in corpus.relpaths
  text = (pathlib.Path(corpus.root) / doc_id).read_text(encoding="utf-8", errors="replace")
  assert snippet in text
  manifest = corpus.manifest
  assert manifest["packages"] and manifest["licence"] and manifest["total_bytes"] > 0
  assert [f["path"] for f in manifest["files"]] == corpus.relpaths
  if name in ("austen", "kjv"):
    first_id, first_text = next(iter(corpus))
    assert first_id.startswith("01_") and len(first_text) > 1000
