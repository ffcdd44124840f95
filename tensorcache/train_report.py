"""What the trainer reports while it runs: the non-finite guard, progress (a tqdm bar on a
terminal, plain ``step / loss / tokens/s / ETA`` lines otherwise), the metric logs
(``metrics.py``) and the optional ``jax.profiler`` trace.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Mapping

import jax

from tensorcache import checkpoint, metrics as metrics_lib


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, gradient norm or parameter norm."""


def non_finite_message(step: int, m: Mapping[str, float], mngr) -> str:
  mngr.wait_until_finished()  # an earlier, verified step may still be writing
  last = [s for s in mngr.all_steps() if checkpoint.is_committed(mngr, s)]
  kept = (f"the last good checkpoint, step {max(last)}, is kept in {mngr.directory}; rerunning resumes from it"
          if last else "no checkpoint had been saved yet")
  return (f"non-finite training at step {step}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
          f"param_norm={m['param_norm']}. Stopped without saving this state; {kept}. "
          "Lower optim.lr, check the data (weights / ids) for NaNs, or raise optim.warmup_steps.")


def _duration(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Reporter:
  """Reads a step's metrics (the non-finite guard), shows progress and writes the logs.

  Progress on process 0: with ``train.progress`` and a terminal on stderr, a tqdm bar;
  otherwise (output redirected, or progress off) one plain line per ``train.log_every``
  steps on stdout.
  """

  def __init__(self, workdir: str, tc, start: int, tokens_per_step: int, mngr):
    self.tc, self.start, self.tokens_per_step, self.mngr = tc, start, tokens_per_step, mngr
    self.total = int(tc.steps)
    self.primary = jax.process_index() == 0
    self.writer = metrics_lib.MetricWriter(workdir, enabled=self.primary, resume_step=start)
    self.bar = None
    if tc.progress and self.primary and sys.stderr.isatty():
      from tqdm.auto import tqdm
      self.bar = tqdm(total=self.total, initial=start, unit="step", dynamic_ncols=True, desc="train")
    self.last, self.rate = time.perf_counter(), None

  def read(self, step: int, m_dev) -> None:
    """Blocks on step ``step``'s metrics; raises ``NonFiniteError`` on NaN/Inf."""
    m = {k: float(v) for k, v in jax.device_get(m_dev).items()}
    if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
      raise NonFiniteError(non_finite_message(step, m, self.mngr))
    now = time.perf_counter()
    dt, self.last = now - self.last, now
    if step > self.start + 1:  # a process's first step includes compilation
      rate = self.tokens_per_step / max(dt, 1e-9)
      self.rate = rate if self.rate is None else 0.9 * self.rate + 0.1 * rate
    logged = step % int(self.tc.log_every) == 0 or step == self.total
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s="-" if self.rate is None else f"{self.rate:.0f}",
                           refresh=False)
      self.bar.update(1)
    elif self.primary and logged:
      print(self._line(step, m["loss"]), flush=True)
    if logged:
      extra = {"tokens_per_s": self.rate} if self.rate is not None else {}
      self.writer.write(step, {**m, "step_time_s": dt, **extra})

  def _line(self, step: int, loss: float) -> str:
    line = f"step {step}/{self.total}  loss {loss:.4f}"
    if self.rate is not None:
      eta = (self.total - step) * self.tokens_per_step / self.rate
      line += f"  {self.rate:,.0f} tokens/s  ETA {_duration(eta)}"
    return line

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self.writer.write(step, scalars)

  def close(self) -> None:
    self.writer.close()
    if self.bar is not None:
      self.bar.close()


class Profiler:
  """``jax.profiler`` trace of steps ``(start, start + count]`` into ``<workdir>/profile``."""

  def __init__(self, workdir: str, start: int, count: int):
    self.dir, self.first, self.last = os.path.join(workdir, "profile"), start + 1, start + count
    self.active = False

  def before(self, step: int) -> None:
    if self.last >= self.first and step == self.first and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
