"""Data: synthetic long-context tasks, text corpora, tokenizers and grain pipelines.

Public API (see each module's docstring for the contracts):

  make_train_iterator(data_config, *, seq_len, global_batch_size, seed,
                      process_index=0, process_count=1)   checkpointable grain iterator
  make_eval_windows(data_config, *, seq_len, num_windows, min_len=None, ...)
  default_data_config() / DEFAULTS / FIELD_DOCS           every data field, documented
  vocab_size(data_config)                                 vocabulary the model needs
  get_tokenizer(name, path) / ByteTokenizer / BPETokenizer
  get_corpus(name, path=None, ...) / Corpus               documents (doc_id, text)
  synthetic tasks: make_task, generate_example, task_vocab_size

``tfds_builder`` (TensorFlow Datasets) and ``install`` (corpus installers) are imported
on demand, not here.
"""

from tensorcache.data.corpora import CORPORA
from tensorcache.data.corpora import Corpus
from tensorcache.data.corpora import default_data_root
from tensorcache.data.corpora import get_corpus
from tensorcache.data.pipeline import DEFAULTS
from tensorcache.data.pipeline import FIELD_DOCS
from tensorcache.data.pipeline import SOURCES
from tensorcache.data.pipeline import TokenizedCorpus
from tensorcache.data.pipeline import default_data_config
from tensorcache.data.pipeline import load_tokenized_corpus
from tensorcache.data.pipeline import make_eval_windows
from tensorcache.data.pipeline import make_train_dataset
from tensorcache.data.pipeline import make_train_iterator
from tensorcache.data.pipeline import resolve_data_config
from tensorcache.data.pipeline import split_documents
from tensorcache.data.pipeline import vocab_size
from tensorcache.data.synthetic import TASKS
from tensorcache.data.synthetic import TaskConfig
from tensorcache.data.synthetic import generate_example
from tensorcache.data.synthetic import make_task
from tensorcache.data.synthetic import task_vocab_size
from tensorcache.data.tokenizers import BPETokenizer
from tensorcache.data.tokenizers import ByteTokenizer
from tensorcache.data.tokenizers import get_tokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CORPORA",
    "Corpus",
    "DEFAULTS",
    "FIELD_DOCS",
    "SOURCES",
    "TASKS",
    "TaskConfig",
    "TokenizedCorpus",
    "default_data_config",
    "default_data_root",
    "generate_example",
    "get_corpus",
    "get_tokenizer",
    "load_tokenized_corpus",
    "make_eval_windows",
    "make_task",
    "make_train_dataset",
    "make_train_iterator",
    "resolve_data_config",
    "split_documents",
    "task_vocab_size",
    "vocab_size",
]
