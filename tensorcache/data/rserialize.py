"""Reads an R package's lazy-load data database with the ``rdata`` package.

An R data package built with ``LazyData: true`` (``janeaustenr`` is one) stores its objects
in ``<dir>/Rdata.rdb``, a blob of compressed serialized R objects, indexed by
``<dir>/Rdata.rdx``, itself a compressed serialized R list whose ``variables`` entry maps
each object's name to its ``(offset, length)`` in the blob. Each record is a 4-byte
big-endian uncompressed length, a compression marker and the compressed stream. This module
does only that bookkeeping; ``rdata`` (``pip install -e ".[corpora]"``, pure Python) parses
the serialized objects themselves.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from typing import Any

INSTALL = 'pip install -e ".[corpora]"'


def _rdata():
  try:
    import rdata  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading R data packages needs the 'rdata' package: {INSTALL}") from e
  return rdata


def unserialize(data: bytes) -> Any:
  """One serialized R object (``serialize()`` output, versions 2 and 3) as Python values:
  character vectors as arrays of ``str`` (``None`` for ``NA``), named lists as dicts."""
  rdata = _rdata()
  return rdata.conversion.convert(rdata.parser.parse_data(data, extension=".rds"))


def _record(chunk: bytes) -> bytes:
  """One lazy-load record: 4-byte big-endian length, a marker, the compressed stream."""
  (n,) = struct.unpack(">I", chunk[:4])
  body = chunk[4:]
  if body[:1] == b"x":  # a zlib header: R's default compression
    out = zlib.decompress(body)
  elif body[:1] in (b"2", b"Z", b"0"):  # bzip2, xz, stored
    out = {b"2": bz2.decompress, b"Z": lzma.decompress, b"0": bytes}[body[:1]](body[1:])
  else:
    raise ValueError(f"unknown lazy-load compression marker {body[:1]!r}")
  if len(out) != n:
    raise ValueError(f"lazy-load record has {len(out)} bytes, its header says {n}")
  return out


def read_lazyload_db(base: str | os.PathLike) -> dict[str, Any]:
  """Every object of the lazy-load database ``base`` (``base.rdx`` + ``base.rdb``), by name."""
  base = os.fspath(base)
  with open(base + ".rdx", "rb") as f:
    raw = f.read()
  index = unserialize(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else _record(raw))
  with open(base + ".rdb", "rb") as f:
    blob = f.read()
  return {str(name): unserialize(_record(blob[int(offset):int(offset) + int(length)]))
          for name, (offset, length) in index["variables"].items()}
