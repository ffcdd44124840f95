"""A small pure-Python reader of R's serialization format and lazy-load databases.

Enough of R's ``serialize()`` format (versions 2 and 3, XDR ``X`` and native ``B``
binary) to read data objects (character/numeric/logical vectors, lists, attributes,
pairlists, symbols, environments, the common ALTREP wrappers) — what an R data package
such as ``janeaustenr`` stores. Used by ``scripts/install_corpora.py`` so installing the
Austen corpus needs neither R nor a third-party parser. Byte code and external pointers
are not supported (they do not occur in data).

A lazy-load database (``<dir>/Rdata.rdx`` + ``Rdata.rdb``, written for ``LazyData:
true``) is an index (a gzip- or zlib-compressed serialized list with ``variables`` =
named list of ``(offset, length)``) and a blob of compressed serialized objects.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from typing import Any

# SEXP types used here (R Internals, "Serialization Formats").
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP = 7, 8, 9, 10
INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 13, 14, 15, 16, 17
VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = 19, 20, 21, 22, 23, 24, 25
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP = 238, 239, 240
BASEENV_SXP, EMPTYENV_SXP = 241, 242
PERSISTSXP, PACKAGESXP, NAMESPACESXP, BASENAMESPACE_SXP = 247, 248, 249, 250
MISSINGARG_SXP, UNBOUNDVALUE_SXP, GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 251, 252, 253, 254, 255

_PAIRLIST_TYPES = {LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP}
_LATIN1_MASK, _UTF8_MASK = 1 << 2, 1 << 3
NA_INTEGER = -(2**31)


class RVector(list):
  """An R vector or list as a Python list, with its R ``attributes`` (e.g. ``names``)."""

  def __init__(self, items=(), rtype: int = VECSXP, attributes: dict | None = None):
    super().__init__(items)
    self.rtype = rtype
    self.attributes = attributes or {}

  @property
  def names(self) -> list | None:
    return self.attributes.get("names")

  def as_dict(self) -> dict:
    """Named list -> dict (names must be present)."""
    if self.names is None:
      raise ValueError("R vector has no names")
    return dict(zip(self.names, self))


class RSymbol(str):
  """An R symbol (a name)."""


class REnvironment(dict):
  """An R environment's frame as a dict."""


class _Special(str):
  """Singletons such as the global environment."""


def _attributes_from_pairlist(pl) -> dict:
  if pl is None:
    return {}
  return {str(tag): value for tag, value in pl}


