"""The command lines as a user meets them: a mistake is one line and exit status 2 with
nothing created on disk; SIGINT / SIGTERM during training save the step reached, and
rerunning the same command resumes bit-identically to an uninterrupted run.

Each test runs ``python -m tensorcache.<command>`` in a subprocess (one CPU device).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tensorcache import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
ENV.pop("TENSORCACHE_DEBUG", None)

# The tiny tc model on the stdlib corpus, compiled fast; checkpoints only when interrupted
# and at the end, a progress line per step (stdout is a pipe, so no tqdm bar).
STEPS = 12
TRAIN = ["--config=configs/base.py:tiny,tc", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.train.checkpoint_every=1000", "--config.train.fast_compile=True",
         "--config.train.batch_size=4", "--config.train.seq_len=64", "--config.model.max_len=64"]


def command(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", f"tensorcache.{module}", *args]


def run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(command(module, *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=timeout)


def files_under(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str) -> None:
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  assert re.search(match, lines[0]), lines[0]


MISTAKES = {
    "config_typo": (["main", *TRAIN, "--config.model.windw=8", "--workdir={new}"],
                    r"--config.model.windw=8.*Did you mean \"window\""),
    "unknown_mechanism": (["main", "--config=configs/base.py:tiny,tcc", "--workdir={new}"],
                          r"Unknown mechanism 'tcc'; choose one of"),
    "invalid_value": (["main", *TRAIN, "--config.model.window=0", "--workdir={new}"],
                      r"needs window > 0 \(got 0\)"),
    "not_an_int": (["main", *TRAIN, "--config.train.steps=many", "--workdir={new}"],
                   r"--config.train.steps=many: invalid literal"),
    "indivisible_batch": (["main", *TRAIN, "--config.train.batch_size=3", "--config.optim.accum_steps=2",
                           "--workdir={new}"], r"train.batch_size=3 must be divisible"),
    "missing_workdir_evaluate": (["evaluate", "--workdir={new}"], r"--workdir .* does not exist"),
    "foreign_workdir_sample": (["sample", "--workdir={foreign}"], r"has no checkpoints/ directory"),
    "missing_npz_convert": (["convert", "--from-npz={new}/ref.npz", "--workdir={new}"], r"ref.npz"),
}
if importlib.util.find_spec("torch") is None:  # the optional extra's install command
  MISTAKES["missing_torch_convert"] = (["convert", "--from-torch={new}/ckpt.pt", "--workdir={new}"],
                                       r"needs torch: pip install -e '\.\[torch\]'")


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_mistakes_are_one_line_exit_2_and_create_nothing(mistake, tmp_path):
  args, match = MISTAKES[mistake]
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("not a run")
  before = files_under(tmp_path)
  proc = run(*(a.format(new=tmp_path / "new", foreign=foreign) for a in args))
  assert_one_line_error(proc, match)
  assert files_under(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
  proc = run("evaluate", f"--workdir={tmp_path / 'new'}", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = run("main", *TRAIN, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr and " I1" not in proc.stderr  # no library INFO lines
  assert [l for l in proc.stdout.splitlines() if l.startswith("step ")][-1].startswith(f"step {STEPS}/{STEPS}")
  return workdir


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_the_rerun_resumes_bit_identically(uninterrupted, tmp_path, signum):
  args = command("main", *TRAIN, f"--workdir={tmp_path}")
  proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:  # wait until step 3 has run, then signal
    if line.startswith("step 3/"):
      proc.send_signal(signum)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, err
  stopped = re.search(r"^interrupted at step (\d+); saved; rerun the same command to resume$", err, re.M)
  assert stopped, err
  step = int(stopped.group(1))
  assert 3 <= step < STEPS and "Traceback" not in err
  assert checkpoint.manager(str(tmp_path), create=False).latest_step() == step

  rerun = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr
  steps = [int(l.split()[1].split("/")[0]) for l in rerun.stdout.splitlines() if l.startswith("step ")]
  assert steps == list(range(step + 1, STEPS + 1))  # resumed, not restarted
  _, params, final = checkpoint.load_model(str(tmp_path))
  _, expected, expected_step = checkpoint.load_model(str(uninterrupted))
  assert final == expected_step == STEPS
  for x, y in zip(leaves(params), leaves(expected), strict=True):
    assert x.dtype == y.dtype and np.array_equal(x, y)


def test_demo_prints_a_line_per_arm_and_starts_fresh_unless_reuse(tmp_path):
  args = ("demo", f"--workdir={tmp_path}", "--steps=2", "--eval_examples=8")
  first = run(*args)
  assert first.returncode == 0, first.stderr
  assert "Traceback" not in first.stderr and " I1" not in first.stderr
  for i, arm in enumerate(("tc", "window", "full"), 1):
    assert f"[{i}/3] {arm}: training 2 steps, fresh" in first.stdout, first.stdout
    assert re.search(rf"^\[{i}/3\] {arm}: trained in \d+ s; evaluating", first.stdout, re.M)
    assert re.search(rf"^{arm} +\d\.\d{{3}}", first.stdout, re.M)  # its table row
  reused = run(*args, "--reuse")
  assert reused.returncode == 0, reused.stderr
  assert "[1/3] tc: training 2 steps, reusing the earlier run in" in reused.stdout
  assert "resuming from the checkpoint of step 2" in reused.stdout
  again = run(*args)  # fresh by default: the earlier runs are replaced, not resumed
  assert again.returncode == 0 and "replaced the earlier run" in again.stdout
  assert "resuming" not in again.stdout


def test_non_finite_training_is_one_line_naming_the_step(tmp_path):
  proc = run("main", *TRAIN, "--config.optim.lr=1e30", "--config.optim.warmup_steps=0",
             "--config.optim.clip=0.0", f"--workdir={tmp_path}")
  assert_one_line_error(proc, r"non-finite training at step 1: .*param_norm=inf.*no checkpoint had been saved")
  assert checkpoint.manager(str(tmp_path), create=False).all_steps() == []
