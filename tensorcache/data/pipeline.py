"""Input pipelines (grain): packed training batches and long evaluation windows.

Entry points:

  ``make_train_iterator(data_config, *, seq_len, global_batch_size, seed,
  process_index=0, process_count=1)`` -> a checkpointable grain iterator of per-process
  batches (``get_state()`` / ``set_state()``; the state is a small JSON-able dict).

  ``make_eval_windows(data_config, *, seq_len, num_windows, min_len=None)`` -> a dict of
  stacked numpy arrays, each row a contiguous window inside ONE validation document.

``data_config`` is a mapping or ``ml_collections.ConfigDict`` whose fields, defaults and
meaning are listed once, in ``DEFAULTS`` / ``FIELD_DOCS`` (``default_data_config()``
returns them as a ConfigDict for run configs). Missing fields take their defaults;
unknown fields or names raise ``ValueError`` naming the valid choices.

Batches are dicts of numpy arrays: ``inputs`` int32 [b, T], ``targets`` int32 [b, T]
(``inputs`` shifted by one), ``weights`` float32 [b, T] and, for synthetic tasks,
``distance`` int32 [b, T] (see ``synthetic``).

Corpora (everything but the synthetic tasks):

* Documents are split into train/validation by a hash of their ``doc_id``: a document is
  validation iff ``sha256(doc_id)[:8] / 2**64 < val_fraction`` — deterministic, the same
  on every host, stable when other documents are added.
* Documents are tokenized once and cached under ``<data root>/cache/`` (``cache_dir``) as
  a flat token file (uint8 for bytes, uint16 for BPE up to 65536 ids) read by
  ``np.memmap``, with document offsets; every document is followed by the tokenizer's
  ``eos_id`` (byte level: id 0, the NUL byte; BPE: ``<|endoftext|>`` = 0).
* Training packs the training documents, in corpus order, into one stream
  ``doc EOS doc EOS ...`` cut into windows of ``seq_len + 1`` tokens with stride
  ``seq_len`` (each token is a target exactly once per epoch). ``weights`` are 1
  everywhere except padding (only the stream's last window is padded, with
  ``pad_id``); the EOS separator is a normal target. Windows are shuffled per epoch
  (``shuffle``), repeated ``num_epochs`` times (0 = forever).
* Process sharding: the shuffled window sequence is cut into global batches of
  ``global_batch_size``; process ``p`` of ``P`` gets rows ``[p*b, (p+1)*b)`` of every
  global batch (``b = global_batch_size / P``). Processes read disjoint windows, together
  cover every global batch, and the global batch at each step does not depend on ``P``.
* Evaluation windows: contiguous ``seq_len + 1`` token spans inside one validation
  document (no separator, no packing), taken round-robin over documents (window 0 of
  every document, then window 1, ...), non-overlapping, stride ``seq_len``. A document
  with fewer than ``seq_len + 1`` tokens is SKIPPED unless ``min_len`` is given: then a
  document with at least ``min_len + 1`` tokens yields one SHORTER window, right-padded
  to ``seq_len`` with weight 0 and its true length in ``lengths``. The tail of a long
  document that does not fill a whole window is dropped.

Synthetic tasks (``recall``, ``mqar``, ``passkey``): example ``i`` of the training stream
is ``synthetic.generate_example(task, seed, i, 'train')``; evaluation uses the disjoint
``'validation'`` stream. No shuffling is needed and ``val_fraction`` is unused.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tensorcache.data import corpora
from tensorcache.data import synthetic
from tensorcache.data import tokenizers as tokenizers_lib

TASK_SOURCES = synthetic.TASKS
CORPUS_SOURCES = ("stdlib", "austen", "kjv", "pydocs", "linux", "dir", "tfds")
SOURCES = TASK_SOURCES + CORPUS_SOURCES
CACHE_VERSION = 1

# The data config: every field, its default, and (in FIELD_DOCS) its meaning.
DEFAULTS: dict[str, Any] = {
    "source": "stdlib",
    "path": "",
    "glob": "**/*.txt",
    "data_root": "",
    "tokenizer": "byte",
    "tokenizer_path": "",
    "val_fraction": 0.05,
    "cache": True,
    "cache_dir": "",
    "shuffle": True,
    "num_epochs": 0,
    "read_threads": 2,
    "prefetch": 4,
    # synthetic tasks
    "num_pairs": 16,
    "num_queries": 0,
    "distance": 64,
    "distance_max": 0,
    "key_vocab": 64,
    "value_vocab": 64,
    "filler_vocab": 16,
    "passkey_len": 5,
    # tfds
    "tfds_data_dir": "",
    "tfds_split": "train",
    "tfds_text_key": "",
    "tfds_id_key": "",
    "tfds_download": False,
}

FIELD_DOCS: dict[str, str] = {
    "source": f"one of {', '.join(SOURCES)}",
    "path": "dir: the directory (required); stdlib: another library directory; "
            "austen/kjv/pydocs/linux: the corpus directory (default <data_root>/<source>); "
            "tfds: a catalog name such as 'pg19' (optionally 'name:version') or the "
            "directory of a prepared dataset",
    "glob": "dir: comma-separated glob patterns relative to path",
    "data_root": "root of installed corpora and of the token cache; '' = "
                 "$TENSORCACHE_DATA or ~/.cache/tensorcache/corpora",
    "tokenizer": f"one of {', '.join(tokenizers_lib.TOKENIZERS)} (corpora only)",
    "tokenizer_path": "bpe: the tokenizer JSON (train with `python -m tensorcache.data "
                      "train-bpe`)",
    "val_fraction": "fraction of documents (by doc_id hash) held out for validation",
    "cache": "cache tokenized corpora as memmapped token files",
    "cache_dir": "where the token cache lives; '' = <data_root>/cache",
    "shuffle": "shuffle training windows (reshuffled each epoch)",
    "num_epochs": "corpora: passes over the training windows; 0 = repeat forever",
    "read_threads": "grain prefetch threads (>= 1)",
    "prefetch": "batches prefetched per process",
    "num_pairs": "recall/mqar: key-value pairs per example",
    "num_queries": "recall/mqar: queries per example; 0 = task default (recall 1, mqar "
                   "num_pairs)",
    "distance": "tasks: filler tokens between the stored items and the first query (an "
                "int; a plain mapping may also give a (min, max) pair)",
    "distance_max": "tasks: if > 0, distance is drawn uniformly from [distance, "
                    "distance_max] per example",
    "key_vocab": "tasks: number of key tokens",
    "value_vocab": "tasks: number of value tokens",
    "filler_vocab": "tasks: number of filler tokens",
    "passkey_len": "passkey: digits in the passkey",
    "tfds_data_dir": "tfds: TFDS data_dir ('' = TFDS default)",
    "tfds_split": "tfds: split to read (documents are then split by val_fraction)",
    "tfds_text_key": "tfds: feature holding the text ('' = auto: text, book_text, content)",
    "tfds_id_key": "tfds: feature holding a document id ('' = auto, else the index)",
    "tfds_download": "tfds: download_and_prepare a catalog dataset if absent (network)",
}

assert set(FIELD_DOCS) == set(DEFAULTS)


def default_data_config():
  """The data config with every field at its default, as an ``ml_collections.ConfigDict``."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(dict(DEFAULTS))


# ---------------------------------------------------------------- config handling


def _as_dict(data_config: Any) -> dict[str, Any]:
  if data_config is None:
    return {}
  if hasattr(data_config, "to_dict"):
    return dict(data_config.to_dict())
  if hasattr(data_config, "as_configdict"):
    return dict(data_config.as_configdict().to_dict())
  if isinstance(data_config, Mapping):
    return dict(data_config)
  raise TypeError(f"data_config must be a mapping or ConfigDict; got {type(data_config)}")


def _choice_error(what: str, value: Any, valid: Sequence[str]) -> ValueError:
  close = difflib.get_close_matches(str(value), list(valid), n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return ValueError(f"unknown {what} {value!r}{hint}; valid choices: {', '.join(valid)}")


def resolve_data_config(data_config: Any) -> dict[str, Any]:
  """Validates ``data_config`` and fills defaults; returns a plain dict.

  ``distance`` comes back as a ``(min, max)`` tuple.

  Raises:
    ValueError: unknown keys, unknown source/tokenizer names, or out-of-range values.
  """
  cfg = _as_dict(data_config)
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    hints = {k: difflib.get_close_matches(k, list(DEFAULTS), n=1) for k in unknown}
    hint = "; ".join(f"{k!r} -> did you mean {v[0]!r}?" for k, v in hints.items() if v)
    raise ValueError(
        f"unknown data config key(s) {unknown}{' (' + hint + ')' if hint else ''}; "
        f"valid keys: {', '.join(DEFAULTS)}"
    )
  out = {**DEFAULTS, **cfg}
  for key in ("path", "glob", "data_root", "tokenizer_path", "cache_dir", "tfds_data_dir",
              "tfds_text_key", "tfds_id_key"):
    if out[key] is None:
      out[key] = ""
  if out["source"] not in SOURCES:
    raise _choice_error("data source", out["source"], SOURCES)
  if out["tokenizer"] not in tokenizers_lib.TOKENIZERS:
    raise _choice_error("tokenizer", out["tokenizer"], tokenizers_lib.TOKENIZERS)
  if not 0.0 <= float(out["val_fraction"]) < 1.0:
    raise ValueError(f"val_fraction must lie in [0, 1); got {out['val_fraction']}")
  for key in ("num_epochs", "prefetch", "num_queries", "distance_max"):
    if int(out[key]) < 0:
      raise ValueError(f"{key} must be >= 0; got {out[key]}")
  if int(out["read_threads"]) < 1:
    raise ValueError(f"read_threads must be >= 1; got {out['read_threads']}")
  dist = out["distance"]
  if isinstance(dist, (list, tuple)):
    dist = tuple(int(d) for d in dist)
    if len(dist) != 2:
      raise ValueError(f"distance must be an int or a (min, max) pair; got {out['distance']!r}")
    if int(out["distance_max"]) not in (0, dist[1]):
      raise ValueError("give distance as a (min, max) pair or use distance_max, not both")
  else:
    lo = int(dist)
    dist = (lo, int(out["distance_max"]) if int(out["distance_max"]) else lo)
  if dist[0] < 0 or dist[1] < dist[0]:
    raise ValueError(f"distance range must satisfy 0 <= min <= max; got {dist}")
  out["distance"] = dist
  out["distance_max"] = dist[1]
  return out


def data_root(cfg: Mapping[str, Any]) -> str:
  return cfg.get("data_root") or corpora.default_data_root()


def task_config(cfg: Mapping[str, Any], seq_len: int) -> synthetic.TaskConfig:
  """The ``synthetic.TaskConfig`` described by a resolved data config."""
  return synthetic.make_task(
      cfg["source"], seq_len=seq_len, num_pairs=int(cfg["num_pairs"]),
      num_queries=int(cfg["num_queries"]), distance=cfg["distance"],
      passkey_len=int(cfg["passkey_len"]), key_vocab=int(cfg["key_vocab"]),
      value_vocab=int(cfg["value_vocab"]), filler_vocab=int(cfg["filler_vocab"]),
  )


def get_data_tokenizer(data_config: Any):
  """The tokenizer named by the data config (corpora only)."""
  cfg = resolve_data_config(data_config)
  return tokenizers_lib.get_tokenizer(cfg["tokenizer"], cfg["tokenizer_path"] or None)


def vocab_size(data_config: Any) -> int:
  """Vocabulary size a model needs for this data config (task layout or tokenizer)."""
  cfg = resolve_data_config(data_config)
  if cfg["source"] in TASK_SOURCES:
    return synthetic.task_vocab_size(
        cfg["source"], key_vocab=int(cfg["key_vocab"]), value_vocab=int(cfg["value_vocab"]),
        filler_vocab=int(cfg["filler_vocab"]),
    )
  return get_data_tokenizer(cfg).vocab_size


def make_corpus(data_config: Any) -> corpora.Corpus:
  """The ``Corpus`` named by the data config (``source`` must be a corpus source)."""
  cfg = resolve_data_config(data_config)
  source = cfg["source"]
  if source in TASK_SOURCES:
    raise ValueError(f"source {source!r} is a synthetic task, not a corpus")
  if source == "tfds":
    from tensorcache.data import tfds_builder  # pylint: disable=g-import-not-at-top

    return tfds_builder.TfdsCorpus(
        cfg["path"], data_dir=cfg["tfds_data_dir"] or None, split=cfg["tfds_split"],
        text_key=cfg["tfds_text_key"] or None, id_key=cfg["tfds_id_key"] or None,
        download=bool(cfg["tfds_download"]),
    )
  return corpora.get_corpus(source, cfg["path"] or None, data_root=data_root(cfg),
                            glob=cfg["glob"])


# ---------------------------------------------------------------- tokenized corpora


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """A corpus as one flat token array: document ``d`` is
  ``tokens[offsets[d] : offsets[d+1] - 1]`` followed by ``eos_id`` at ``offsets[d+1] - 1``.
  """

  tokens: np.ndarray
  offsets: np.ndarray
  doc_ids: tuple[str, ...]
  eos_id: int
  pad_id: int
  vocab_size: int

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  def doc_len(self, d: int) -> int:
    """Tokens in document ``d`` (without its separator)."""
    return int(self.offsets[d + 1] - self.offsets[d] - 1)

  def doc(self, d: int) -> np.ndarray:
    """Document ``d``'s tokens as int32 (without its separator)."""
    return np.asarray(self.tokens[self.offsets[d] : self.offsets[d + 1] - 1], dtype=np.int32)


def _token_dtype(vocab: int) -> np.dtype:
  if vocab <= 256:
    return np.dtype(np.uint8)
  if vocab <= 65536:
    return np.dtype(np.uint16)
  return np.dtype(np.int32)


def _batched_docs(corpus: corpora.Corpus, n: int = 64) -> Iterator[list[tuple[str, str]]]:
  chunk = []
  for doc in corpus.documents():
    chunk.append(doc)
    if len(chunk) == n:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _tokenize_into(corpus, tokenizer, sink) -> tuple[list[str], list[int]]:
  """Streams documents through ``tokenizer`` and ``sink(array)``; returns ids, lengths."""
  dtype = _token_dtype(tokenizer.vocab_size)
  eos = np.asarray([tokenizer.eos_id], dtype=dtype)
  doc_ids, lengths = [], []
  seen = set()
  for chunk in _batched_docs(corpus):
    encode_batch = getattr(tokenizer, "encode_batch", None)
    texts = [t for _, t in chunk]
    encoded = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
    for (doc_id, _), ids in zip(chunk, encoded):
      if doc_id in seen:
        raise ValueError(f"corpus {corpus.name!r} yields doc_id {doc_id!r} twice")
      seen.add(doc_id)
      sink(np.asarray(ids).astype(dtype, copy=False))
      sink(eos)
      doc_ids.append(doc_id)
      lengths.append(len(ids) + 1)
  return doc_ids, lengths


def _offsets(lengths: Sequence[int]) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def tokenize_corpus(
    corpus: corpora.Corpus, tokenizer, *, cache_dir: str | None = None
) -> TokenizedCorpus:
  """Tokenizes ``corpus``; with ``cache_dir`` reuses/writes a memmapped token cache.

  The cache entry is keyed by the corpus fingerprint and the tokenizer fingerprint and
  written atomically (a temporary directory renamed into place).
  """
  dtype = _token_dtype(tokenizer.vocab_size)
  meta = {"eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
          "vocab_size": tokenizer.vocab_size, "dtype": dtype.name}
  if not cache_dir:
    pieces = []
    doc_ids, lengths = _tokenize_into(corpus, tokenizer, pieces.append)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    return TokenizedCorpus(tokens, _offsets(lengths), tuple(doc_ids), tokenizer.eos_id,
                           tokenizer.pad_id, tokenizer.vocab_size)

  key = hashlib.sha256(json.dumps({
      "v": CACHE_VERSION, "corpus": corpus.fingerprint(), "tokenizer": tokenizer.fingerprint(),
  }).encode()).hexdigest()[:20]
  entry = pathlib.Path(cache_dir) / f"{corpus.name}-{key}"
  if not (entry / "meta.json").is_file():
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
      with open(tmp / "tokens.bin", "wb") as f:
        doc_ids, lengths = _tokenize_into(corpus, tokenizer, lambda a: f.write(a.tobytes()))
      np.save(tmp / "offsets.npy", _offsets(lengths))
      (tmp / "doc_ids.json").write_text(json.dumps(doc_ids), encoding="utf-8")
      info = {**meta, "num_tokens": int(sum(lengths)), "num_docs": len(doc_ids),
              "corpus": corpus.name}
      (tmp / "meta.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
      try:
        os.replace(tmp, entry)
      except OSError:  # another process won the race; use its entry
        pass
    finally:
      if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("tokenized %s into %s", corpus.name, entry)
  info = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
  n = int(info["num_tokens"])
  if n:
    tokens = np.memmap(entry / "tokens.bin", dtype=np.dtype(info["dtype"]), mode="r", shape=(n,))
  else:
    tokens = np.zeros(0, np.dtype(info["dtype"]))
  offsets = np.load(entry / "offsets.npy")
  doc_ids = tuple(json.loads((entry / "doc_ids.json").read_text(encoding="utf-8")))
  return TokenizedCorpus(tokens, offsets, doc_ids, int(info["eos_id"]), int(info["pad_id"]),
                         int(info["vocab_size"]))


def load_tokenized_corpus(data_config: Any) -> TokenizedCorpus:
  """The data config's corpus, tokenized (through the cache when ``cache`` is on)."""
  cfg = resolve_data_config(data_config)
  corpus = make_corpus(cfg)
  tokenizer = get_data_tokenizer(cfg)
  cache_dir = None
  if cfg["cache"]:
    cache_dir = cfg["cache_dir"] or os.path.join(data_root(cfg), "cache")
  return tokenize_corpus(corpus, tokenizer, cache_dir=cache_dir)


# ---------------------------------------------------------------- document split


def validation_score(doc_id: str) -> float:
  """A uniform number in [0, 1) from the document id (first 8 bytes of its sha256)."""
  digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation_doc(doc_id: str, val_fraction: float) -> bool:
  return validation_score(doc_id) < val_fraction


def split_documents(
    doc_ids: Sequence[str], val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
  """Document indices ``(train, validation)``, each in corpus order."""
  is_val = np.array([is_validation_doc(d, val_fraction) for d in doc_ids], dtype=bool)
  return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# ---------------------------------------------------------------- training windows


class PackedWindows:
  """Random-access packed training windows over a concatenation of documents.

  The stream is ``tokens[offsets[d] : offsets[d+1]]`` (document + separator) for each
  ``d`` in ``doc_indices``; window ``i`` is ``stream[i*T : i*T + T + 1]``, right-padded
  with ``pad_id`` (weight 0) when the stream ends.
  """

  def __init__(self, tc: TokenizedCorpus, doc_indices: Sequence[int], seq_len: int):
    self.tokens = tc.tokens
    self.pad_id = tc.pad_id
    self.seq_len = int(seq_len)
    idx = np.asarray(doc_indices, dtype=np.int64)
    self.seg_start = tc.offsets[idx]
    self.seg_len = tc.offsets[idx + 1] - tc.offsets[idx]
    self.cum = np.concatenate([[0], np.cumsum(self.seg_len)]).astype(np.int64)
    self.stream_len = int(self.cum[-1])
    self.num_windows = max(0, math.ceil((self.stream_len - 1) / self.seq_len))

  def __len__(self) -> int:
    return self.num_windows

  def read(self, start: int, stop: int) -> np.ndarray:
    """``stream[start:stop]`` (clipped to the stream) as int32."""
    stop = min(stop, self.stream_len)
    out = []
    seg = int(np.searchsorted(self.cum, start, side="right")) - 1
    pos = start
    while pos < stop:
      lo = pos - self.cum[seg]
      take = min(self.seg_len[seg] - lo, stop - pos)
      s = self.seg_start[seg] + lo
      out.append(np.asarray(self.tokens[s : s + take]))
      pos += take
      seg += 1
    if not out:
      return np.zeros(0, np.int32)
    return np.concatenate(out).astype(np.int32)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    if not 0 <= i < self.num_windows:
      raise IndexError(f"window {i} out of range [0, {self.num_windows})")
    t = self.seq_len
    chunk = self.read(i * t, i * t + t + 1)
    buf = np.full(t + 1, self.pad_id, np.int32)
    buf[: len(chunk)] = chunk
    weights = (np.arange(t) < len(chunk) - 1).astype(np.float32)
    return {"inputs": buf[:-1], "targets": buf[1:], "weights": weights}


def _grain():
  """The grain module exposing ``MapDataset``/``ReadOptions`` (version-sensitive import)."""
  import grain  # pylint: disable=g-import-not-at-top

  if not hasattr(grain, "MapDataset"):  # older releases: everything under grain.python
    import grain.python as grain  # pylint: disable=g-import-not-at-top
  return grain


def _check_sharding(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index < process_count; got {process_index}, {process_count}"
    )
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size ({global_batch_size}) must be a positive multiple of "
        f"process_count ({process_count})"
    )
  return global_batch_size // process_count


def make_train_dataset(
    data_config: Any,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
):
  """This process's training batches as a random-access ``grain.MapDataset``.

  Element ``s`` is this process's share of global batch ``s`` (see the module docstring).
  ``make_train_iterator`` wraps it in a prefetching, checkpointable iterator.
  """
  grain = _grain()
  cfg = resolve_data_config(data_config)
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1; got {seq_len}")
  per_process = _check_sharding(global_batch_size, process_index, process_count)
  if cfg["source"] in TASK_SOURCES:
    ds = grain.MapDataset.source(synthetic.TaskSource(task_config(cfg, seq_len), seed, "train"))
    finite = False
  else:
    tc = load_tokenized_corpus(cfg)
    train_idx, _ = split_documents(tc.doc_ids, float(cfg["val_fraction"]))
    windows = PackedWindows(tc, train_idx, seq_len)
    if len(windows) == 0:
      raise ValueError(
          f"source {cfg['source']!r}: no training tokens ({len(train_idx)} training documents "
          f"of {tc.num_docs}); lower val_fraction or add documents"
      )
    ds = grain.MapDataset.source(windows)
    if cfg["shuffle"]:
      ds = ds.shuffle(seed=int(seed))
    epochs = int(cfg["num_epochs"])
    ds = ds.repeat(epochs or None)
    finite = bool(epochs)
  ds = ds.batch(per_process, drop_remainder=True)
  if finite:
    usable = (len(ds) // process_count) * process_count
    if usable == 0:
      raise ValueError(
          f"{cfg['num_epochs']} epoch(s) of {len(windows)} windows make no complete global "
          f"batch of {global_batch_size}"
      )
    ds = ds[:usable]
  return ds[process_index::process_count]


def make_train_iterator(
    data_config: Any,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
):
  """A checkpointable iterator over this process's training batches.

  Args:
    data_config: mapping or ConfigDict (fields: ``DEFAULTS``).
    seq_len: T, the length of ``inputs``/``targets``.
    global_batch_size: rows per step over all processes (a multiple of process_count).
    seed: shuffling seed (corpora) or example seed (tasks).
    process_index, process_count: this JAX process and the number of processes
      (``jax.process_index()``, ``jax.process_count()``).

  Returns:
    A ``grain.DatasetIterator`` yielding dicts of numpy arrays ``inputs`` int32 [b, T],
    ``targets`` int32 [b, T], ``weights`` float32 [b, T] (+ ``distance`` int32 [b, T] for
    tasks), ``b = global_batch_size // process_count``. ``it.get_state()`` returns a
    JSON-serializable dict; ``it.set_state(state)`` on an iterator made with the same
    arguments resumes with exactly the batches that followed the saved state.
  """
  grain = _grain()
  cfg = resolve_data_config(data_config)
  ds = make_train_dataset(
      cfg, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
  )
  options = grain.ReadOptions(
      num_threads=int(cfg["read_threads"]), prefetch_buffer_size=int(cfg["prefetch"])
  )
  return iter(ds.to_iter_dataset(options))


# ---------------------------------------------------------------- evaluation windows


def make_eval_windows(
    data_config: Any,
    *,
    seq_len: int,
    num_windows: int,
    min_len: int | None = None,
    seed: int = 0,
    split: str = "validation",
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
  """Contiguous evaluation windows, each inside ONE document of ``split``.

  Args:
    data_config: mapping or ConfigDict (fields: ``DEFAULTS``).
    seq_len: T, the window length (``inputs``/``targets`` of T tokens from T + 1).
    num_windows: the number of windows wanted over all processes. Fewer come back when
      the split has fewer eligible windows (a warning is logged).
    min_len: corpora: documents with fewer than ``seq_len + 1`` tokens are skipped when
      ``min_len`` is None; otherwise those with at least ``min_len + 1`` tokens give one
      shorter window (padded, weight 0, true length in ``lengths``).
    seed: tasks only: the example seed of the validation stream.
    split: ``validation`` (default) or ``train`` documents / task stream.
    process_index, process_count: window ``k`` goes to process ``k % process_count``.

  Returns:
    ``inputs``/``targets`` int32 [N, T], ``weights`` float32 [N, T] (0 on padding),
    ``lengths`` int32 [N] (valid positions per row); corpora add ``doc_ids`` (str [N])
    and ``offsets`` int64 [N] (token offset of the window in its document); tasks add
    ``distance`` int32 [N, T].
  """
  cfg = resolve_data_config(data_config)
  if split not in ("train", "validation"):
    raise ValueError(f"unknown split {split!r}; valid choices: train, validation")
  if seq_len < 1 or num_windows < 1:
    raise ValueError(f"seq_len and num_windows must be >= 1; got {seq_len}, {num_windows}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index < process_count; got {process_index}, {process_count}"
    )
  if min_len is None:
    min_len = seq_len
  if not 1 <= min_len <= seq_len:
    raise ValueError(f"min_len must lie in [1, seq_len={seq_len}]; got {min_len}")

  if cfg["source"] in TASK_SOURCES:
    task = task_config(cfg, seq_len)
    rows = [synthetic.generate_example(task, seed, i, split)
            for i in range(process_index, num_windows, process_count)]
    out = {k: np.stack([r[k] for r in rows]) if rows else np.zeros((0, seq_len), v.dtype)
           for k, v in synthetic.generate_example(task, seed, 0, split).items()}
    out["lengths"] = np.full(len(rows), seq_len, np.int32)
    return out

  tc = load_tokenized_corpus(cfg)
  train_idx, val_idx = split_documents(tc.doc_ids, float(cfg["val_fraction"]))
  docs = val_idx if split == "validation" else train_idx
  lens = np.array([tc.doc_len(int(d)) for d in docs], dtype=np.int64)
  full = np.where(lens >= seq_len + 1, (lens - 1) // seq_len, 0)
  short = (full == 0) & (lens >= min_len + 1)
  picks: list[tuple[int, int, int]] = []  # (doc, offset, length), round-robin
  rounds = max(int(full.max()) if len(full) else 0, 1)
  for j in range(rounds):
    if len(picks) >= num_windows:
      break
    for d, n, f, s in zip(docs.tolist(), lens.tolist(), full.tolist(), short.tolist()):
      if j < f:
        picks.append((d, j * seq_len, seq_len))
      elif j == 0 and s:
        picks.append((d, 0, n - 1))
  picks = picks[:num_windows]
  if len(picks) < num_windows:
    logging.warning(
        "make_eval_windows: %d of %d requested windows available (%d %s documents; "
        "seq_len=%d, min_len=%d)", len(picks), num_windows, len(docs), split, seq_len, min_len,
    )
  if not picks:
    raise ValueError(
        f"no {split} document of source {cfg['source']!r} has >= {min_len + 1} tokens "
        f"({len(docs)} {split} documents; longest {int(lens.max()) if len(lens) else 0}); "
        "lower seq_len/min_len or raise val_fraction"
    )
  picks = picks[process_index::process_count]
  n = len(picks)
  inputs = np.full((n, seq_len), tc.pad_id, np.int32)
  targets = np.full((n, seq_len), tc.pad_id, np.int32)
  weights = np.zeros((n, seq_len), np.float32)
  lengths = np.zeros(n, np.int32)
  for r, (d, off, length) in enumerate(picks):
    toks = tc.doc(d)[off : off + length + 1]
    inputs[r, :length] = toks[:-1]
    targets[r, :length] = toks[1:]
    weights[r, :length] = 1.0
    lengths[r] = length
  return {
      "inputs": inputs,
      "targets": targets,
      "weights": weights,
      "lengths": lengths,
      "doc_ids": np.array([tc.doc_ids[d] for d, _, _ in picks], dtype=str),
      "offsets": np.array([off for _, off, _ in picks], dtype=np.int64),
  }


def train_bpe(
    data_config: Any, vocab_size: int, out_path: str, *, max_docs: int | None = None
) -> tokenizers_lib.BPETokenizer:
  """Trains a BPE on the TRAINING documents of the data config's corpus and saves it."""
  cfg = resolve_data_config(data_config)
  corpus = make_corpus(cfg)
  frac = float(cfg["val_fraction"])

  def texts():
    train_texts = (t for d, t in corpus.documents() if not is_validation_doc(d, frac))
    for k, text in enumerate(train_texts):
      if max_docs is not None and k >= max_docs:
        return
      yield text

  tok = tokenizers_lib.BPETokenizer.train(texts(), vocab_size)
  tok.save(out_path)
  return tok
