"""Installers for the optional corpora (the logic behind ``scripts/install_corpora.py``).

Each installer fetches Debian packages with ``apt-get download`` (no root needed once the
package lists exist; ``apt-get update`` itself needs root), unpacks them with
``dpkg-deb -x`` (no installation, no R or Bible software installed system-wide), turns
their contents into plain UTF-8 text files under ``<data root>/<name>/`` and writes
``manifest.json`` there last:

  ``name``, ``packages`` (name, version, .deb sha256), ``licence`` (short form, from the
  packages' ``copyright`` files; full text in ``COPYRIGHT``), ``files`` (path, bytes,
  sha256, in reading order), ``num_files``, ``total_bytes``, ``created``.

Installs are idempotent: with an intact manifest (every listed file present with its
recorded size; ``verify=True`` also rechecks sha256) nothing is done. Work happens in a
staging directory renamed into place at the end, so an interrupted install leaves no
half-written corpus.

Corpora:
  ``austen``  r-cran-janeaustenr: the six novels, read from the package's R lazy-load
              database by ``rserialize`` with the ``rdata`` package (``[corpora]`` extra).
  ``kjv``     bible-kjv + bible-kjv-text: exported with the package's ``bible`` program
              (run from the unpacked package), one file per book in canonical order.
  ``pydocs``  python3.11-doc: the reST sources ``html/_sources/**/*.txt``.
  ``linux``   linux-source-6.1: ``*.c`` and ``*.h`` extracted from its source tarball
              (about 1.2 GB of text).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob as globlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from typing import Callable

from tensorcache.data import corpora
from tensorcache.data import rserialize

INSTALLER_VERSION = 1

AUSTEN_NOVELS = (  # publication order
    ("sensesensibility", "sense_and_sensibility"),
    ("prideprejudice", "pride_and_prejudice"),
    ("mansfieldpark", "mansfield_park"),
    ("emma", "emma"),
    ("northangerabbey", "northanger_abbey"),
    ("persuasion", "persuasion"),
)

KJV_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians",
    "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon",
    "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude",
    "Revelation",
)


class InstallError(RuntimeError):
  """An installer could not complete; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  packages: tuple[str, ...]
  build: Callable[[dict[str, pathlib.Path], pathlib.Path], list[str]]
  description: str
  licence_note: str = ""


# ---------------------------------------------------------------- manifest helpers


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def manifest_problems(corpus_root: str | os.PathLike, *, verify: bool = False) -> list[str]:
  """Why the corpus at ``corpus_root`` is not intact ([] if it is)."""
  root = pathlib.Path(corpus_root)
  path = root / corpora.MANIFEST
  if not path.is_file():
    return [f"no {corpora.MANIFEST}"]
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = manifest["files"]
  except (ValueError, KeyError) as e:
    return [f"unreadable manifest: {e}"]
  problems = []
  for entry in files:
    p = root / entry["path"]
    if not p.is_file():
      problems.append(f"missing {entry['path']}")
    elif p.stat().st_size != entry["bytes"]:
      problems.append(f"size mismatch {entry['path']}")
    elif verify and sha256_file(p) != entry["sha256"]:
      problems.append(f"sha256 mismatch {entry['path']}")
    if len(problems) >= 5:
      problems.append("...")
      break
  return problems


def licence_summary(copyright_text: str) -> str:
  """Short licence names from a DEP-5 ``copyright`` file ('' if it is free-form)."""
  names = []
  for line in copyright_text.splitlines():
    m = re.match(r"^License:\s*(\S.*)$", line)
    if m and m.group(1).strip() not in names:
      names.append(m.group(1).strip())
  return ", ".join(names)


