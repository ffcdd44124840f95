"""Runs an experiment's arms and collects their records into CSV files.

  python -m experiments.run --experiment=recall --out=results/recall            # every arm, in turn
  python -m experiments.run --experiment=recall --arms=tc_s0,window_s0 --out=results/recall
  python -m experiments.run --experiment=recall --smoke --out=/tmp/recall       # the smoke arm
  python -m experiments.run --experiment=recall --arm_index=3 --num_arms=8 --out=...   # a share
  python -m experiments.run --experiment=systems_scaling --fresh_process --out=$OUT/sys

``--experiment`` names a file of ``experiments/`` (its ``get_config(arm)`` and ``sweep()``).
Arms run one after another; ``--arm_index=i --num_arms=n`` runs arms ``i, i+n, ...`` of the
list (one process or host each on a cluster, all writing to one shared ``--out``), and
``--fresh_process`` starts a new process per arm (clean device memory and peak statistics).

Each arm writes ``<out>/arms/<arm>.json``: its records and their provenance (device, jax
version, date, run time, the command that reproduces that arm, git commit). After every arm
the CSVs are rebuilt from all arm files present: one ``<out>/<table>.csv`` per table the
records name, each row carrying the provenance columns. An arm whose file exists is skipped
unless ``--force``; training resumes from checkpoints in ``--workroot`` (not under ``--out``).
"""

from __future__ import annotations

import csv
import datetime
import glob
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVENANCE = ("experiment", "arm", "device", "platform", "jax_version", "date_utc", "run_s", "command", "git_commit")


def experiment_module(name: str):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  if not os.path.exists(path) or not hasattr(importlib.import_module(f"experiments.{name}"), "sweep"):
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                   if "\ndef sweep(" in open(p, encoding="utf-8").read())
    raise app.UsageError(f"Unknown experiment {name!r}; choose one of {names}.")
  return importlib.import_module(f"experiments.{name}")


def select_arms(sweep: list[str], arms: list[str] | None, smoke: bool, index: int, count: int) -> list[str]:
  """``--arms`` (checked against the sweep), or ``smoke``, or the sweep without ``smoke``;
  then this process's share ``[index::count]``."""
  if smoke:
    chosen = ["smoke"]
  elif arms:
    unknown = [a for a in arms if a not in sweep]
    if unknown:
      raise app.UsageError(f"Unknown arm(s) {unknown}; the sweep lists {sweep}.")
    chosen = list(arms)
  else:
    chosen = [a for a in sweep if a != "smoke"]
  if not 0 <= index < count:
    raise app.UsageError(f"--arm_index={index} must lie in [0, --num_arms={count}).")
  return chosen[index::count]


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def arm_command(experiment: str, arm: str, out: str) -> str:
  return f"python -m experiments.run --experiment={experiment} --arms={arm} --out={shlex.quote(out)}"


def provenance(experiment: str, arm: str, out: str, run_s: float) -> dict:
  import jax

  dev = jax.devices()[0]
  return dict(experiment=experiment, arm=arm, device=f"{len(jax.devices())} x {dev.device_kind}",
              platform=dev.platform, jax_version=jax.__version__,
              date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              run_s=round(run_s, 1), command=arm_command(experiment, arm, out), git_commit=_git_commit(),
              host=platform.node())


def run_arm(experiment: str, arm: str, out: str, workroot: str) -> dict:
  """Runs one arm in this process and writes ``<out>/arms/<arm>.json``; returns its content."""
  from experiments import studies

  config = experiment_module(experiment).get_config(arm)
  kind = config.study.kind
  reuse = config.study.get("reuse")  # another experiment's run (same config): its checkpoints
  workdir = os.path.join(workroot, *(reuse.split("/") if reuse else (experiment, arm)))
  t0 = time.perf_counter()
  records = studies.KINDS[kind](config, workdir)
  result = dict(meta=provenance(experiment, arm, out, time.perf_counter() - t0), kind=kind,
                config=json.loads(config.to_json_best_effort()), records=records)
  os.makedirs(os.path.join(out, "arms"), exist_ok=True)
  path = os.path.join(out, "arms", f"{arm}.json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=float)
  os.replace(path + ".tmp", path)  # a crash never leaves half a file for collect()
  return result


def collect(out: str) -> dict[str, int]:
  """Rebuilds ``<out>/<table>.csv`` from every ``<out>/arms/*.json``; returns rows per table."""
  tables: dict[str, list[dict]] = {}
  for path in sorted(glob.glob(os.path.join(out, "arms", "*.json"))):
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    meta = {k: result["meta"].get(k) for k in PROVENANCE}
    for rec in result["records"]:
      rec = dict(rec)
      tables.setdefault(rec.pop("table"), []).append(rec | meta)
  for table, rows in tables.items():
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, f"{table}.csv"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows(rows)
  return {t: len(r) for t, r in tables.items()}


def _run_fresh(experiment: str, arm: str, args: list[str], timeout: float | None) -> str:
  cmd = [sys.executable, "-m", "experiments.run", f"--experiment={experiment}", f"--arms={arm}", *args]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  try:
    rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
  except subprocess.TimeoutExpired:
    return f"timed out after {timeout:.0f} s"
  return "ok" if rc == 0 else f"exit {rc}"


def _define_flags() -> None:
  flags.DEFINE_string("experiment", None, "A file of experiments/ (without .py).", required=True)
  flags.DEFINE_list("arms", None, "Arms to run (default: every arm of sweep() except smoke).")
  flags.DEFINE_bool("smoke", False, "Run the smoke arm only.")
  flags.DEFINE_string("out", None, "Results directory (arms/*.json and the CSVs).", required=True)
  flags.DEFINE_string("workroot", os.path.join(os.environ.get("TMPDIR", "/tmp"), "tensorcache_experiments"),
                      "Checkpoints of the training runs: <workroot>/<experiment>/<arm>.")
  flags.DEFINE_integer("arm_index", 0, "This process's share: arms arm_index, arm_index + num_arms, ...")
  flags.DEFINE_integer("num_arms", 1, "Number of processes (or hosts) sharing the arms.")
  flags.DEFINE_bool("fresh_process", False, "Run each arm in a new process.")
  flags.DEFINE_float("arm_timeout_s", 0, "With --fresh_process: stop an arm after this long (0: never).")
  flags.DEFINE_bool("force", False, "Rerun arms whose results exist.")
  flags.DEFINE_bool("collect", False, "Only rebuild the CSVs from <out>/arms/*.json.")


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  if f.collect:
    print(collect(f.out))
    return
  module = experiment_module(f.experiment)
  arms = select_arms(module.sweep(), f.arms, f.smoke, f.arm_index, f.num_arms)
  counts = {}
  for arm in arms:
    done = os.path.join(f.out, "arms", f"{arm}.json")
    if os.path.exists(done) and not f.force:
      print(f"{f.experiment}/{arm}: results exist ({done}); --force reruns it", flush=True)
      continue
    t0 = time.perf_counter()
    if f.fresh_process:
      status = _run_fresh(f.experiment, arm, [f"--out={f.out}", f"--workroot={f.workroot}", "--force"],
                          f.arm_timeout_s or None)
    else:
      status = "ok" if run_arm(f.experiment, arm, f.out, f.workroot) else "no result"
    print(f"{f.experiment}/{arm}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    counts = collect(f.out)  # after every arm: the CSVs are current while a long sweep runs
  if arms:
    print(f"{f.out}: " + ", ".join(f"{t}.csv {n} rows" for t, n in sorted(counts.items())), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