class _Reader:
  """Unserializes one object from ``data``."""

  def __init__(self, data: bytes):
    self.data = data
    self.pos = 0
    fmt = data[:2]
    if fmt == b"X\n":
      self._int, self._dbl = ">i", ">d"
    elif fmt == b"B\n":
      self._int, self._dbl = "<i", "<d"
    else:
      raise ValueError(f"unsupported R serialization format {fmt!r} (need X or B binary)")
    self.pos = 2
    self.version = self.read_int()
    self.read_int()  # writer R version
    self.read_int()  # minimal reader R version
    if self.version == 3:
      n = self.read_int()
      self.pos += n  # native encoding name
    elif self.version != 2:
      raise ValueError(f"unsupported R serialization version {self.version}")
    self.refs: list[Any] = []

  def read_int(self) -> int:
    (v,) = struct.unpack_from(self._int, self.data, self.pos)
    self.pos += 4
    return v

  def read_ints(self, n: int) -> list[int]:
    fmt = self._int[0] + f"{n}i"
    vals = struct.unpack_from(fmt, self.data, self.pos)
    self.pos += 4 * n
    return list(vals)

  def read_doubles(self, n: int) -> list[float]:
    fmt = self._dbl[0] + f"{n}d"
    vals = struct.unpack_from(fmt, self.data, self.pos)
    self.pos += 8 * n
    return list(vals)

  def read_length(self) -> int:
    n = self.read_int()
    if n == -1:
      hi, lo = self.read_int(), self.read_int()
      n = (hi << 32) + (lo & 0xFFFFFFFF)
    return n

  def read_bytes(self, n: int) -> bytes:
    b = self.data[self.pos : self.pos + n]
    self.pos += n
    return b

  def read_string_vec(self) -> list:
    if self.read_int() != 0:
      raise ValueError("malformed string vector in R stream")
    n = self.read_int()
    return [self.read_item() for _ in range(n)]

  def read_item(self) -> Any:  # noqa: C901 - one dispatch over SEXP types
    flags = self.read_int()
    t = flags & 0xFF
    levels = flags >> 12
    has_attr = bool(flags & (1 << 9))
    has_tag = bool(flags & (1 << 10))

    if t == REFSXP:
      idx = flags >> 8
      if idx == 0:
        idx = self.read_int()
      return self.refs[idx - 1]
    if t == NILVALUE_SXP:
      return None
    if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
             BASENAMESPACE_SXP):
      return _Special(f"<special {t}>")
    if t in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
      obj = _Special("<persist " + ",".join(str(s) for s in self.read_string_vec()) + ">")
      self.refs.append(obj)
      return obj
    if t == SYMSXP:
      sym = RSymbol(self.read_item() or "")
      self.refs.append(sym)
      return sym
    if t == ENVSXP:
      self.read_int()  # locked
      env = REnvironment()
      self.refs.append(env)
      self.read_item()  # enclosure
      frame = self.read_item()
      hashtab = self.read_item()
      self.read_item()  # attributes
      if frame:
        env.update({str(k): v for k, v in frame})
      if isinstance(hashtab, list):
        for bucket in hashtab:
          if bucket:
            env.update({str(k): v for k, v in bucket})
      return env
    if t in _PAIRLIST_TYPES:
      items = []
      while True:
        attr = self.read_item() if has_attr else None
        del attr
        tag = self.read_item() if has_tag else None
        items.append((tag, self.read_item()))
        # The tail (CDR) continues the list iteratively when it is another cell.
        flags = self.read_int()
        t2 = flags & 0xFF
        if t2 not in _PAIRLIST_TYPES:
          self.pos -= 4
          tail = self.read_item()
          if tail is not None:
            items.append((None, tail))
          return items
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
    if t == CHARSXP:
      n = self.read_int()
      if n == -1:
        return None
      raw = self.read_bytes(n)
      if levels & _LATIN1_MASK:
        return raw.decode("latin-1")
      return raw.decode("utf-8", errors="replace")
    if t in (SPECIALSXP, BUILTINSXP):
      return _Special(self.read_bytes(self.read_int()).decode("ascii", "replace"))
    if t == ALTREP_SXP:
      info = self.read_item()
      state = self.read_item()
      attrs = _attributes_from_pairlist(self.read_item())
      return self._altrep(info, state, attrs)

    if t in (LGLSXP, INTSXP):
      value = RVector(self.read_ints(self.read_length()), t)
    elif t == REALSXP:
      value = RVector(self.read_doubles(self.read_length()), t)
    elif t == CPLXSXP:
      d = self.read_doubles(2 * self.read_length())
      value = RVector([complex(a, b) for a, b in zip(d[::2], d[1::2])], t)
    elif t == STRSXP:
      n = self.read_length()
      value = RVector([self.read_item() for _ in range(n)], t)
    elif t in (VECSXP, EXPRSXP):
      n = self.read_length()
      value = RVector([self.read_item() for _ in range(n)], t)
    elif t == RAWSXP:
      value = RVector(list(self.read_bytes(self.read_length())), t)
    elif t == S4SXP:
      value = RVector([], t)
    elif t == EXTPTRSXP:
      value = RVector([], t)
      self.refs.append(value)
      self.read_item()
      self.read_item()
    elif t == WEAKREFSXP:
      value = RVector([], t)
      self.refs.append(value)
    else:
      raise ValueError(f"unsupported R object type {t} in serialized data")
    if has_attr:
      value.attributes = _attributes_from_pairlist(self.read_item())
    return value

  def _altrep(self, info, state, attrs):
    cls = str(info[0][1]) if info else ""
    if cls.startswith("wrap_"):
      out = state[0]
    elif cls in ("compact_intseq", "compact_realseq"):
      n, start, step = state[0], state[1], state[2]
      vals = [start + i * step for i in range(int(n))]
      out = RVector([int(v) for v in vals] if cls == "compact_intseq" else vals,
                    INTSXP if cls == "compact_intseq" else REALSXP)
    elif cls == "deferred_string":
      # state is a pairlist (original vector, scalar info): take the vector.
      arg = state[0][1] if state and isinstance(state[0], tuple) else state
      out = RVector(["NA" if v == NA_INTEGER else _r_format(v) for v in arg], STRSXP)
    else:
      raise ValueError(f"unsupported ALTREP class {cls!r} in serialized data")
    if attrs:
      out = RVector(out, getattr(out, "rtype", VECSXP), {**getattr(out, "attributes", {}), **attrs})
    return out


def _r_format(v) -> str:
  if isinstance(v, float) and v.is_integer():
    return str(int(v))
  return str(v)


def unserialize(data: bytes) -> Any:
  """Reads one R object from (uncompressed) ``serialize()`` output."""
  return _Reader(data).read_item()


def read_rds(path: str | os.PathLike) -> Any:
  """Reads an ``.rds`` file (gzip, bzip2, xz or uncompressed)."""
  with open(path, "rb") as f:
    raw = f.read()
  return unserialize(_decompress_any(raw))


def _decompress_any(raw: bytes) -> bytes:
  if raw[:2] == b"\x1f\x8b":
    return gzip.decompress(raw)
  if raw[:3] == b"BZh":
    return bz2.decompress(raw)
  if raw[:6] == b"\xfd7zXZ\x00":
    return lzma.decompress(raw)
  return raw


def _decompress_chunk(chunk: bytes) -> bytes:
  """One lazy-load DB record: 4-byte big-endian length, then the compressed stream."""
  (n,) = struct.unpack(">I", chunk[:4])
  body = chunk[4:]
  if body[:1] == b"x":  # zlib header (compress = TRUE)
    out = zlib.decompress(body)
  elif body[:1] == b"2":
    out = bz2.decompress(body[1:])
  elif body[:1] == b"Z":
    out = lzma.decompress(body[1:])
  elif body[:1] == b"0":
    out = body[1:]
  else:
    raise ValueError(f"unknown lazy-load compression marker {body[:1]!r}")
  if len(out) != n:
    raise ValueError(f"lazy-load record has {len(out)} bytes, header says {n}")
  return out


def read_lazyload_db(base: str | os.PathLike) -> dict[str, Any]:
  """Reads every variable of the lazy-load DB ``base`` (``base.rdx`` + ``base.rdb``)."""
  base = os.fspath(base)
  with open(base + ".rdx", "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b" or raw[:3] == b"BZh" or raw[:6] == b"\xfd7zXZ\x00":
    index = unserialize(_decompress_any(raw))
  else:
    index = unserialize(_decompress_chunk(raw))
  variables = index.as_dict()["variables"].as_dict()
  with open(base + ".rdb", "rb") as f:
    blob = f.read()
  out = {}
  for name, (offset, length) in variables.items():
    out[name] = unserialize(_decompress_chunk(blob[int(offset) : int(offset) + int(length)]))
  return out