def write_manifest(
    corpus_root: str | os.PathLike,
    *,
    name: str,
    files: list[str],
    packages: list[dict],
    licence: str,
    description: str = "",
) -> dict:
  """Hashes ``files`` (relative paths, reading order) and writes ``manifest.json``."""
  root = pathlib.Path(corpus_root)
  entries = []
  for rel in files:
    p = root / rel
    entries.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
  manifest = {
      "name": name,
      "description": description,
      "packages": packages,
      "licence": licence,
      "licence_file": "COPYRIGHT",
      "num_files": len(entries),
      "total_bytes": sum(e["bytes"] for e in entries),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "installer_version": INSTALLER_VERSION,
      "files": entries,
  }
  tmp = root / (corpora.MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
  os.replace(tmp, root / corpora.MANIFEST)
  return manifest


# ---------------------------------------------------------------- Debian helpers


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(cmd, check=True, capture_output=True, **kwargs)
  except FileNotFoundError as e:
    raise InstallError(
        f"`{cmd[0]}` not found: the installers need Debian's apt-get and dpkg-deb, or "
        "pre-downloaded .deb files passed with --deb-dir"
    ) from e
  except subprocess.CalledProcessError as e:
    err = (e.stderr or b"").decode(errors="replace").strip()
    raise InstallError(f"`{' '.join(cmd)}` failed: {err}") from e


def fetch_deb(package: str, workdir: pathlib.Path, deb_dir: str | None = None) -> pathlib.Path:
  """Returns a ``.deb`` of ``package``: from ``deb_dir`` if present there, else apt-get."""
  if deb_dir:
    found = sorted(globlib.glob(os.path.join(deb_dir, f"{package}_*.deb")))
    if found:
      return pathlib.Path(found[-1])
  try:
    _run(["apt-get", "download", package], cwd=workdir)
  except InstallError as e:
    raise InstallError(
        f"{e}\nIf apt cannot locate {package!r}, refresh the package lists first "
        "(`apt-get update`, as root), or download the .deb elsewhere and pass --deb-dir."
    ) from e
  found = sorted(workdir.glob(f"{package}_*.deb"))
  if not found:
    raise InstallError(f"apt-get download {package} produced no .deb in {workdir}")
  return found[-1]


def deb_field(deb: pathlib.Path, field: str) -> str:
  return _run(["dpkg-deb", "-f", str(deb), field]).stdout.decode().strip()


def extract_deb(deb: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  dest.mkdir(parents=True, exist_ok=True)
  _run(["dpkg-deb", "-x", str(deb), str(dest)])
  return dest


def _copyright_text(extracted: pathlib.Path, package: str) -> str:
  path = extracted / "usr" / "share" / "doc" / package / "copyright"
  if path.is_file():
    return path.read_text(encoding="utf-8", errors="replace")
  others = sorted(extracted.glob("usr/share/doc/*/copyright"))
  return others[0].read_text(encoding="utf-8", errors="replace") if others else ""


# ---------------------------------------------------------------- corpus builders


def _write_text(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode("utf-8"))


def build_austen(extracted: dict[str, pathlib.Path], out: pathlib.Path) -> list[str]:
  pkg = extracted["r-cran-janeaustenr"]
  bases = sorted(pkg.glob("usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"))
  if not bases:
    raise InstallError("r-cran-janeaustenr: no data/Rdata.rdx in the package")
  db = rserialize.read_lazyload_db(str(bases[0])[: -len(".rdx")])
  files = []
  for i, (var, slug) in enumerate(AUSTEN_NOVELS, 1):
    if var not in db:
      raise InstallError(f"r-cran-janeaustenr: variable {var!r} missing (have {sorted(db)})")
    lines = ["" if s is None else s for s in db[var]]
    rel = f"{i:02d}_{slug}.txt"
    _write_text(out / rel, "\n".join(lines).strip("\n") + "\n")
    files.append(rel)
  return files


_VERSE = re.compile(r"^(\d?\s?[A-Za-z]+)\s*(\d+):(\d+)\s?(.*)$")


def parse_bible_export(text: str) -> list[tuple[str, str]]:
  """Splits ``bible -f`` output (one ``Abbr C:V text`` line per verse) into books.

  Returns ``[(book_name, book_text)]`` in canonical order; the book text is the book
  name, a blank line, then one ``chapter:verse text`` line per verse with a blank line
  between chapters.
  """
  books: list[list[str]] = []
  abbrevs: list[str] = []
  last_chapter = None
  for line in text.splitlines():
    if not line.strip():
      continue
    m = _VERSE.match(line)
    if not m:
      if books:  # a wrapped continuation line
        books[-1][-1] += " " + line.strip()
      continue
    abbr, chapter, verse, body = m.groups()
    if not abbrevs or abbr != abbrevs[-1]:
      abbrevs.append(abbr)
      books.append([])
      last_chapter = None
    if last_chapter is not None and chapter != last_chapter:
      books[-1].append("")
    last_chapter = chapter
    books[-1].append(f"{chapter}:{verse} {body.strip()}")
  if len(books) != len(KJV_BOOKS):
    raise InstallError(
        f"bible export has {len(books)} books, expected {len(KJV_BOOKS)} (abbreviations "
        f"seen: {abbrevs[:8]}...)"
    )
  return [(name, name + "\n\n" + "\n".join(lines) + "\n") for name, lines in zip(KJV_BOOKS, books)]


def build_kjv(extracted: dict[str, pathlib.Path], out: pathlib.Path) -> list[str]:
  prog = extracted["bible-kjv"] / "usr" / "bin" / "bible"
  data_dir = extracted["bible-kjv-text"] / "usr" / "lib"
  if not prog.is_file() or not (data_dir / "bible.data").is_file():
    raise InstallError("bible-kjv: program or bible.data missing from the packages")
  try:
    proc = subprocess.run(
        [str(prog), "-f", "-p", str(data_dir), "Gen1:1-Rev22:21"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "100000"},
    )
  except (OSError, subprocess.CalledProcessError) as e:
    raise InstallError(
        f"running the unpacked `bible` program failed ({e}); it needs libreadline8 "
        "(`apt-get install libreadline8`)"
    ) from e
  files = []
  for i, (name, text) in enumerate(parse_bible_export(proc.stdout.decode("utf-8", "replace")), 1):
    rel = f"{i:02d}_{name.replace(' ', '_')}.txt"
    _write_text(out / rel, text)
    files.append(rel)
  return files


def build_pydocs(extracted: dict[str, pathlib.Path], out: pathlib.Path) -> list[str]:
  src = extracted["python3.11-doc"] / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
  if not src.is_dir():
    raise InstallError(f"python3.11-doc: {src} missing from the package")
  files = []
  for p in sorted(src.rglob("*.txt")):
    if p.is_file() and not p.is_symlink():
      rel = p.relative_to(src).as_posix()
      (out / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(p, out / rel)
      files.append(rel)
  if not files:
    raise InstallError("python3.11-doc: no reST sources found")
  return files


def build_linux(extracted: dict[str, pathlib.Path], out: pathlib.Path) -> list[str]:
  tarballs = sorted(extracted["linux-source-6.1"].glob("usr/src/linux-source-*.tar.*"))
  if not tarballs:
    raise InstallError("linux-source-6.1: no source tarball in usr/src")
  files = []
  with tarfile.open(tarballs[0], mode="r|*") as tar:
    for member in tar:
      if not member.isfile() or not member.name.endswith((".c", ".h")):
        continue
      parts = pathlib.PurePosixPath(member.name).parts[1:]  # drop linux-source-6.1/
      if not parts or any(p in ("..", "") for p in parts) or parts[0].startswith("/"):
        continue
      rel = "/".join(parts)
      dest = out / rel
      dest.parent.mkdir(parents=True, exist_ok=True)
      with tar.extractfile(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
      files.append(rel)
  return sorted(files)


SPECS = {
    "austen": Spec(
        "austen", ("r-cran-janeaustenr",), build_austen,
        "Jane Austen's six completed novels (janeaustenr), one file per novel",
        "Novels in the public domain; janeaustenr packaging MIT",
    ),
    "kjv": Spec(
        "kjv", ("bible-kjv", "bible-kjv-text"), build_kjv,
        "King James Bible, one file per book in canonical order",
        "KJV text (1611) in the public domain; bible-kjv software GPL-2+",
    ),
    "pydocs": Spec(
        "pydocs", ("python3.11-doc",), build_pydocs,
        "Python 3.11 documentation, reST sources",
        "PSF License (Python documentation)",
    ),
    "linux": Spec(
        "linux", ("linux-source-6.1",), build_linux,
        "Linux 6.1 kernel source, *.c and *.h files",
        "GPL-2.0 (Linux kernel, with per-file SPDX identifiers)",
    ),
}


def install(
    name: str,
    data_root: str | None = None,
    *,
    force: bool = False,
    verify: bool = False,
    deb_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> pathlib.Path:
  """Installs corpus ``name`` under ``<data_root>/<name>``; returns that directory.

  Does nothing when an intact manifest is already there (unless ``force``).
  """
  if name not in SPECS:
    raise ValueError(f"unknown corpus {name!r}; installable: {', '.join(SPECS)}")
  spec = SPECS[name]
  root = pathlib.Path(data_root or corpora.default_data_root())
  dest = root / name
  if not force and dest.exists():
    problems = manifest_problems(dest, verify=verify)
    if not problems:
      log(f"{name}: already installed at {dest} (manifest intact); nothing to do")
      return dest
    log(f"{name}: existing install is not intact ({'; '.join(problems)}); reinstalling")
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as work:
    work = pathlib.Path(work)
    extracted, packages, copyrights = {}, [], []
    for pkg in spec.packages:
      log(f"{name}: fetching {pkg}")
      deb = fetch_deb(pkg, work, deb_dir)
      version = deb_field(deb, "Version")
      extracted[pkg] = extract_deb(deb, work / f"x-{pkg}")
      packages.append({"name": pkg, "version": version, "deb": deb.name,
                       "deb_sha256": sha256_file(deb)})
      copyrights.append((pkg, _copyright_text(extracted[pkg], pkg)))
    staging = work / "staging"
    staging.mkdir()
    log(f"{name}: building text files")
    files = spec.build(extracted, staging)
    (staging / "COPYRIGHT").write_text(
        "".join(f"==== {pkg} (/usr/share/doc/{pkg}/copyright)\n\n{text}\n"
                for pkg, text in copyrights),
        encoding="utf-8",
    )
    short = "; ".join(s for s in (licence_summary(t) for _, t in copyrights) if s)
    licence = spec.licence_note + (f" [copyright files: {short}]" if short else "")
    manifest = write_manifest(
        staging, name=name, files=files, packages=packages, licence=licence,
        description=spec.description,
    )
    if dest.exists():
      old = work / "old"
      os.replace(dest, old)
    os.replace(staging, dest)
  log(f"{name}: installed {manifest['num_files']} files, {manifest['total_bytes']:,} bytes "
      f"at {dest} ({', '.join(p['name'] + ' ' + p['version'] for p in packages)})")
  return dest
