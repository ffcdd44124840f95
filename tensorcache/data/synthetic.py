"""Synthetic long-context tasks generated on the fly: recall, MQAR, passkey retrieval.

Every example is a pure function of ``(seed, split, index)`` (a numpy Philox/PCG stream
seeded with that triple), so a dataset of examples supports grain's random access and
checkpointing is just an index.

Vocabulary (shared by all tasks, so one model can be trained on one task and evaluated on
another; ``task_vocab_size`` gives its size)::

  0                      PAD      padding after the last query (weight 0)
  1                      BOS      first token of every example
  2                      KEY      passkey marker ("the pass key is")
  3                      QUERY    passkey question marker ("what is the pass key?")
  [4, 4+K)               keys     K = key_vocab
  [4+K, 4+K+V)           values   V = value_vocab
  [4+K+V, 4+K+V+F)       filler   F = filler_vocab
  [4+K+V+F, 4+K+V+F+10)  digits   passkey digits 0-9

Sequences (``seq_len + 1`` tokens; ``inputs = seq[:-1]``, ``targets = seq[1:]``):

  recall / mqar::

    BOS k1 v1 k2 v2 ... kN vN  f f ... f (d filler tokens)  q1 a1 q2 a2 ... qQ aQ  PAD ...

    Keys within an example are distinct; values are drawn independently (they may repeat).
    Each query ``qj`` is a stored key and ``aj`` its value. ``recall`` asks ``num_queries``
    distinct keys (default 1); ``mqar`` asks ``num_queries`` keys (default ``num_pairs``:
    every pair once, random order; more than ``num_pairs`` samples keys with replacement).

  passkey::

    BOS f ... f  KEY p1 .. pn  f ... f (d filler tokens)  QUERY p1 .. pn

    The passkey (``passkey_len`` digits) sits at depth
    ``seq_len + 1 - (2 * passkey_len + d + 3)`` tokens; the sequence has no padding.

Outputs (numpy, length T = ``seq_len``): ``inputs`` int32, ``targets`` int32 (next token),
``weights`` float32: 1 exactly at the positions whose *target* is an answer token (the
value after a query key, or a passkey digit after QUERY), 0 elsewhere; ``distance``
int32: for those positions, the distance in tokens from the stored item to its query,
``position(query key) - position(stored key)`` (equal to ``position(answer) -
position(stored value)``); 0 where ``weights == 0``.

``distance`` option (``d`` above, fixed or a ``(min, max)`` range sampled uniformly per
example): the number of filler tokens between the stored items and the first query. Every
recorded distance is therefore at least ``d + 2`` (recall/mqar) or exactly
``d + passkey_len + 1`` (passkey): asking ``d >= W`` puts every answer beyond a window of
``W`` tokens. The prediction of an answer happens at position ``t`` (the query key) and
needs the stored value at ``t - distance + 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

TASKS = ("recall", "mqar", "passkey")
SPLITS = {"train": 0, "validation": 1, "test": 2}

PAD_ID = 0
BOS_ID = 1
KEY_ID = 2
QUERY_ID = 3
NUM_SPECIAL = 4
NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class VocabLayout:
  """Token-id ranges of the synthetic tasks (see the module docstring)."""

  key_vocab: int = 64
  value_vocab: int = 64
  filler_vocab: int = 16

  def __post_init__(self):
    for name in ("key_vocab", "value_vocab", "filler_vocab"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")

  @property
  def key_start(self) -> int:
    return NUM_SPECIAL

  @property
  def value_start(self) -> int:
    return NUM_SPECIAL + self.key_vocab

  @property
  def filler_start(self) -> int:
    return self.value_start + self.value_vocab

  @property
  def digit_start(self) -> int:
    return self.filler_start + self.filler_vocab

  @property
  def vocab_size(self) -> int:
    return self.digit_start + NUM_DIGITS


def task_vocab_size(
    task: str = "recall", *, key_vocab: int = 64, value_vocab: int = 64, filler_vocab: int = 16
) -> int:
  """Vocabulary size a model needs for ``task`` (the layout is shared by all tasks)."""
  _check_task(task)
  return VocabLayout(key_vocab, value_vocab, filler_vocab).vocab_size


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown synthetic task {task!r}; valid choices: {', '.join(TASKS)}")


def _as_range(distance: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(distance, (int, np.integer)):
    lo = hi = int(distance)
  else:
    vals = tuple(int(x) for x in distance)
    if len(vals) != 2:
      raise ValueError(f"distance must be an int or a (min, max) pair; got {distance!r}")
    lo, hi = vals
  if lo < 0 or hi < lo:
    raise ValueError(f"distance range must satisfy 0 <= min <= max; got ({lo}, {hi})")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """One synthetic task, validated on construction (see the module docstring).

  Attributes:
    task: ``recall`` | ``mqar`` | ``passkey``.
    seq_len: T, the length of ``inputs`` (the sequence has T + 1 tokens).
    num_pairs: key/value pairs stored (recall, mqar); at most ``layout.key_vocab``.
    num_queries: queries asked; 0 means the task default (recall 1, mqar num_pairs).
    distance: (min, max) filler tokens between the stored items and the first query.
    passkey_len: digits in the passkey.
    layout: the token-id ranges.
  """

  task: str
  seq_len: int
  num_pairs: int = 16
  num_queries: int = 0
  distance: tuple[int, int] = (64, 64)
  passkey_len: int = 5
  layout: VocabLayout = VocabLayout()

  def __post_init__(self):
    _check_task(self.task)
    object.__setattr__(self, "distance", _as_range(self.distance))
    if self.seq_len < 2:
      raise ValueError(f"seq_len must be >= 2; got {self.seq_len}")
    if self.task == "passkey":
      if self.passkey_len < 1:
        raise ValueError(f"passkey_len must be >= 1; got {self.passkey_len}")
    else:
      if not 1 <= self.num_pairs <= self.layout.key_vocab:
        raise ValueError(
            f"num_pairs must lie in [1, key_vocab={self.layout.key_vocab}] (keys are "
            f"distinct); got {self.num_pairs}"
        )
      if self.num_queries < 0:
        raise ValueError(f"num_queries must be >= 0; got {self.num_queries}")
      if self.task == "recall" and self.queries > self.num_pairs:
        raise ValueError(
            f"recall asks distinct keys: num_queries ({self.queries}) must be <= "
            f"num_pairs ({self.num_pairs}); use task 'mqar' to repeat keys"
        )
    need = self.min_seq_len
    if need > self.seq_len:
      what = (f"passkey_len={self.passkey_len}" if self.task == "passkey" else
              f"num_pairs={self.num_pairs}, queries={self.queries}")
      raise ValueError(
          f"{self.task} with {what}, max distance={self.distance[1]} needs "
          f"seq_len >= {need}; got seq_len={self.seq_len} (largest distance that fits: "
          f"{self.distance[1] - (need - self.seq_len)})"
      )

  @property
  def queries(self) -> int:
    """The number of queries after resolving the task default."""
    if self.task == "passkey":
      return 1
    if self.num_queries:
      return self.num_queries
    return 1 if self.task == "recall" else self.num_pairs

  @property
  def min_seq_len(self) -> int:
    """Smallest ``seq_len`` that fits the longest example."""
    if self.task == "passkey":
      return 2 * self.passkey_len + self.distance[1] + 2
    return 2 * self.num_pairs + self.distance[1] + 2 * self.queries

  @property
  def vocab_size(self) -> int:
    return self.layout.vocab_size


def make_task(
    task: str,
    *,
    seq_len: int,
    num_pairs: int = 16,
    num_queries: int = 0,
    distance: int | Sequence[int] = 64,
    passkey_len: int = 5,
    key_vocab: int = 64,
    value_vocab: int = 64,
    filler_vocab: int = 16,
) -> TaskConfig:
  """Builds a validated ``TaskConfig``; ``distance`` is an int or a (min, max) range."""
  return TaskConfig(
      task=task,
      seq_len=seq_len,
      num_pairs=num_pairs,
      num_queries=num_queries,
      distance=_as_range(distance),
      passkey_len=passkey_len,
      layout=VocabLayout(key_vocab, value_vocab, filler_vocab),
  )


def _rng(seed: int, split: str | int, index: int) -> np.random.Generator:
  salt = SPLITS[split] if isinstance(split, str) else int(split)
  return np.random.default_rng([int(seed), salt, int(index)])


def generate_example(
    cfg: TaskConfig, seed: int, index: int, split: str | int = "train"
) -> dict[str, np.ndarray]:
  """Example ``index`` of the task's ``split`` stream (deterministic in its arguments).

  Returns:
    ``inputs``/``targets`` int32 [T], ``weights`` float32 [T], ``distance`` int32 [T].
  """
  if isinstance(split, str) and split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
  rng = _rng(seed, split, index)
  lay = cfg.layout
  n_tok = cfg.seq_len + 1
  seq = np.full(n_tok, PAD_ID, dtype=np.int32)
  answer_pos = []  # positions t in `inputs` whose target is an answer
  answer_dist = []
  d = int(rng.integers(cfg.distance[0], cfg.distance[1] + 1))
  seq[0] = BOS_ID

  if cfg.task == "passkey":
    n = cfg.passkey_len
    pre = n_tok - (2 * n + d + 3)
    seq[1 : 1 + pre] = lay.filler_start + rng.integers(0, lay.filler_vocab, size=pre)
    m = 1 + pre  # KEY marker
    digits = lay.digit_start + rng.integers(0, NUM_DIGITS, size=n)
    seq[m] = KEY_ID
    seq[m + 1 : m + 1 + n] = digits
    seq[m + 1 + n : m + 1 + n + d] = lay.filler_start + rng.integers(0, lay.filler_vocab, size=d)
    q = m + 1 + n + d  # QUERY marker
    seq[q] = QUERY_ID
    seq[q + 1 : q + 1 + n] = digits
    answer_pos = list(range(q, q + n))
    answer_dist = [q - m] * n
  else:
    n_pairs = cfg.num_pairs
    keys = lay.key_start + rng.choice(lay.key_vocab, size=n_pairs, replace=False)
    values = lay.value_start + rng.integers(0, lay.value_vocab, size=n_pairs)
    seq[1 : 1 + 2 * n_pairs : 2] = keys
    seq[2 : 2 + 2 * n_pairs : 2] = values
    start = 1 + 2 * n_pairs
    seq[start : start + d] = lay.filler_start + rng.integers(0, lay.filler_vocab, size=d)
    nq = cfg.queries
    if nq <= n_pairs:
      which = rng.choice(n_pairs, size=nq, replace=False)
    else:
      which = rng.integers(0, n_pairs, size=nq)
    q0 = start + d
    qpos = q0 + 2 * np.arange(nq)
    seq[qpos] = keys[which]
    seq[qpos + 1] = values[which]
    answer_pos = qpos.tolist()
    answer_dist = (qpos - (1 + 2 * which)).tolist()

  weights = np.zeros(cfg.seq_len, dtype=np.float32)
  distance = np.zeros(cfg.seq_len, dtype=np.int32)
  weights[answer_pos] = 1.0
  distance[answer_pos] = answer_dist
  return {
      "inputs": seq[:-1].copy(),
      "targets": seq[1:].copy(),
      "weights": weights,
      "distance": distance,
  }


class TaskSource:
  """A random-access source of task examples (grain ``RandomAccessDataSource`` protocol).

  ``len`` is ``num_examples`` (default 2**62: effectively unbounded); element ``i`` is
  ``generate_example(cfg, seed, i, split)``.
  """

  def __init__(
      self, cfg: TaskConfig, seed: int, split: str | int = "train", num_examples: int = 2**62
  ):
    self.cfg = cfg
    self.seed = int(seed)
    self.split = split
    self.num_examples = int(num_examples)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return generate_example(self.cfg, self.seed, int(index), self.split)

  def __repr__(self) -> str:
    return f"TaskSource({self.cfg}, seed={self.seed}, split={self.split!r})"
