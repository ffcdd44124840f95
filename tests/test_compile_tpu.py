"""Ahead-of-time TPU compiles of the trainer (``tensorcache.compile_tpu``), from this CPU host.

The ``small`` preset's real train step compiles for v5e:2x2 for every mechanism, and a run
that does not fit ends with exit status 2 and one line naming the batch that fits. The
``[test]`` extra installs ``libtpu`` (through ``jax[tpu]``), so CI runs these; without it
they skip with the reason. What they add to a CI run: ``docs/tpu.md``, "In CI".

The mesh is data=2 x fsdp=2, and the default pure data-parallel mesh (fsdp=1, a size-1
axis that splash attention's ``shard_map`` must make manual too) is compiled once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import re
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import base  # noqa: E402

TOPOLOGY = "v5e:2x2"
MECHANISMS = ("full", "window", "sinks", "infini", "tc")


@pytest.fixture(scope="module")
def compile_tpu():
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install -e '.[tpu]'): no TPU ahead-of-time compile")
  # A second pytest worker may hold libtpu's lockfile; compiling needs no exclusive TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from tensorcache import compile_tpu as module  # pylint: disable=g-import-not-at-top
  return module


@pytest.fixture(scope="module")
def devices(compile_tpu):
  try:
    return compile_tpu.topology_devices(TOPOLOGY)
  except Exception as e:  # pylint: disable=broad-exception-caught
    pytest.skip(f"libtpu cannot describe a {TOPOLOGY} topology here: {e}")


def small_run(mechanism: str, per_chip: int = 1, fsdp: int = 2):
  """The ``small`` preset's run config at ``per_chip`` sequences of 256 per chip."""
  config = base.get_config(f"small,{mechanism}")
  config.train.batch_size = per_chip * 4
  config.train.mesh.fsdp = fsdp
  return config


@pytest.fixture(scope="module")
def tc_at_one(compile_tpu, devices):
  return compile_tpu.compile_train(small_run("tc"), devices, compile_tpu.hbm_bytes(TOPOLOGY))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_small_train_step_compiles(compile_tpu, devices, tc_at_one, mechanism):
  hbm = compile_tpu.hbm_bytes(TOPOLOGY)
  step = tc_at_one if mechanism == "tc" else compile_tpu.compile_train(small_run(mechanism), devices, hbm)
  assert 0 < step.total <= hbm
  assert step.aliased > 0, "the train state is donated"
  assert step.flops > 0


def test_does_not_fit_names_the_batch_that_fits(compile_tpu, devices, capsys):
  """Sixteen sequences per chip against an HBM one byte above one sequence's total: one line,
  exit status 2, naming a batch that fits next to one that does not, both checked here by
  compiling them again. The named batch is not asserted to be 1: at a few sequences per chip
  the compiler's memory is not monotone in the batch (``small`` ``tc`` at 1 / 2 / 4 per chip:
  23.76 / 23.12 / 58.81 MB; ``window`` at 1 / 2 / 3: 16.62 / 16.18 / 15.74 MB)."""
  run = functools.partial(small_run, "window", fsdp=1)
  hbm = compile_tpu.compile_train(run(1), devices, 1 << 40).total + 1
  with pytest.raises(SystemExit) as exit_info:
    compile_tpu.fit_or_exit(run(16), TOPOLOGY, devices, hbm)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"does not fit on {TOPOLOGY}: 16 sequences of 256 per chip")
  named = re.fullmatch(r".*the largest that fits is (\d+) per chip: --config\.train\.batch_size=(\d+)", lines[0])
  assert named, lines[0]
  best = int(named.group(1))
  assert 1 <= best < 16 and int(named.group(2)) == 4 * best
  assert compile_tpu.compile_train(run(best), devices, hbm).total <= hbm
  with pytest.raises(compile_tpu.DoesNotFit):
    compile_tpu.compile_train(run(best + 1), devices, hbm)


def test_size_one_mesh_axis_compiles(compile_tpu, devices):
  """The default mesh (data=4 x fsdp=1): Mosaic refuses a splash kernel left in a partially
  automatic mesh, so the size-1 axis must be manual in its ``shard_map`` too."""
  hbm = compile_tpu.hbm_bytes(TOPOLOGY)
  step = compile_tpu.compile_train(small_run("window", fsdp=1), devices, hbm)
  assert 0 < step.total <= hbm


# ------------------------------------------------------------------ the batch search (no libtpu needed)


def _search(sizes_fn, start, unit, hbm, report_sizes=True):
  """``compile_tpu.search_batch`` over a fake compiler whose step at batch ``b`` takes
  ``sizes_fn(b)`` bytes; returns (answer, the batches compiled)."""
  from tensorcache import compile_tpu as module  # pylint: disable=g-import-not-at-top

  compiled, sizes = [], {}

  def fits(b):
    assert b > 0 and b % unit == 0, b
    assert b not in compiled, f"batch {b} compiled twice"
    compiled.append(b)
    if report_sizes is True or (report_sizes == "fitting" and sizes_fn(b) <= hbm):
      sizes[b] = sizes_fn(b)
    return sizes_fn(b) <= hbm

  return module.search_batch(fits, start, unit, hbm, sizes), compiled


def _brute_force(sizes_fn, unit, hbm):
  b = 0
  while sizes_fn(b + unit) <= hbm:
    b += unit
  return b


def test_batch_search_finds_the_largest_fitting_batch_in_few_compiles():
  """Memory linear in the batch (a constant plus a per-sequence cost): the answer in at most
  four compiles from any start; curved memory and compilers that report no sizes (a refused
  step), for every batch or for those that do not fit, still get the exact answer, in a
  bounded number of compiles."""
  rng = np.random.default_rng()
  for _ in range(300):
    unit = int(rng.choice([1, 2, 4]))
    fixed, per_row = int(rng.integers(1, 10**9)), int(rng.integers(10**6, 10**9))
    curve = int(rng.integers(0, 10**6))
    hbm = fixed + per_row * int(rng.integers(0, 300)) + int(rng.integers(0, per_row))
    start = unit * int(rng.integers(1, 64))
    linear = lambda b: fixed + per_row * b
    curved = lambda b: fixed + per_row * b + curve * b * b
    for sizes_fn, report, most in ((linear, True, 4), (curved, True, 24), (linear, False, 24),
                                   (curved, "fitting", 24)):
      answer, compiled = _search(sizes_fn, start, unit, hbm, report)
      assert answer == _brute_force(sizes_fn, unit, hbm), (unit, start, compiled)
      assert len(compiled) <= most, (unit, start, compiled)
      if answer:  # the answer and the next batch were both compiled
        assert answer in compiled and answer + unit in compiled
