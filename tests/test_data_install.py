"""Corpus installers without apt: manifests, idempotence, the R reader, the Bible parser."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import pytest

from tensorcache.data import corpora
from tensorcache.data import install
from tensorcache.data import rserialize


def _fake_corpus(root, name="austen"):
  d = root / name
  d.mkdir(parents=True)
  (d / "01_a.txt").write_text("alpha\n")
  (d / "02_b.txt").write_text("beta\n")
  return d, install.write_manifest(
      d, name=name, files=["01_a.txt", "02_b.txt"],
      packages=[{"name": "pkg", "version": "1.0"}], licence="MIT")


def test_manifest_and_reader(tmp_path):
  d, manifest = _fake_corpus(tmp_path)
  assert manifest["num_files"] == 2 and manifest["total_bytes"] == 11
  assert manifest["files"][0]["sha256"] == install.sha256_file(d / "01_a.txt")
  assert install.manifest_problems(d, verify=True) == []
  corpus = corpora.get_corpus("austen", data_root=str(tmp_path))
  assert list(corpus) == [("01_a.txt", "alpha\n"), ("02_b.txt", "beta\n")]
  (d / "02_b.txt").write_text("BETA\n")  # same size, different bytes
  assert install.manifest_problems(d) == []
  assert install.manifest_problems(d, verify=True) == ["sha256 mismatch 02_b.txt"]
  (d / "01_a.txt").unlink()
  assert install.manifest_problems(d) == ["missing 01_a.txt"]


def test_install_is_idempotent_with_intact_manifest(tmp_path, monkeypatch):
  d, _ = _fake_corpus(tmp_path)
  def no_apt(*args, **kwargs):
    raise AssertionError("must not download when the manifest is intact")
  monkeypatch.setattr(install, "fetch_deb", no_apt)
  logs = []
  assert install.install("austen", str(tmp_path), log=logs.append) == d
  assert "nothing to do" in logs[0]
  with pytest.raises(ValueError, match="installable: austen, kjv, pydocs, linux"):
    install.install("gutenberg", str(tmp_path))


def test_licence_summary():
  text = "Files: *\nLicense: MIT\n\nFiles: debian/*\nLicense: MIT\nLicense: GPL-2+\n"
  assert install.licence_summary(text) == "MIT, GPL-2+"
  assert install.licence_summary("free-form text") == ""


def test_parse_bible_export():
  abbrevs = [f"B{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(66)]
  lines = []
  for a in abbrevs:
    lines += [f"{a}1:1 first verse.", f"{a}1:2 second verse.", f"{a}2:1 next chapter."]
  books = install.parse_bible_export("\n".join(lines) + "\n")
  assert [n for n, _ in books] == list(install.KJV_BOOKS)
  assert books[0][1] == "Genesis\n\n1:1 first verse.\n1:2 second verse.\n\n2:1 next chapter.\n"
  with pytest.raises(install.InstallError, match="expected 66"):
    install.parse_bible_export("Ge1:1 x\n")


# A tiny writer of R's XDR serialization, enough for strings, ints and named lists.
def _i(v):
  return struct.pack(">i", v)


def _char(s):
  if s is None:
    return _i(9) + _i(-1)
  b = s.encode()
  return _i(9 | (8 << 12)) + _i(len(b)) + b  # CHARSXP, UTF-8 flag


def _strs(xs):
  return _i(16) + _i(len(xs)) + b"".join(_char(x) for x in xs)


def _ints(xs):
  return _i(13) + _i(len(xs)) + b"".join(_i(x) for x in xs)


def _named_list(items):
  body = _i(19 | (1 << 9)) + _i(len(items)) + b"".join(v for _, v in items)
  # attributes: pairlist(names = c(...)); cell flags: LISTSXP with tag.
  attr = _i(2 | (1 << 10)) + _i(1) + _char("names") + _strs([k for k, _ in items]) + _i(254)
  return body + attr


def _stream(obj):
  return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8" + obj


def test_r_unserialize_strings_and_named_list():
  pytest.importorskip("rdata")
  obj = rserialize.unserialize(_stream(_named_list([("a", _strs(["x", None, "é"])),
                                                    ("b", _ints([1, 2]))])))
  assert list(obj["a"]) == ["x", None, "é"] and list(obj["b"]) == [1, 2]


def test_r_lazyload_db_roundtrip(tmp_path):
  pytest.importorskip("rdata")
  blob, offsets = b"", []
  for lines in (["EMMA", "", "By Jane Austen"], ["Persuasion"]):
    raw = _stream(_strs(lines))
    rec = struct.pack(">I", len(raw)) + zlib.compress(raw)
    offsets.append((len(blob), len(rec)))
    blob += rec
  (tmp_path / "Rdata.rdb").write_bytes(blob)
  index = _named_list([
      ("variables", _named_list([("emma", _ints(list(offsets[0]))),
                                 ("persuasion", _ints(list(offsets[1])))])),
      ("references", _i(19) + _i(0)),
      ("compressed", _i(10) + _i(1) + _i(1)),
  ])
  (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_stream(index)))
  db = rserialize.read_lazyload_db(tmp_path / "Rdata")
  assert {k: list(v) for k, v in db.items()} == {"emma": ["EMMA", "", "By Jane Austen"],
                                                 "persuasion": ["Persuasion"]}


def test_installed_manifest_records_package_and_licence():
  for name in ("austen", "kjv"):
    if not corpora.is_installed(name):
      pytest.skip(f"optional corpus {name!r} not installed; "
                  f"run `python scripts/install_corpora.py {name}`")
    root = corpora.corpus_dir(name)
    manifest = json.loads(open(f"{root}/manifest.json").read())
    assert manifest["packages"][0]["version"] and manifest["licence"]
    assert install.manifest_problems(root) == []
