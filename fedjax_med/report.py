"""Results table from run directories: ``python -m fedjax_med.report DIR [DIR ...] [--metrics m1 m2 ...]``.

One markdown row per workdir: its final evaluation metrics (from ``results.json``), the rounds, the training
seconds summed over ``metrics.jsonl`` (compilation included, evaluation excluded) and the strategy. With
``--round N`` the row holds the evaluation logged at round N instead (``metrics.jsonl``) and the training seconds
of rounds 1..N: runs of different lengths, or one run extended by resuming with a larger ``num_rounds``, compared
at equal budgets. With ``--over-seeds``, workdirs named ``<run>_s<seed>`` are grouped into one row per ``<run>``:
mean ± sample standard deviation (ddof=1) of each metric over the seeds, and the mean training time. With
``--paired-baseline RUN`` (and ``--over-seeds``) a second table gives, for every other run, the mean over the seeds
both ran of the per-seed difference ``run - RUN`` and its 95 % confidence interval (Student's t with n - 1 degrees
of freedom: paired seeds share their data draws, so the seed-to-seed spread cancels in the difference).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from fedjax_med.logging_utils import read_metrics


def run_row(workdir: str, metric_names: list[str], round_num: int | None = None) -> dict:
  """One run's metrics: the final evaluation, or with ``round_num`` the evaluation logged at that round."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: has the run in {workdir} finished?")
  with open(path) as f:
    results = json.load(f)
  logged = read_metrics(workdir)
  rounds, evaluation = results["rounds"], results["eval"]
  if round_num is not None:
    evaluated = {r["round"]: r["eval"] for r in logged if "eval" in r}
    if round_num not in evaluated:
      raise ValueError(f"{os.path.join(workdir, 'metrics.jsonl')} has no evaluation at round {round_num}; "
                       f"evaluated rounds: {sorted(evaluated)}")
    rounds, evaluation = round_num, evaluated[round_num]
    logged = [r for r in logged if r["round"] <= round_num]
  seconds = sum(r.get("seconds", 0.0) for r in logged)
  values = {m: evaluation.get(m) for m in metric_names}
  skipped = sum(1 for r in logged if r.get("excluded"))  # also for runs older than the results key
  return {"run": os.path.basename(os.path.normpath(workdir)), "rounds": rounds, "train_s": seconds,
          "strategy": results["strategy"], "skipped_rounds": skipped, **values}


def markdown(rows: list[dict], metric_names: list[str]) -> str:
  header = ["run", *metric_names, "rounds", "rounds with skipped clients", "train time (s)", "strategy"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["run"], *[("n/a" if row[m] is None else f"{row[m]:.4f}") for m in metric_names], str(row["rounds"]),
             str(row["skipped_rounds"]), f"{row['train_s']:.0f}", row["strategy"]]
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
  header = ["run", *metric_names, "seeds", "rounds", "rounds with skipped clients", "mean train time (s)",
            "strategy"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run, group in seed_groups(rows).items():
    seeds = ",".join(SEED_SUFFIX.match(r["run"])["seed"] for r in group)
    cells = [run, *[_mean_std([r[m] for r in group]) for m in metric_names], seeds,
             "/".join(sorted({str(r["rounds"]) for r in group})), str(sum(r["skipped_rounds"] for r in group)),
             f"{np.mean([r['train_s'] for r in group]):.0f}",
             "/".join(sorted({r["strategy"] for r in group}))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paired_difference(values: dict[str, float], baseline: dict[str, float], level: float = 0.95
                      ) -> tuple[float, float, float, int]:
  """(mean, CI low, CI high, pairs) of ``values[seed] - baseline[seed]`` over the seeds both have (Student's t);
  the interval is (nan, nan) with fewer than 2 pairs."""
  from scipy import stats

  seeds = sorted(set(values) & set(baseline))
  diffs = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
  if len(diffs) == 0:
    return float("nan"), float("nan"), float("nan"), 0
  mean = float(np.mean(diffs))
  if len(diffs) < 2:
    return mean, float("nan"), float("nan"), len(diffs)
  half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
  return mean, mean - half, mean + half, len(diffs)


def _difference_cell(mean: float, low: float, high: float, pairs: int) -> str:
  """'n/a' where a metric is missing from either side (e.g. global/dice3d of a FedAvg baseline), no interval
  from one pair."""
  if pairs == 0:
    return "n/a"
  if pairs == 1:
    return f"{mean:+.4f} (1 pair, no CI)"
  return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def markdown_paired(rows: list[dict], metric_names: list[str], baseline: str) -> str:
  groups = seed_groups(rows)
  if baseline not in groups:
    raise ValueError(f"--paired-baseline {baseline!r} is not among the runs {sorted(groups)}")
  by_seed = lambda group, m: {SEED_SUFFIX.match(r["run"])["seed"]: r[m] for r in group if r[m] is not None}
  header = ["run", *[f"{m} - {baseline} [95 % CI]" for m in metric_names], "paired seeds"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run, group in groups.items():
    if run == baseline:
      continue
    cells, most_pairs = [run], 0
    for m in metric_names:
      mean, low, high, pairs = paired_difference(by_seed(group, m), by_seed(groups[baseline], m))
      most_pairs = max(most_pairs, pairs)
      cells.append(_difference_cell(mean, low, high, pairs))
    cells.append(str(most_pairs))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.report", description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--metrics", nargs="+", default=["accuracy"])
  parser.add_argument("--over-seeds", action="store_true", help="one row per <run>_s<seed> group: mean ± std")
  parser.add_argument("--paired-baseline", default="",
                      help="with --over-seeds: the run whose seeds the others are paired with (difference, 95 %% CI)")
  parser.add_argument("--round", type=int, default=None,
                      help="the evaluation logged at this round (metrics.jsonl) instead of the final one")
  args = parser.parse_args(argv)
  try:
    if args.paired_baseline and not args.over_seeds:
      raise ValueError("--paired-baseline needs --over-seeds")
    rows = [run_row(w, args.metrics, args.round) for w in args.workdirs]
    table = markdown_over_seeds(rows, args.metrics) if args.over_seeds else markdown(rows, args.metrics)
    if args.paired_baseline:
      table += "\n\n" + markdown_paired(rows, args.metrics, args.paired_baseline)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
