"""Results table from run directories: ``python -m fedjax_med.report DIR [DIR ...] [--metrics m1 m2 ...]``.

One markdown row per workdir: its final evaluation metrics (from ``results.json``), the rounds, the
training seconds summed over ``metrics.jsonl`` (compilation included, evaluation excluded) and the
strategy. With ``--over-seeds``, workdirs named ``<run>_s<seed>`` are grouped into one row per ``<run>``:
mean ± sample standard deviation (ddof=1) of each metric over the seeds, and the mean training time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from fedjax_med.logging_utils import read_metrics


def run_row(workdir: str, metric_names: list[str]) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: has the run in {workdir} finished?")
  with open(path) as f:
    results = json.load(f)
  seconds = sum(r.get("seconds", 0.0) for r in read_metrics(workdir))
  values = {m: results["eval"].get(m) for m in metric_names}
  return {"run": os.path.basename(os.path.normpath(workdir)), "rounds": results["rounds"], "train_s": seconds,
          "strategy": results["strategy"], **values}


def markdown(rows: list[dict], metric_names: list[str]) -> str:
  header = ["run", *metric_names, "rounds", "train time (s)", "strategy"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["run"], *[("n/a" if row[m] is None else f"{row[m]:.4f}") for m in metric_names], str(row["rounds"]),
             f"{row['train_s']:.0f}", row["strategy"]]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


SEED_SUFFIX = re.compile(r"^(?P<run>.+)_s(?P<seed>\d+)$")


def seed_groups(rows: list[dict]) -> dict[str, list[dict]]:
  """Rows grouped by run name without its ``_s<seed>`` suffix, in first-seen order."""
  groups: dict[str, list[dict]] = {}
  for row in rows:
    match = SEED_SUFFIX.match(row["run"])
    if match is None:
      raise ValueError(f"--over-seeds needs workdirs named <run>_s<seed>; got {row['run']!r}")
    groups.setdefault(match["run"], []).append(row)
  return groups


def _mean_std(values: list) -> str:
  if any(v is None for v in values):
    return "n/a"
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def markdown_over_seeds(rows: list[dict], metric_names: list[str]) -> str:
  header = ["run", *metric_names, "seeds", "rounds", "mean train time (s)", "strategy"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run, group in seed_groups(rows).items():
    seeds = ",".join(SEED_SUFFIX.match(r["run"])["seed"] for r in group)
    cells = [run, *[_mean_std([r[m] for r in group]) for m in metric_names], seeds,
             "/".join(sorted({str(r["rounds"]) for r in group})), f"{np.mean([r['train_s'] for r in group]):.0f}",
             "/".join(sorted({r["strategy"] for r in group}))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.report", description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--metrics", nargs="+", default=["accuracy"])
  parser.add_argument("--over-seeds", action="store_true", help="one row per <run>_s<seed> group: mean ± std")
  args = parser.parse_args(argv)
  try:
    rows = [run_row(w, args.metrics) for w in args.workdirs]
    table = markdown_over_seeds(rows, args.metrics) if args.over_seeds else markdown(rows, args.metrics)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
