"""Metric writers: TensorBoard events (tensorboardX), ``metrics.jsonl`` and ``metrics.csv``.

One ``MetricWriter`` per run, writing on JAX process 0 only. All three get the same scalars
per logged step. On resume from step ``s`` the JSONL and CSV rows after ``s`` (written by the
interrupted run after its last checkpoint) are dropped and TensorBoard purges them, so each
log describes one history. The CSV header grows when a new metric appears (the file is
rewritten once).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Mapping

JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TB_DIR = "tb"


def _read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut by a kill: drop it
        continue
  return rows


class MetricWriter:
  """``write(step, scalars)``; ``close()``. ``resume_step``: drop logged rows after it."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, JSONL)
    self.csv_path = os.path.join(workdir, CSV)
    self._tb = None
    self._fields: list[str] | None = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      self._truncate(resume_step)
    if os.path.exists(self.csv_path):
      with open(self.csv_path, newline="", encoding="utf-8") as f:
        self._fields = next(csv.reader(f), None)
    from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
    self._tb = SummaryWriter(os.path.join(workdir, TB_DIR),
                             purge_step=None if not resume_step else resume_step + 1)

  def _truncate(self, step: int) -> None:
    if os.path.exists(self.jsonl_path):
      rows = [r for r in _read_jsonl(self.jsonl_path) if r.get("step", 0) <= step]
      with open(self.jsonl_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if os.path.exists(self.csv_path):
      with open(self.csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if r.get("step") and int(float(r["step"])) <= step]
      self._rewrite_csv(fields or ["step"], rows)

  def _rewrite_csv(self, fields: list[str], rows: list[dict]) -> None:
    with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
    self._fields = list(fields)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **values}
    with open(self.jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                          for k, v in record.items()}) + "\n")
    if self._fields is None or set(record) - set(self._fields):
      old = []
      if self._fields is not None and os.path.exists(self.csv_path):
        with open(self.csv_path, newline="", encoding="utf-8") as f:
          old = list(csv.DictReader(f))
      known = self._fields or ["step"]
      self._rewrite_csv(known + sorted(k for k in record if k not in known), old)
    with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
      csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore").writerow(record)
    for k, v in values.items():
      self._tb.add_scalar(k, v, global_step=int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
