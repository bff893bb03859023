"""Seconds per round of every execution strategy on one config, measured alternately in one run.

  python -m benchmarks.strategies --config configs/fedavg_drive.py --rounds 5 [--local-steps K] [--out FILE.json]

Builds the config's experiment (real model, data, clients), compiles each strategy once
(reported as first-round time), then times ``--rounds`` rounds per strategy, alternating
strategies round by round so that machine noise hits all of them alike; reports medians.
It then runs the ``auto`` calibration exactly as a training run would and says which
strategy it picks. ``--local-steps`` shortens the rounds (the strategies' ranking is per
step; vmap and unrolled compile times grow with clients x steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time

import jax

from fedjax_med import experiment
from fedjax_med.engine import auto, execution
from fedjax_med.train import scan_unroll, selection_for


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--local-steps", type=int, default=0)
  parser.add_argument("--strategies", nargs="+", default=list(execution.STRATEGIES))
  parser.add_argument("--out", default="")
  parser.add_argument("--no-auto", action="store_true", help="skip the auto calibration (it compiles every candidate)")
  args = parser.parse_args(argv)
  sys.path.insert(0, ".")
  config = load_config(args.config)
  if args.local_steps:
    config.client.local_steps = args.local_steps
  exp = experiment.build(config)
  server, clients = experiment.initial_state(exp)
  data, selection = exp.data_for_round(0), selection_for(exp, None)
  runners = {s: execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy=s, unroll=scan_unroll(config),
                                      weighting=config.aggregation.weighting) for s in args.strategies}
  first, samples = {}, {s: [] for s in args.strategies}
  for strategy, runner in runners.items():
    start = time.perf_counter()
    jax.block_until_ready(runner(server, clients, data, selection)[0])
    first[strategy] = time.perf_counter() - start
    print(f"{strategy}: first round (compile + run) {first[strategy]:.1f} s", flush=True)
  for _ in range(args.rounds):
    for strategy, runner in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(runner(server, clients, data, selection)[0])
      samples[strategy].append(time.perf_counter() - start)
  picked, calibration, calibration_s = None, {}, 0.0
  if not args.no_auto:
    make_runner = lambda strategy, plans: execution.RoundRunner(
        exp.algorithm, exp.batch_fns, plans, strategy=strategy, unroll=scan_unroll(config),
        weighting=config.aggregation.weighting)
    start = time.perf_counter()
    picked, calibration = auto.calibrate(make_runner, server, clients, data, exp.plans, selection,
                                         tuple(config.execution.candidates), config.execution.calibration_steps,
                                         config.execution.calibration_repeats, config.execution.calibration_clients,
                                         config.num_rounds, scan_unroll(config),
                                         config.execution.calibration_budget_s)
    calibration_s = time.perf_counter() - start
  steps = max(plan.num_steps for plan in exp.plans.values())
  result = {"config": args.config, "backend": jax.default_backend(), "devices": str(jax.devices()),
            "clients": sum(len(v) for v in exp.cohorts.values()), "local_steps": steps, "rounds": args.rounds,
            "first_round_s": first, "median_round_s": {s: statistics.median(v) for s, v in samples.items()},
            "auto_pick": picked, "auto_calibration": calibration, "auto_calibration_wall_s": calibration_s}
  best = min(result["median_round_s"].values())
  print(f"\n{args.config}: {result['clients']} clients x {steps} local steps, backend {result['backend']}, "
        f"medians of {args.rounds} alternating rounds\n")
  print("| strategy | s/round (median) | relative to fastest | first round incl. compile (s) |")
  print("|---|---|---|---|")
  for s in args.strategies:
    median = result["median_round_s"][s]
    print(f"| {s} | {median:.3f} | {median / best:.2f}x | {first[s]:.1f} |")
  if picked:
    print(f"\nauto picks: {picked} for {config.num_rounds} rounds (calibration took {calibration_s:.1f} s; "
          "estimated run time: " + ", ".join(f"{k} {v['run_estimate_s']:.0f} s" if "run_estimate_s" in v else
                                               f"{k} not measured (budget)" for k, v in calibration.items()) + ")")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
