"""Text corpora behind one reader interface: documents ``(doc_id, text)`` in a stable order.

Sources:

  ``stdlib``  CPython standard library ``*.py`` (from ``sysconfig.get_paths()["stdlib"]``,
              minus test directories, ``site-packages``, build configuration and
              ``_sysconfigdata*``): always present, the default.
  ``austen``, ``kjv``, ``pydocs``, ``linux``: installed from Debian packages by
              ``python scripts/install_corpora.py NAME`` into ``<data root>/<NAME>/`` with a
              ``manifest.json`` (package, version, licence, files with sha256).
  ``dir``     any directory of text files selected by glob patterns.

The data root is ``$TENSORCACHE_DATA`` if set, else ``~/.cache/tensorcache/corpora``.
Document ids are POSIX paths relative to the corpus root; documents come sorted by id
(installed corpora: in their manifest's order, which the installer writes in reading
order, e.g. the Bible's books in canonical order). Files are decoded as UTF-8 with
invalid bytes replaced.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import sysconfig
from typing import Iterator, Sequence

CORPORA = ("stdlib", "austen", "kjv", "pydocs", "linux", "dir")
INSTALLABLE = ("austen", "kjv", "pydocs", "linux")
MANIFEST = "manifest.json"
DATA_ROOT_ENV = "TENSORCACHE_DATA"

_STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)


def default_data_root() -> str:
  """``$TENSORCACHE_DATA`` if set, else ``~/.cache/tensorcache/corpora``."""
  env = os.environ.get(DATA_ROOT_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  return os.path.join(os.path.expanduser("~"), ".cache", "tensorcache", "corpora")


def install_command(name: str) -> str:
  return f"python scripts/install_corpora.py {name}"


def _read_text(path: pathlib.Path) -> str:
  return path.read_bytes().decode("utf-8", errors="replace")


class Corpus(abc.ABC):
  """A finite collection of documents read in a stable order."""

  name: str = "corpus"

  @abc.abstractmethod
  def documents(self) -> Iterator[tuple[str, str]]:
    """Yields ``(doc_id, text)``; ids are unique and the order is stable across runs."""

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """A string that changes when the documents may have changed (keys the token cache)."""

  def __iter__(self) -> Iterator[tuple[str, str]]:
    return self.documents()


class FileCorpus(Corpus):
  """Documents are files under ``root``; ids are their relative POSIX paths."""

  def __init__(self, name: str, root: str | os.PathLike, relpaths: Sequence[str]):
    self.name = name
    self.root = pathlib.Path(root)
    self.relpaths = list(relpaths)

  def __len__(self) -> int:
    return len(self.relpaths)

  def documents(self) -> Iterator[tuple[str, str]]:
    for rel in self.relpaths:
      yield rel, _read_text(self.root / rel)

  def fingerprint(self) -> str:
    h = hashlib.sha256(f"{self.name}\0{self.root}".encode())
    for rel in self.relpaths:
      st = (self.root / rel).stat()
      h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, docs={len(self)})"


def _glob_files(root: pathlib.Path, patterns: Sequence[str]) -> list[str]:
  found = set()
  for pattern in patterns:
    for p in root.glob(pattern):
      if p.is_file():
        found.add(p.relative_to(root).as_posix())
  return sorted(found)


class StdlibCorpus(FileCorpus):
  """The CPython standard library's ``*.py`` files, tests excluded."""

  def __init__(self, root: str | os.PathLike | None = None):
    root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
      raise FileNotFoundError(f"standard library directory {str(root)!r} not found")
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
      # Prune excluded directories instead of walking into them.
      dirnames[:] = [d for d in dirnames
                     if d not in _STDLIB_EXCLUDED_DIRS and not d.startswith("config-")]
      rel_dir = pathlib.Path(dirpath).relative_to(root)
      for f in filenames:
        if f.endswith(".py") and not f.startswith("_sysconfigdata"):
          rels.append((rel_dir / f).as_posix())
    super().__init__("stdlib", root, sorted(rels))


class DirCorpus(FileCorpus):
  """Every file under ``path`` matching one of the comma-separated glob ``patterns``."""

  def __init__(self, path: str | os.PathLike, patterns: str | Sequence[str] = "**/*.txt"):
    if not path:
      raise ValueError("source 'dir' needs `path`: a directory of text files")
    root = pathlib.Path(os.path.expanduser(os.fspath(path)))
    if not root.is_dir():
      raise FileNotFoundError(f"source 'dir': directory {str(root)!r} not found")
    if isinstance(patterns, str):
      patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    rels = _glob_files(root, patterns)
    if not rels:
      raise FileNotFoundError(f"source 'dir': no file under {str(root)!r} matches {list(patterns)}")
    super().__init__("dir", root, rels)
    self.patterns = list(patterns)


class InstalledCorpus(FileCorpus):
  """A corpus written by ``scripts/install_corpora.py``: the files its manifest lists."""

  def __init__(self, name: str, root: str | os.PathLike):
    root = pathlib.Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
      raise FileNotFoundError(
          f"corpus {name!r} is not installed (no {manifest_path}); install it with "
          f"`{install_command(name)}` (it writes under ${DATA_ROOT_ENV} or "
          "~/.cache/tensorcache/corpora)"
      )
    raw = manifest_path.read_bytes()
    self.manifest = json.loads(raw)
    self._manifest_sha = hashlib.sha256(raw).hexdigest()
    super().__init__(name, root, [f["path"] for f in self.manifest["files"]])

  def fingerprint(self) -> str:
    return hashlib.sha256(f"{self.name}\0{self.root}\0{self._manifest_sha}".encode()).hexdigest()


def corpus_dir(name: str, data_root: str | None = None) -> str:
  """Where the installed corpus ``name`` lives: ``<data root>/<name>``."""
  return os.path.join(data_root or default_data_root(), name)


def is_installed(name: str, data_root: str | None = None) -> bool:
  return os.path.isfile(os.path.join(corpus_dir(name, data_root), MANIFEST))


def get_corpus(
    name: str,
    path: str | None = None,
    *,
    data_root: str | None = None,
    glob: str | Sequence[str] = "**/*.txt",
) -> Corpus:
  """Returns the corpus ``name`` (one of ``CORPORA``).

  Args:
    name: ``stdlib`` | ``austen`` | ``kjv`` | ``pydocs`` | ``linux`` | ``dir``.
    path: ``dir``: the directory (required). ``stdlib``: another library directory.
      Installed corpora: their directory, overriding ``<data_root>/<name>``.
    data_root: root of installed corpora (default ``default_data_root()``).
    glob: ``dir`` only: glob pattern(s), comma-separated or a list.

  Raises:
    FileNotFoundError: an installed corpus is absent (the message names the installer).
    ValueError: unknown name.
  """
  if name == "stdlib":
    return StdlibCorpus(path or None)
  if name == "dir":
    return DirCorpus(path, glob)
  if name in INSTALLABLE:
    return InstalledCorpus(name, path or corpus_dir(name, data_root))
  raise ValueError(f"unknown corpus {name!r}; valid choices: {', '.join(CORPORA)}")
