"""``execution.strategy='auto'``: measure each lowering on this backend and keep the fastest.

The candidates run a shortened round (``calibration_steps`` local steps of the first
``calibration_clients`` clients of every cohort) on the real model and data;
compilation is excluded from the timing and reported beside it. Outputs are
discarded: the functions are pure, so calibration cannot change the run.
"""

from __future__ import annotations

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


def calibrate(make_runner: Callable[[str, Mapping[str, LocalPlan]], RoundRunner], server_state, client_states,
              data: Mapping[str, CohortData], plans: Mapping[str, LocalPlan], selection,
              candidates: Sequence[str], num_steps: int, repeats: int,
              num_clients: int) -> tuple[str, dict[str, dict[str, float]]]:
  """Returns (fastest strategy, {strategy: {"compile_s", "round_s"}}) measured here."""
  short_data, short_plans = shortened(data, plans, num_steps)
  selection = {k: np.asarray(v)[:num_clients] for k, v in selection.items()}
  timings = {}
  for strategy in candidates:
    runner = make_runner(strategy, short_plans)
    start = time.perf_counter()
    jax.block_until_ready(runner(server_state, client_states, short_data, selection)[0])
    first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(runner(server_state, client_states, short_data, selection)[0])
      samples.append(time.perf_counter() - start)
    best = min(samples)
    timings[strategy] = {"compile_s": max(first - best, 0.0), "round_s": best}
  return min(timings, key=lambda s: timings[s]["round_s"]), timings
