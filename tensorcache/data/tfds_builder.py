"""TensorFlow Datasets: a builder for the local corpora and the ``source='tfds'`` reader.

Optional (``pip install -e '.[tfds]'``); ``tensorflow_datasets`` is imported only when a
function here is called. TensorFlow itself is not needed for the local builder: datasets
are written in the ``array_record`` format and read with ``as_data_source``.

* ``build_local_dataset(corpus, data_dir)`` writes the TFDS dataset
  ``tensorcache_corpus/<name>`` (one ``train`` split holding every document, features
  ``doc_id`` and ``text``; the pipeline splits documents by ``doc_id`` hash as for the
  other corpora) and returns its directory.
* ``TfdsCorpus`` reads documents from a prepared dataset directory, or from a catalog
  dataset by name (e.g. ``pg19`` for cloud users: ``tfds_download=True`` downloads and
  prepares it, which needs network and disk; a catalog dataset prepared elsewhere in the
  ``tfrecord`` format is read through ``as_dataset`` and then needs TensorFlow).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Iterator

from tensorcache.data import corpora

BUILDER_NAME = "tensorcache_corpus"
DATASET_VERSION = "1.0.0"
TEXT_KEYS = ("text", "book_text", "content", "document", "article")
ID_KEYS = ("doc_id", "book_id", "id", "book_title", "title")

_BUILDER_CLASS = None


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' and the TFDS builder need tensorflow-datasets: pip install -e '.[tfds]'"
    ) from e
  return tfds


def builder_class():
  """The ``GeneratorBasedBuilder`` subclass for the local corpora (created once)."""
  global _BUILDER_CLASS
  if _BUILDER_CLASS is not None:
    return _BUILDER_CLASS
  tfds = _tfds()

  class TensorcacheCorpus(tfds.core.GeneratorBasedBuilder):
    """Documents of a Tensor Cache corpus: ``doc_id`` and ``text``, one ``train`` split."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Documents as (doc_id, text)."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=name, description=f"Tensor Cache corpus {name!r}")
        for name in corpora.CORPORA
    ]

    def __init__(self, *, corpus: corpora.Corpus | None = None, **kwargs):
      self._corpus = corpus
      super().__init__(**kwargs)

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "doc_id": tfds.features.Text(),
              "text": tfds.features.Text(),
          }),
          homepage="https://github.com/",
          description="Documents of a local corpus (tensorcache.data.corpora).",
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      corpus = self._corpus or corpora.get_corpus(self.builder_config.name)
      for doc_id, text in corpus.documents():
        yield doc_id, {"doc_id": doc_id, "text": text}

  _BUILDER_CLASS = TensorcacheCorpus
  return _BUILDER_CLASS


def build_local_dataset(
    corpus: corpora.Corpus | str,
    data_dir: str | os.PathLike,
    *,
    path: str | None = None,
    data_root: str | None = None,
    glob: str = "**/*.txt",
) -> str:
  """Builds ``tensorcache_corpus/<name>`` under ``data_dir``; returns the dataset directory.

  Args:
    corpus: a ``Corpus`` or a corpus name (then ``path``/``data_root``/``glob`` are passed
      to ``corpora.get_corpus``).
    data_dir: the TFDS data directory.
  """
  if isinstance(corpus, str):
    corpus = corpora.get_corpus(corpus, path, data_root=data_root, glob=glob)
  config = corpus.name if corpus.name in corpora.CORPORA else "dir"
  builder = builder_class()(
      config=config, corpus=corpus, data_dir=os.fspath(data_dir), file_format="array_record"
  )
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def _decode(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if hasattr(value, "item"):  # numpy scalar
    return _decode(value.item())
  return str(value)


class TfdsCorpus(corpora.Corpus):
  """Documents of a TFDS dataset split (a prepared directory or a catalog name)."""

  def __init__(
      self,
      name_or_dir: str,
      *,
      data_dir: str | None = None,
      split: str = "train",
      text_key: str | None = None,
      id_key: str | None = None,
      download: bool = False,
  ):
    if not name_or_dir:
      raise ValueError("source 'tfds' needs `path`: a catalog name (e.g. 'pg19') or a "
                       "prepared dataset directory")
    self.name = "tfds"
    self.name_or_dir = name_or_dir
    self.split = split
    tfds = _tfds()
    directory = pathlib.Path(os.path.expanduser(name_or_dir))
    if (directory / "dataset_info.json").is_file():
      self.builder = tfds.builder_from_directory(str(directory))
    else:
      self.builder = tfds.builder(name_or_dir, data_dir=data_dir)
      if not self.builder.is_prepared():
        if not download:
          raise FileNotFoundError(
              f"TFDS dataset {name_or_dir!r} is not prepared in "
              f"{data_dir or 'the default TFDS data_dir'}; set tfds_download=True (needs "
              "network) or point tfds_data_dir at a prepared copy"
          )
        self.builder.download_and_prepare(file_format="array_record")
    features = self.builder.info.features
    keys = list(features.keys())
    self.text_key = text_key or next((k for k in TEXT_KEYS if k in keys), None)
    if self.text_key not in keys:
      raise ValueError(f"TFDS dataset {name_or_dir!r}: no text feature among {keys}; set "
                       "tfds_text_key")
    self.id_key = id_key or next((k for k in ID_KEYS if k in keys), None)
    if split not in self.builder.info.splits:
      raise ValueError(f"TFDS dataset {name_or_dir!r} has splits "
                       f"{list(self.builder.info.splits)}, not {split!r}")

  def _records(self) -> Iterator[dict]:
    fmt = str(getattr(self.builder.info, "file_format", "")).lower()
    if "array_record" in fmt:
      source = self.builder.as_data_source(split=self.split)
      for i in range(len(source)):
        yield source[i]
    else:  # tfrecord: needs TensorFlow
      tfds = _tfds()
      yield from tfds.as_numpy(self.builder.as_dataset(split=self.split, shuffle_files=False))

  def documents(self) -> Iterator[tuple[str, str]]:
    seen = set()
    for i, rec in enumerate(self._records()):
      doc_id = _decode(rec[self.id_key]) if self.id_key else f"{self.split}/{i:09d}"
      if doc_id in seen:
        doc_id = f"{doc_id}#{i}"
      seen.add(doc_id)
      yield doc_id, _decode(rec[self.text_key])

  def fingerprint(self) -> str:
    info = self.builder.info
    h = hashlib.sha256()
    for part in (self.name_or_dir, str(self.builder.data_dir), str(info.version), self.split,
                 str(info.splits[self.split].num_examples), self.text_key, str(self.id_key)):
      h.update(part.encode() + b"\0")
    return h.hexdigest()

  def __repr__(self) -> str:
    return f"TfdsCorpus({self.name_or_dir!r}, split={self.split!r})"
