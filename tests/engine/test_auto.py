"""auto: measures every candidate on shortened rounds and scales the estimates to the full run."""

import numpy as np
import optax
import pytest

from fedjax_med import tasks
from fedjax_med.algorithms.fedavg import fedavg
from fedjax_med.data.pipeline import cohort_data, image_batch_fn
from fedjax_med.engine import auto, execution
from tests.helpers import TinyConvNet, toy_client


def test_step_copies():
  assert auto.step_copies("unrolled", 20, 4, True) == 80
  assert auto.step_copies("sequential", 20, 4, True) == 20
  assert auto.step_copies("vmap", 20, 4, 5) == 5
  assert auto.step_copies("stepwise", 20, 4, True) == 1


def test_candidates_are_measured_cheapest_program_first():
  plans = {"a": execution.LocalPlan(4, 2, 1, 8, False), "b": execution.LocalPlan(2, 2, 1, 8, False)}
  selection = {"a": np.arange(3), "b": np.arange(5)}
  order = auto.measurement_order(("vmap", "unrolled", "sequential", "stepwise"), plans, selection, True)
  assert order == ["stepwise", "sequential", "vmap", "unrolled"]  # 1, 4, 4 (one client's before a batch), 12 copies
  assert auto.measurement_order(("unrolled", "stepwise"), plans, selection, 1) == ["stepwise", "unrolled"]


def _calibrate(candidates, **kwargs):
  import jax
  import jax.numpy as jnp

  model = TinyConvNet()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  algorithm = fedavg(tasks.classification(model).loss_fn, optax.sgd(0.1), optax.sgd(1.0), variables)
  data, plan = cohort_data([toy_client(i, 6) for i in range(3)], [0, 1, 2], 2, 6, 0.0)
  states = jax.tree.map(lambda *x: jnp.stack(x), *[algorithm.cohorts["clients"].client_init(variables, None)] * 3)
  make = lambda strategy, plans: execution.RoundRunner(algorithm, {"clients": image_batch_fn((0.5,), (0.25,), False)},
                                                       plans, strategy=strategy, unroll=True, weighting="uniform")
  return auto.calibrate(make, algorithm.init(variables, jax.random.PRNGKey(1)), {"clients": states},
                        {"clients": data}, {"clients": plan}, {"clients": np.arange(3)}, candidates, num_steps=2,
                        repeats=1, num_clients=2, num_rounds=10, unroll=True, **kwargs)


def test_calibration_measures_each_candidate_and_picks_the_smallest_estimate():
  picked, timings = _calibrate(("sequential", "stepwise"))
  assert set(timings) == {"sequential", "stepwise"}
  assert picked == min(timings, key=lambda s: timings[s]["run_estimate_s"])
  for strategy, t in timings.items():
    assert t["round_estimate_s"] == pytest.approx(t["round_s"] * (3 * 6) / (2 * 2))  # client-steps ratio
    copies = 6 / 2 if strategy == "sequential" else 1
    assert t["run_estimate_s"] == pytest.approx(t["compile_s"] * copies + 10 * t["round_estimate_s"])


def test_calibration_past_its_budget_skips_the_remaining_candidates():
  picked, timings = _calibrate(("unrolled", "sequential", "stepwise"), budget_s=0.0)
  assert picked == "stepwise" and "run_estimate_s" in timings["stepwise"]  # the cheapest program, measured first
  for skipped in ("sequential", "unrolled"):
    assert set(timings[skipped]) == {"skipped_after_s"} and timings[skipped]["skipped_after_s"] > 0
