"""Run outputs: metrics.jsonl (one line per round), TensorBoard events, the final summary table."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def to_python(value: Any) -> Any:
  """JSON-friendly copy: numpy scalars/arrays to floats/lists, NaN kept as None."""
  if isinstance(value, dict):
    return {str(k): to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_python(value.tolist())
  if isinstance(value, (np.floating, float)):
    return None if not math.isfinite(float(value)) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


class MetricsWriter:
  """Appends one JSON line per round; on resume drops lines of rounds that were not checkpointed."""

  def __init__(self, workdir: str, resume_round: int, tensorboard: bool):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._truncate(resume_round)
    self.tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate(self, resume_round: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["round"] <= resume_round]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    record = to_python(record)
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    if self.tb is not None:
      for section in ("train", "eval", "server"):
        for key, value in record.get(section, {}).items():
          if isinstance(value, (int, float)):
            self.tb.add_scalar(f"{section}/{key}", value, record["round"])
      for client, values in record.get("clients", {}).items():
        for key, value in values.items():
          if isinstance(value, (int, float)):
            self.tb.add_scalar(f"client_{client}/{key}", value, record["round"])
      self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} the workdir of a run?")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def summary_table(final_eval: dict[str, Any], header: str) -> str:
  """A two-column markdown table of the final evaluation metrics."""
  lines = [header, "", "| metric | value |", "|---|---|"]
  for key, value in final_eval.items():
    if isinstance(value, (int, float)) and value is not None:
      lines.append(f"| {key} | {value:.4f} |")
  return "\n".join(lines)
