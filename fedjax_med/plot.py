"""Learning curves of a run: ``python -m fedjax_med.plot WORKDIR [--out DIR]``.

Writes ``curves_train.png`` (mean and per-client training loss per round),
``curves_eval.png`` (every global evaluation metric over rounds) and, for runs that
log relation matrices (FedIRM), ``drm.png`` (the server's matrix beside one unlabeled
client's at a few rounds) into the workdir (or ``--out``).

``--overlays K`` (segmentation runs) adds ``overlays.png``: K held-out images with ground truth and prediction;
``--site-overlays K`` (per-site runs) ``site_predictions.png``: K test images of each site with its personalised
prediction; ``--weak-labels K`` ``weak_labels.png``: K training images of each site with the weak labels it has.
Representation runs (FCL) get ``partition_similarity.png``.

``python -m fedjax_med.plot --compare DIR [DIR ...] --metric macro_auroc --out FILE.png``
draws one evaluation metric of several runs on one figure; with `--sweep CONFIG_KEY` it draws each run's final
metric against that config value instead (e.g. Dice against labeled patients per client, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedjax_med import report  # noqa: E402
from fedjax_med.logging_utils import read_metrics  # noqa: E402


def plot_training(records: list[dict], path: str, key: str = "loss") -> str:
  """Per-client and mean training ``key`` against the round."""
  fig, ax = plt.subplots(figsize=(6, 4))
  clients = sorted({c for r in records for c in r.get("clients", {})}, key=int)
  for client in clients:
    points = [(r["round"], r["clients"][client][key]) for r in records
              if client in r.get("clients", {}) and r["clients"][client].get(key) is not None]
    if points:
      ax.plot(*zip(*points), lw=0.8, alpha=0.6, label=f"client {client}")
  mean = [(r["round"], r["train"][key]) for r in records if r.get("train", {}).get(key) is not None]
  if mean:
    ax.plot(*zip(*mean), color="black", lw=2, label="mean")
  ax.set_xlabel("round")
  ax.set_ylabel(f"training {key}")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_evaluation(records: list[dict], path: str) -> str | None:
  """Every scalar global evaluation metric against the round; None if the run has no evaluation."""
  evals = [(r["round"], r["eval"]) for r in records if r.get("eval")]
  if not evals:
    return None
  keys = sorted(k for k, v in evals[-1][1].items() if isinstance(v, (int, float)))
  fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), squeeze=False)
  for ax, key in zip(axes[0], keys):
    points = [(r, e[key]) for r, e in evals if e.get(key) is not None]
    if points:
      ax.plot(*zip(*points), marker="o")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("round")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def drm_rounds(records: list[dict], count: int = 3) -> list[int]:
  """Up to ``count`` evenly spaced rounds that have both the server's and an unlabeled client's DRM."""
  rounds = [r["round"] for r in records if "drm" in r.get("server", {})
            and any("local_drm" in c for c in r.get("clients", {}).values())]
  if len(rounds) <= count:
    return rounds
  return [rounds[round(i * (len(rounds) - 1) / (count - 1))] for i in range(count)]


def plot_drm(records: list[dict], path: str, class_names: list[str] | None = None) -> str | None:
  """Heatmaps: the server's DRM (target) and the first unlabeled client's local DRM at chosen rounds."""
  chosen = drm_rounds(records)
  if not chosen:
    return None
  by_round = {r["round"]: r for r in records}
  fig, axes = plt.subplots(2, len(chosen), figsize=(3.2 * len(chosen), 6.2), squeeze=False)
  for col, round_num in enumerate(chosen):
    record = by_round[round_num]
    client, values = next((c, v) for c, v in sorted(record["clients"].items(), key=lambda kv: int(kv[0]))
                          if "local_drm" in v)
    for row, (matrix, title) in enumerate(((record["server"]["drm"], f"server DRM, round {round_num}"),
                                           (values["local_drm"], f"client {client} DRM, round {round_num}"))):
      ax = axes[row][col]
      image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
      ax.set_title(title, fontsize=8)
      ticks = range(len(matrix))
      labels = class_names if class_names and len(class_names) == len(matrix) else list(ticks)
      ax.set_xticks(ticks, labels, fontsize=6, rotation=90)
      ax.set_yticks(ticks, labels, fontsize=6)
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _eval_points(workdir: str, metric: str) -> list[tuple[int, float]]:
  points = [(r["round"], r["eval"][metric]) for r in read_metrics(workdir)
            if r.get("eval", {}).get(metric) is not None]
  if not points:
    raise ValueError(f"{workdir}/metrics.jsonl has no evaluation metric {metric!r}")
  return points


def plot_partition_similarity(records: list[dict], path: str) -> str | None:
  """Heatmap of the last evaluation's ``partition_similarity`` (representation runs, e.g. FCL)."""
  last = next((r for r in reversed(records) if "partition_similarity" in r.get("eval", {})), None)
  if last is None:
    return None
  matrix = np.asarray(last["eval"]["partition_similarity"])
  fig, ax = plt.subplots(figsize=(3.6, 3.2))
  image = ax.imshow(matrix, cmap="magma")
  ax.set_title(f"cosine similarity by partition, round {last['round']}", fontsize=8)
  ticks = range(len(matrix))
  ax.set_xticks(ticks, [f"P{i + 1}" for i in ticks])
  ax.set_yticks(ticks, [f"P{i + 1}" for i in ticks])
  for (i, j), v in np.ndenumerate(matrix):
    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < matrix.mean() else "k")
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def class_names(workdir: str) -> list[str] | None:
  """The dataset's class names recorded in ``results.json`` (None before the run has finished)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("class_names") or None


def _save(fig, ax, path: str) -> str:
  """Legend, layout, write ``path`` at 120 dpi, close the figure."""
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_compare(workdirs: list[str], metric: str, path: str, over_seeds: bool = False) -> str:
  """One evaluation metric against the round for several runs (labels: the workdir names).

  With ``over_seeds``, workdirs named ``<run>_s<seed>`` become one line per run: the mean over seeds at the
  rounds every seed evaluated, with a ± 1 sample-std band.
  """
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  fig, ax = plt.subplots(figsize=(6, 4))
  if not over_seeds:
    for workdir, name in zip(workdirs, names):
      ax.plot(*zip(*_eval_points(workdir, metric)), marker="o", ms=3, label=name)
  else:
    groups = report.seed_groups([{"run": n, "workdir": w} for n, w in zip(names, workdirs)])
    for run, group in groups.items():
      curves = [dict(_eval_points(row["workdir"], metric)) for row in group]
      rounds = sorted(set.intersection(*(set(c) for c in curves)))
      values = np.array([[c[r] for r in rounds] for c in curves])
      mean = values.mean(0)
      line, = ax.plot(rounds, mean, marker="o", ms=3, label=f"{run} (n={len(group)})")
      if len(group) > 1:
        std = values.std(0, ddof=1)
        ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.15)
  ax.set_xlabel("round")
  ax.set_ylabel(metric)
  return _save(fig, ax, path)


def config_value(workdir: str, dotted_key: str):
  """A value of the run's recorded config (``config_full.json``), e.g. ``partition.groups_per_client``."""
  path = os.path.join(workdir, "config_full.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; is {workdir} a finished run?")
  with open(path) as f:
    value = json.load(f)
  for part in dotted_key.split("."):
    if not isinstance(value, dict) or part not in value:
      raise ValueError(f"{path} has no config key {dotted_key!r}")
    value = value[part]
  return value


