"""``execution.strategy='auto'``: measure each lowering on this backend and keep the fastest.

The candidates run a shortened round (``calibration_steps`` local steps of the first
``calibration_clients`` clients of every cohort) on the real model and data. Each
measurement is scaled to the full run: round time by the ratio of client-steps, and
compile time by the ratio of step copies in the compiled program (an unrolled scan
holds one copy per step, ``unrolled`` one per client-step, ``stepwise`` a single
step). The strategy with the smallest estimated ``compile + rounds x round`` wins, so
a few percent of per-step speed never buys minutes of compilation. Outputs are
discarded: the functions are pure, so calibration cannot change the run.

Candidates are measured in increasing order of the step copies their program holds
(``stepwise``, then ``sequential``, ``vmap``, then ``unrolled``), and once the calibration
has spent ``budget_s`` seconds the remaining ones are skipped: on XLA:CPU a DenseNet-121
candidate that holds several step copies compiles for minutes (FedIRM: ``stepwise`` 140 s,
``sequential`` 220 s), so measuring every candidate would delay the first round by ~10 min.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.engine.execution import CohortData, LocalPlan, RoundRunner


def shortened(data: Mapping[str, CohortData], plans: Mapping[str, LocalPlan], num_steps: int):
  """The same cohorts with at most ``num_steps`` local steps per client."""
  short_plans = {k: p._replace(num_steps=min(p.num_steps, num_steps), ragged=False) for k, p in plans.items()}
  short_data = {k: d._replace(steps=jnp.minimum(d.steps, short_plans[k].num_steps)) for k, d in data.items()}
  return short_data, short_plans


def step_copies(strategy: str, steps: int, clients: int, unroll: int | bool) -> int:
  """How many copies of the local step the strategy's largest compiled program holds."""
  if strategy == "stepwise":
    return 1
  per_client = steps if unroll is True else min(int(unroll), steps)
  return per_client * (clients if strategy == "unrolled" else 1)


def time_round(runner: RoundRunner, server_state, client_states, data, selection) -> float:
  start = time.perf_counter()
  jax.block_until_ready(runner(server_state, client_states, data, selection)[0])
  return time.perf_counter() - start


# On equal step copies a client-batched program (vmap, sharded) is larger to compile than one client's
COMPILE_RANK = {"stepwise": 0, "sequential": 1, "vmap": 2, "sharded": 2, "unrolled": 3}


def measurement_order(candidates: Sequence[str], plans: Mapping[str, LocalPlan], selection,
                      unroll: int | bool) -> list[str]:
  """The candidates by increasing step copies in their largest program, then by :data:`COMPILE_RANK`."""
  copies = lambda strategy: max(step_copies(strategy, plans[k].num_steps, len(selection[k]), unroll) for k in plans)
  return sorted(candidates, key=lambda strategy: (copies(strategy), COMPILE_RANK[strategy]))


def calibrate(make_runner: Callable[[str, Mapping[str, LocalPlan]], RoundRunner], server_state, client_states,
              data: Mapping[str, CohortData], plans: Mapping[str, LocalPlan], selection,
              candidates: Sequence[str], num_steps: int, repeats: int, num_clients: int, num_rounds: int,
              unroll: int | bool, budget_s: float = math.inf) -> tuple[str, dict[str, dict[str, float]]]:
  """Returns (strategy with the smallest estimated run time, per-strategy measurements and estimates).

  A candidate skipped because the calibration had already spent ``budget_s`` seconds appears in the
  measurements as ``{"skipped_after_s": seconds spent}``.
  """
  short_data, short_plans = shortened(data, plans, num_steps)
  short_selection = {k: np.asarray(v)[:num_clients] for k, v in selection.items()}
  full_client_steps = sum(len(selection[k]) * plans[k].num_steps for k in plans)
  short_client_steps = sum(len(short_selection[k]) * short_plans[k].num_steps for k in plans)
  timings, start = {}, time.perf_counter()
  for strategy in measurement_order(candidates, plans, selection, unroll):
    spent = time.perf_counter() - start
    if timings and spent > budget_s:
      timings[strategy] = {"skipped_after_s": spent}
      continue
    runner = make_runner(strategy, short_plans)
    first = time_round(runner, server_state, client_states, short_data, short_selection)
    best = min(time_round(runner, server_state, client_states, short_data, short_selection) for _ in range(repeats))
    compile_s = max(first - best, 0.0)
    copies = max(step_copies(strategy, plans[k].num_steps, len(selection[k]), unroll) /
                 step_copies(strategy, short_plans[k].num_steps, len(short_selection[k]), unroll) for k in plans)
    round_estimate = best * full_client_steps / short_client_steps
    timings[strategy] = {"compile_s": compile_s, "round_s": best, "round_estimate_s": round_estimate,
                         "run_estimate_s": compile_s * copies + num_rounds * round_estimate}
  measured = [s for s in timings if "run_estimate_s" in timings[s]]
  return min(measured, key=lambda s: timings[s]["run_estimate_s"]), timings
