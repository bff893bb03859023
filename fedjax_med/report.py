"""Results table from run directories: ``python -m fedjax_med.report DIR [DIR ...] [--metrics m1 m2 ...]``.

One markdown row per workdir: its final evaluation metrics (from ``results.json``), the rounds, the
training seconds summed over ``metrics.jsonl`` (compilation included, evaluation excluded) and the
strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.report", description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--metrics", nargs="+", default=["accuracy"])
  args = parser.parse_args(argv)
  try:
    rows = [run_row(w, args.metrics) for w in args.workdirs]
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(markdown(rows, args.metrics))
  return 0


if __name__ == "__main__":
  sys.exit(main())
