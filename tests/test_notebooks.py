"""Executes every notebook in ``notebooks/`` at its small size and fails on any error.

Each notebook reads ``TENSORCACHE_NOTEBOOK_SMALL=1`` in its sizes cell and shrinks to a few
seconds of work (the code paths are exercised, the numbers mean nothing). The notebooks'
own ``assert`` cells check their printed numbers against the library. Needs the
``[notebook]`` dependencies (nbclient, ipykernel, nbformat), which the ``[test]`` extra
installs; without them this test fails with the install command instead of skipping.

The kernel gets the test process's environment (CPU, and the 8 fake devices of
``conftest.py``, which ``04_kernels_and_scaling.ipynb`` shards over), the small switch, a
temporary working directory (so no earlier checkpoint is resumed) and XLA's backend
optimisation level 0. All four take about 3.5 CPU-minutes together on the project's 2-core
machine (about 1.5 minutes of wall time under ``pytest -n 2``).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import pytest

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
TIMEOUT_S = 600  # per cell


def _require(module: str):
  try:
    return __import__(module)
  except ImportError as e:  # fail loudly: a skipped notebook test would let the notebooks rot
    pytest.fail(f"the notebook tests need {module} ({e}); install with: pip install -e '.[test]'")


def test_notebooks_exist():
  names = [os.path.basename(p) for p in NOTEBOOKS]
  assert names == ["01_quickstart.ipynb", "02_memory_anatomy.ipynb", "03_long_context_eval.ipynb",
                   "04_kernels_and_scaling.ipynb"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped(path):
  with open(path, encoding="utf-8") as f:
    nb = json.load(f)
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
          f"{os.path.basename(path)} has outputs; commit notebooks with outputs stripped")
  text = "".join("".join(c["source"]) for c in nb["cells"])
  assert "colab-badge.svg" in text and "google.colab" in text and "# @param" in text
  assert "TENSORCACHE_NOTEBOOK_SMALL" in text


def _kernel_for_this_python(tmp_path, monkeypatch) -> str:
  """A kernelspec that runs ``sys.executable`` (whatever ``python3`` kernel the user's Jupyter
  directories hold might run another interpreter, without this package)."""
  name = "tensorcache-test"
  spec_dir = tmp_path / "jupyter" / "kernels" / name
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": name, "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
      [str(tmp_path / "jupyter")] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]))
  return name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  nbformat = _require("nbformat")
  nbclient = _require("nbclient")
  _require("ipykernel")
  nb = nbformat.read(path, as_version=4)
  # XLA's backend optimisation level 0 (what train.fast_compile sets for the train step) for
  # every compile: at these sizes compiling is most of a notebook's time.
  flags = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  env = dict(os.environ, TENSORCACHE_NOTEBOOK_SMALL="1", TENSORCACHE_NOTEBOOK_WORKDIR=str(tmp_path / "work"),
             XLA_FLAGS=flags)
  kernel = _kernel_for_this_python(tmp_path, monkeypatch)
  client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=kernel,
                                   resources={"metadata": {"path": NOTEBOOK_DIR}})
  t0 = time.perf_counter()
  client.execute(env=env)  # raises CellExecutionError (with the traceback) on any error
  print(f"{os.path.basename(path)}: {time.perf_counter() - t0:.1f} s")
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors
