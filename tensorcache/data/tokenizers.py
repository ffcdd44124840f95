"""Tokenizers: UTF-8 bytes (the default, no files needed) and a locally trained BPE.

Both expose the same small interface, used by the pipeline:

  ``encode(text) -> int32 [n]``, ``decode(ids) -> str``, ``vocab_size``, ``eos_id`` (the
  document separator the pipeline inserts after every document), ``pad_id`` (what padding
  positions hold; they always carry weight 0) and ``fingerprint()`` (a string that changes
  when the tokenizer would produce different ids; it keys the token cache).

Byte level: ids are the UTF-8 bytes, vocabulary 256. Id 0 (the NUL byte, which does not
occur in text files) is reserved as the document separator and as padding; ``encode``
does not strip NULs from the text.

BPE: a byte-level BPE from the Hugging Face ``tokenizers`` library (optional extra
``pip install -e '.[bpe]'``), trained locally from an iterator of texts and saved as one
JSON file. Id 0 is the special token ``<|endoftext|>``, used as separator and padding.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Protocol, Sequence

import numpy as np

TOKENIZERS = ("byte", "bpe")
EOS_TOKEN = "<|endoftext|>"
_BPE_INSTALL = "pip install -e '.[bpe]'"


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer."""

  vocab_size: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

  def fingerprint(self) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as tokens: vocabulary 256; id 0 (NUL) is the separator and padding."""

  vocab_size = 256
  eos_id = 0
  pad_id = 0

  def encode(self, text: str) -> np.ndarray:
    """UTF-8 encodes ``text``; returns int32 [n] with values in [0, 256)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Bytes back to text; invalid UTF-8 (e.g. a cut multi-byte char) becomes U+FFFD."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= 256):
      raise ValueError(
          f"byte tokenizer ids must lie in [0, 256); got range [{arr.min()}, {arr.max()}]"
      )
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def fingerprint(self) -> str:
    return "byte-utf8-v1"

  def __repr__(self) -> str:
    return "ByteTokenizer(vocab_size=256)"


def _import_hf_tokenizers():
  try:
    import tokenizers as hf_tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "the BPE tokenizer needs the Hugging Face `tokenizers` package: "
        f"{_BPE_INSTALL}"
    ) from e
  return hf_tokenizers


class BPETokenizer:
  """A byte-level BPE (Hugging Face ``tokenizers``); id 0 is ``<|endoftext|>``.

  Byte-level pre-tokenization means every string is encodable (no unknown token) and
  ``decode(encode(s)) == s``.
  """

  eos_id = 0
  pad_id = 0

  def __init__(self, hf_tokenizer):
    """Wraps a ``tokenizers.Tokenizer``; use ``train`` or ``load`` to make one."""
    self._tok = hf_tokenizer
    if self._tok.token_to_id(EOS_TOKEN) != 0:
      raise ValueError(f"BPE tokenizer must have {EOS_TOKEN!r} as id 0")
    self.vocab_size = int(self._tok.get_vocab_size())

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      vocab_size: int,
      *,
      min_frequency: int = 2,
      length: int | None = None,
  ) -> "BPETokenizer":
    """Trains a byte-level BPE of ``vocab_size`` ids on ``texts`` (seconds for ~10 MB).

    Args:
      texts: documents (any iterable of str; consumed once).
      vocab_size: target vocabulary, including the 256 byte symbols and ``<|endoftext|>``.
      min_frequency: pairs seen fewer times are not merged.
      length: number of texts, if known (progress display only).
    """
    hf = _import_hf_tokenizers()
    if vocab_size < 257:
      raise ValueError(f"BPE vocab_size must be >= 257 (256 bytes + {EOS_TOKEN}); got {vocab_size}")
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return cls(tok)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "BPETokenizer":
    """Loads a tokenizer saved by ``save`` (one JSON file)."""
    hf = _import_hf_tokenizers()
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"BPE tokenizer file {path!r} not found; train one with "
          "`python -m tensorcache.data train-bpe --source stdlib --vocab-size 4096 "
          f"--out {path}`"
      )
    return cls(hf.Tokenizer.from_file(path))

  def save(self, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._tok.save(path)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes many texts in parallel (Rust threads; no offsets when the library can)."""
    encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
    return [np.asarray(e.ids, dtype=np.int32) for e in encode(list(texts))]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    return self._tok.decode(ids, skip_special_tokens=False)

  def fingerprint(self) -> str:
    return "bpe-" + hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

  def __repr__(self) -> str:
    return f"BPETokenizer(vocab_size={self.vocab_size})"


def get_tokenizer(name: str, path: str | None = None) -> ByteTokenizer | BPETokenizer:
  """Returns the tokenizer ``name`` (``byte`` | ``bpe``); ``bpe`` loads the JSON at ``path``."""
  if name == "byte":
    return ByteTokenizer()
  if name == "bpe":
    if not path:
      raise ValueError(
          "tokenizer='bpe' needs tokenizer_path (a JSON file); train one with "
          "`python -m tensorcache.data train-bpe --source stdlib --vocab-size 4096 --out PATH`"
      )
    return BPETokenizer.load(path)
  raise ValueError(f"unknown tokenizer {name!r}; valid choices: {', '.join(TOKENIZERS)}")