def final_metric(workdir: str, metric: str) -> float:
  """``metric`` of the run's final evaluation (``results.json``)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; has {workdir} finished?")
  with open(path) as f:
    value = json.load(f)["eval"].get(metric)
  if value is None:
    raise ValueError(f"{path} has no final evaluation metric {metric!r}")
  return float(value)


def plot_sweep(workdirs: list[str], metric: str, x_key: str, path: str, token: str = r"_n\d+") -> str:
  """The final ``metric`` against a config value ``x_key`` (e.g. labeled patients per client), one line per method.

  Workdirs are named ``<method><token>_s<seed>`` (e.g. ``ft_fcl_n2_s0``): the method is the name without the seed
  suffix and without the ``token`` regex; x comes from each run's recorded config, not from its name. Points are
  the mean over seeds with ± 1 sample-std error bars.
  """
  table: dict[str, dict[float, list[float]]] = {}
  for workdir in workdirs:
    name = os.path.basename(os.path.normpath(workdir))
    match = report.SEED_SUFFIX.match(name)
    method = re.sub(token, "", match["run"] if match else name)
    x = float(config_value(workdir, x_key))
    table.setdefault(method, {}).setdefault(x, []).append(final_metric(workdir, metric))
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for method, points in table.items():
    xs = sorted(points)
    mean = [np.mean(points[x]) for x in xs]
    std = [np.std(points[x], ddof=1) if len(points[x]) > 1 else 0.0 for x in xs]
    seeds = sorted({len(points[x]) for x in xs})
    ax.errorbar(xs, mean, yerr=std, marker="o", ms=4, capsize=3, label=f"{method} (seeds {'/'.join(map(str, seeds))})")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted({x for p in table.values() for x in p}), [f"{x:g}" for x in sorted({x for p in table.values()
                                                                                             for x in p})])
  ax.set_xlabel(x_key)
  ax.set_ylabel(metric)
  return _save(fig, ax, path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.plot", description=__doc__.splitlines()[0])
  parser.add_argument("workdir", nargs="?")
  parser.add_argument("--out", default=None, help="output directory (default: the workdir); a file with --compare")
  parser.add_argument("--compare", nargs="+", default=None, help="workdirs whose --metric to draw on one figure")
  parser.add_argument("--metric", default="macro_auroc")
  parser.add_argument("--overlays", type=int, default=0,
                      help="segmentation runs: draw K held-out images with ground truth and prediction")
  parser.add_argument("--site-overlays", type=int, default=0,
                      help="per-site runs: K test images of each site with its personalised prediction")
  parser.add_argument("--saliency", type=int, default=0,
                      help="multi-task runs: K test images with the classifier's saliency and the predicted mask")
  parser.add_argument("--weak-labels", type=int, default=0,
                      help="weakly-supervised runs: K training images of each site with its weak labels")
  parser.add_argument("--over-seeds", action="store_true", help="with --compare: mean ± std over <run>_s<seed> dirs")
  parser.add_argument("--sweep", default=None, metavar="CONFIG_KEY",
                      help="with --compare: final --metric against this config value, one line per method "
                           "(workdirs <method>_n<N>_s<seed>; see --token)")
  parser.add_argument("--token", default=r"_n\d+", help="with --sweep: regex removed from names to get the method")
  args = parser.parse_args(argv)
  try:
    if args.compare and args.sweep:
      print(plot_sweep(args.compare, args.metric, args.sweep, args.out or f"sweep_{args.metric}.png", args.token))
      return 0
    if args.compare:
      print(plot_compare(args.compare, args.metric, args.out or f"compare_{args.metric}.png", args.over_seeds))
      return 0
    if not args.workdir:
      parser.error("give a WORKDIR or --compare DIR [DIR ...]")
    records = read_metrics(args.workdir)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not records:
    print(f"error: {args.workdir}/metrics.jsonl holds no rounds yet", file=sys.stderr)
    return 2
  out = args.out or args.workdir
  os.makedirs(out, exist_ok=True)
  if args.overlays or args.site_overlays or args.weak_labels or args.saliency:
    from fedjax_med import xla_flags

    xla_flags.apply_cpu_defaults()  # the kernels main.py trained with, set before overlays imports jax
    from fedjax_med import overlays  # builds the experiment: imports jax and the data pipeline

    try:
      if args.overlays:
        print(overlays.plot_overlays(args.workdir, os.path.join(out, "overlays.png"), args.overlays))
      if args.site_overlays:
        print(overlays.plot_site_predictions(args.workdir, os.path.join(out, "site_predictions.png"),
                                             args.site_overlays))
      if args.saliency:
        print(overlays.plot_saliency(args.workdir, os.path.join(out, "saliency.png"), args.saliency))
      if args.weak_labels:
        print(overlays.plot_weak_labels(overlays.run_config(args.workdir), os.path.join(out, "weak_labels.png"),
                                        args.weak_labels))
    except (FileNotFoundError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  written = [plot_training(records, os.path.join(out, "curves_train.png")),
             plot_evaluation(records, os.path.join(out, "curves_eval.png")),
             plot_drm(records, os.path.join(out, "drm.png"), class_names(args.workdir)),
             plot_partition_similarity(records, os.path.join(out, "partition_similarity.png"))]
  for path in filter(None, written):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
