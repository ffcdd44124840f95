"""Ahead-of-time TPU compiles of the trainer (``tensorcache.compile_tpu``), from this CPU host.

The ``small`` preset's real train step compiles for v5e:2x2 for every mechanism, and a run
that does not fit ends with exit status 2 and one line naming the batch that fits. Skipped,
with the reason, when ``libtpu`` is not installed (``pip install -e '.[tpu]'``). Cost on the
project's 2-core machine (2026-11-30, both cores shared with other jobs): 196 CPU seconds,
620 s wall, for the whole file; most of it is the ``tc`` compiles (one sequence per chip in
the fixture, two in the not-fit test).

The mesh is data=2 x fsdp=2, and the default pure data-parallel mesh (fsdp=1, a size-1
axis that splash attention's ``shard_map`` must make manual too) is compiled once.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

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


def test_does_not_fit_names_the_batch_that_fits(compile_tpu, devices, tc_at_one, capsys):
  """Two sequences per chip against an HBM one byte above one sequence's total: one line,
  exit status 2, naming one per chip (found by compiling)."""
  with pytest.raises(SystemExit) as exit_info:
    compile_tpu.fit_or_exit(small_run("tc", per_chip=2), TOPOLOGY, devices, tc_at_one.total + 1)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"does not fit on {TOPOLOGY}: 2 sequences of 256 per chip")
  assert "the largest that fits is 1 per chip: --config.train.batch_size=4" in lines[0]


def test_size_one_mesh_axis_compiles(compile_tpu, devices):
  """The default mesh (data=4 x fsdp=1): Mosaic refuses a splash kernel left in a partially
  automatic mesh, so the size-1 axis must be manual in its ``shard_map`` too."""
  hbm = compile_tpu.hbm_bytes(TOPOLOGY)
  step = compile_tpu.compile_train(small_run("window", fsdp=1), devices, hbm)
  assert 0 < step.total <= hbm
