"""Long-context language modelling (METHOD.md §9): distance-stratified NLL per mechanism.

Claim: at window-level memory Tensor Cache lowers the NLL of far (>= W) and very far
(>= 4W) positions below window-only attention, also beyond the trained context; full
attention is the reference point whose cache grows with the context.

  python -m experiments.run --experiment=long_context_lm --out=results/long_context_lm
  python -m experiments.run --experiment=long_context_lm --smoke --out=/tmp/lm    # seconds, CPU
  python -m experiments.plot --experiment=long_context_lm

Arms: ``full window sinks infini tc``, the ``medium`` preset (6 layers / 6 heads / 384,
trained at 512 tokens, W = 256, bf16, batch 32, 2000 steps), byte-level Jane Austen (the
offline stand-in for PG-19: ``python scripts/install_corpora.py austen`` first); ``smoke``
(the tiny model on the CPython standard library, 3 steps); ``cpu_<mechanism>``, the same
study at CPU size: the ``tiny`` preset (2 layers / 2 heads / 64, W = 16), trained 1500 steps
on 8 x 256 bytes of the CPython standard library (real text that needs no download),
evaluated at 256-4096 bytes (16-256 W; 4096 is 16x the trained length), seed 0, and
``cpu_tc_s<k>`` / ``cpu_window_s<k>`` for seeds 1 and 2 (the same held-out text).
Evaluation: 8 held-out windows per context length 1K-32K streamed through the cache (the
chunked prefill equals token-by-token decoding), NLL stratified with one W = 256 for every
mechanism: all positions, >= m W for m in 0.5-64, and per distance bin.

Hardware and time: one H200, 43-114 s per arm (training 32.8M tokens at 1.3M-2.5M
tokens/s, then the evaluation), 6.5 minutes for the five (results/long_context_lm, one seed:
8 passes over the 4 MB corpus overfit; see experiments/README.md). The ``cpu_*`` arms: 2 CPU
cores, a few minutes each:

  python -m experiments.run --experiment=long_context_lm --arms=cpu_full,cpu_window,cpu_sinks,cpu_infini,cpu_tc,\
cpu_tc_s1,cpu_window_s1,cpu_tc_s2,cpu_window_s2 --out=results/long_context_lm_cpu
  python -m experiments.plot --experiment=long_context_lm --results=results/long_context_lm_cpu
"""

from __future__ import annotations

import os
import sys

import ml_collections

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402

MECHANISMS = ("full", "window", "sinks", "infini", "tc")
CPU_SEEDS = {"tc": (1, 2), "window": (1, 2)}  # more seeds at CPU size (``cpu_tc_s1``): the margin is small


def study_config() -> ml_collections.ConfigDict:
  """The evaluation after training (``experiments/studies.py:lm``)."""
  return ml_collections.ConfigDict(dict(
      kind="lm",
      context_lengths=(1024, 2048, 4096, 8192, 16384, 32768),
      eval_windows=8,
      multiples=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),  # NLL over positions >= m W
      strata_window=-1,  # -1: the model's window, for every mechanism (full included)
      eval_chunk=512,
      min_len=-1,  # -1: skip documents shorter than the context; else keep them down to this
  ))


def lm_config(preset: str, mechanism: str, source: str, steps: int) -> ml_collections.ConfigDict:
  """An unlocked run config of ``base`` with the LM study section (ablations.py uses it too)."""
  config = ml_collections.ConfigDict(base.get_config(f"{preset},{mechanism}").to_dict())
  config.data.source = source
  config.train.update(steps=steps, progress=False, checkpoint_every=500, eval_every=500)
  config.study = study_config()
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU-seconds variant: tiny model, the stdlib corpus, 3 steps, two short contexts."""
  config = ml_collections.ConfigDict(base.smoke(config, steps=3).to_dict())
  config.data.source = "stdlib"
  config.train.eval_every = 0
  config.study.update(context_lengths=(64, 128), eval_windows=2, multiples=(1.0, 2.0), eval_chunk=32)
  return config


def cpu(mechanism: str, seed: int = 0) -> ml_collections.ConfigDict:
  """The study at CPU size (the ``cpu_*`` arms; ``seed``: parameters and data order)."""
  config = lm_config("tiny", mechanism, "stdlib", 1500)
  config.train.update(seq_len=256, batch_size=8, seed=seed)
  config.model.max_len = 4096  # full attention's cache must hold the longest context
  config.study.update(context_lengths=(256, 512, 1024, 2048, 4096), eval_windows=4, eval_chunk=256)
  return config


def get_config(arm: str | None = None) -> ml_collections.ConfigDict:
  arm = arm or "smoke"  # the default needs no installed corpus (the config test trains it)
  if arm not in sweep():
    raise ValueError(f"Unknown arm {arm!r}; choose one of {sweep()}.")
  if arm.startswith("cpu_"):
    mechanism, _, seed = arm[len("cpu_"):].partition("_s")
    config = cpu(mechanism, int(seed or 0))
  else:
    config = lm_config("medium", "tc" if arm == "smoke" else arm, "austen", 2000)
  if arm == "smoke":
    config = smoke(config)
  config.lock()
  return config


def sweep() -> list[str]:
  seeds = [f"cpu_{m}_s{s}" for m, ss in CPU_SEEDS.items() for s in ss]
  return list(MECHANISMS) + [f"cpu_{m}" for m in MECHANISMS] + seeds + ["smoke"]
