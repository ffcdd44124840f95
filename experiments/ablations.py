"""Ablations on language modelling: the training correction, chunk size, window, write
rule, learned vs frozen decay and write rate, windowed vs dense training of the baselines.

Claim: the exact eviction-fed training scan gives lower far-position NLL than the
reference's write-on-insert scan and the chunk-mean shortcut (whose error grows with the
chunk C); the exact scan's result does not depend on C (only its parallel block size).

  python -m experiments.run --experiment=ablations --out=results/ablations
  python -m experiments.run --experiment=ablations --arms=exact,reference,chunk_mean --out=results/ablations
  python -m experiments.run --experiment=ablations --smoke --out=/tmp/ablations   # seconds, CPU
  python -m experiments.plot --experiment=ablations

Base: the ``small`` preset (4 layers / 4 heads / 128, trained at 256 tokens, W = 128, bf16,
batch 64, 1500 steps) with Tensor Cache (delta rule, chunk 64) on byte-level Jane Austen
(``python scripts/install_corpora.py austen``), evaluated like long_context_lm.py at 1K-8K.
Arms (``sweep()``): training correction ``exact``, ``reference``, ``chunk_mean`` (evicted
tokens), ``chunk_mean_insert`` (inserted tokens); chunk size ``chunk_mean_C<c>`` and
``exact_C<c>`` for C in 8-128; window ``tc_W<w>`` and ``window_W<w>`` for W in 32-128; rule
``rule_outer``, ``rule_wedge``; ``frozen`` (lambda and eta fixed at their initial values);
``window_dense``, ``sinks_dense``, ``full`` (baselines trained dense, as the reference does)
beside ``window``, ``sinks`` (trained windowed); ``smoke``.

``cpu_<arm>``: every arm at CPU size, the setting of long_context_lm.py's ``cpu_*`` arms (the
``tiny`` preset: 2 layers / 2 heads / 64, float32, W = 16, chunk 16; 1500 steps of 8 x 256
bytes of the CPython standard library; NLL at 256-4096 bytes), windows W in 8-32. At that
size ``cpu_exact_C16``, ``cpu_chunk_mean_C16``, ``cpu_tc_W16`` and ``cpu_window_W16`` are
``cpu_exact``, ``cpu_chunk_mean``, ``cpu_exact`` and ``cpu_window`` (the preset's chunk and window).

Hardware and time: one H200, 30-75 s per arm (12 of the 28 arms run: results/ablations).
The ``cpu_*`` arms (run: results/ablations_cpu): 2 CPU cores, 4-26 minutes each with other jobs sharing them,
the 24 distinct ones in two processes:

  python -m experiments.run --experiment=ablations --arms=$(python -c "from experiments import ablations; \
      print(','.join(ablations.cpu_arms()))") --num_arms=2 --arm_index=<0|1> --out=results/ablations_cpu
  python -m experiments.plot --experiment=ablations --results=results/ablations_cpu
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import models  # noqa: E402
from experiments import long_context_lm  # noqa: E402

CHUNKS = (8, 16, 32, 64, 128)
WINDOWS = (32, 64, 128)  # W < the trained 256 tokens: the memory is written in training
CPU_WINDOWS = (8, 16, 32)  # around the tiny preset's W = 16


def arms(windows: tuple[int, ...] = WINDOWS) -> dict[str, tuple[str, dict]]:
  """Arm name -> (mechanism, model fields over the preset)."""
  out = {
      "exact": ("tc", {}),
      "reference": ("tc", dict(memory_mode="reference")),
      "chunk_mean": ("tc", dict(memory_mode="chunk_mean")),
      "chunk_mean_insert": ("tc", dict(memory_mode="chunk_mean", chunk_mean_feed="insert")),
  }
  out.update({f"chunk_mean_C{c}": ("tc", dict(memory_mode="chunk_mean", chunk=c)) for c in CHUNKS})
  out.update({f"exact_C{c}": ("tc", dict(chunk=c)) for c in CHUNKS})
  out.update({f"{m}_W{w}": (m, dict(window=w)) for m in ("tc", "window") for w in windows})
  out.update({"rule_outer": ("tc", dict(rule="outer")), "rule_wedge": ("tc", dict(rule="wedge")),
              "frozen": ("tc", dict(freeze_decay_lr=True))})
  out.update({"window": ("window", {}), "sinks": ("sinks", {}), "full": ("full", {}),
              "window_dense": ("window", dict(train_window=False)),
              "sinks_dense": ("sinks", dict(train_window=False))})
  return out


def cpu_arms() -> list[str]:
  """The distinct ``cpu_*`` arms (those equal to a base arm at the tiny preset left out)."""
  tiny = models.PRESETS["tiny"]
  C, W = tiny["chunk"], tiny["window"]
  same = {f"exact_C{C}", f"chunk_mean_C{C}", f"tc_W{W}", f"window_W{W}"}
  return [f"cpu_{a}" for a in arms(CPU_WINDOWS) if a not in same]


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "smoke"  # the default needs no installed corpus (the config test trains it)
  if arm not in sweep():
    raise ValueError(f"Unknown arm {arm!r}; choose one of {sweep()}.")
  if arm.startswith("cpu_"):
    mechanism, fields = arms(CPU_WINDOWS)[arm[len("cpu_"):]]
    config = long_context_lm.cpu(mechanism)
  else:
    mechanism, fields = arms()["chunk_mean" if arm == "smoke" else arm]
    config = long_context_lm.lm_config("small", mechanism, "austen", 1500)
    config.study.context_lengths = (1024, 2048, 4096, 8192)
  config.model.update(fields)
  if arm == "smoke":  # the chunk-mean path in seconds
    config = long_context_lm.smoke(config)
  config.lock()
  return config


def sweep() -> list[str]:
  return list(arms()) + [f"cpu_{a}" for a in arms(CPU_WINDOWS)] + ["smoke"]
