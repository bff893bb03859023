"""Learning curves of a run: ``python -m fedjax_med.plot WORKDIR [--out DIR]``.

Writes ``curves_train.png`` (mean and per-client training loss per round) and
``curves_eval.png`` (every global evaluation metric over rounds) into the workdir
(or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.plot", description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", default=None, help="output directory (default: the workdir)")
  args = parser.parse_args(argv)
  try:
    records = read_metrics(args.workdir)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not records:
    print(f"error: {args.workdir}/metrics.jsonl holds no rounds yet", file=sys.stderr)
    return 2
  out = args.out or args.workdir
  os.makedirs(out, exist_ok=True)
  written = [plot_training(records, os.path.join(out, "curves_train.png")),
             plot_evaluation(records, os.path.join(out, "curves_eval.png"))]
  for path in filter(None, written):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
