"""The engine: strategies agree, aggregation is the weighted mean, non-finite clients are left out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import tasks
from fedjax_med.algorithms.fedavg import fedavg
from fedjax_med.data.pipeline import cohort_data, image_batch_fn
from fedjax_med.engine import aggregation, execution
from tests.helpers import TinyConvNet, toy_client


def _setup(counts=(5, 9, 7), local_steps=3, local_epochs=0.0, server_tx=None):
  model = TinyConvNet()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  task = tasks.classification(model)
  algorithm = fedavg(task.loss_fn, optax.sgd(0.1), server_tx or optax.sgd(1.0), variables)
  data, plan = cohort_data([toy_client(i, c) for i, c in enumerate(counts)], list(range(len(counts))), 4,
                           local_steps, local_epochs)
  server = algorithm.init(variables, jax.random.PRNGKey(1))
  clients = jax.tree.map(lambda *x: jnp.stack(x), *[algorithm.cohorts["clients"].client_init(variables, None)
                                                     for _ in counts])
  batch_fn = image_batch_fn((0.5,), (0.25,), flips=True)
  return algorithm, {"clients": data}, {"clients": plan}, {"clients": batch_fn}, server, {"clients": clients}


def _run(strategy, rounds=2, selection=None, unroll=True, **kw):
  algorithm, data, plans, batch_fns, server, clients = _setup(**kw)
  runner = execution.RoundRunner(algorithm, batch_fns, plans, strategy=strategy, unroll=unroll,
                                 weighting="num_examples")
  for r in range(rounds):
    sel = {"clients": np.arange(3) if selection is None else selection[r]}
    server, clients, report = runner(server, clients, data, sel)
  return server, clients, report


@pytest.mark.parametrize("kw", [
    {},
    {"local_epochs": 1.0, "local_steps": 0},  # ragged: clients take 2, 3 and 2 steps
    {"selection": [np.array([0, 2]), np.array([1, 2])]},  # partial participation
], ids=["steps", "epochs", "partial"])
def test_every_strategy_gives_the_same_parameters_after_two_rounds(kw):
  results = {s: _run(s, **kw)[0].params for s in execution.STRATEGIES}
  for strategy in sorted(set(execution.STRATEGIES) - {"sequential"}):  # every other strategy against sequential
    for a, b in zip(jax.tree.leaves(results["sequential"]), jax.tree.leaves(results[strategy])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=strategy)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), results["sequential"],
                                       _setup()[4].params))
  assert max(float(m) for m in moved) > 1e-4  # training did something


@pytest.mark.parametrize("strategy", ["sequential", "vmap"])
def test_every_scan_unroll_gives_the_same_parameters(strategy):
  """The local-step scan fully unrolled (the CPU default), rolled (elsewhere, and the tests' run_rounds) or
  partly unrolled: the same numbers, here with ragged steps (2, 3 and 2), where masked steps are inside the scan."""
  results = {u: _run(strategy, unroll=u, local_epochs=1.0, local_steps=0)[0].params for u in (True, 1, 2)}
  for unroll in (1, 2):
    for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[unroll])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"unroll={unroll}")


def test_round_counter_and_ragged_steps():
  server, _, report = _run("sequential", rounds=1, local_epochs=1.0, local_steps=0)
  assert int(server.round) == 1
  np.testing.assert_array_equal(report.metrics["clients"]["local_steps"], [2, 3, 2])  # ceil(count / 4)


def test_fedavg_with_unit_server_lr_is_the_weighted_mean_of_local_models():
  algorithm, data, plans, batch_fns, server, clients = _setup()
  runner = execution.RoundRunner(algorithm, batch_fns, plans, strategy="sequential", unroll=True,
                                 weighting="num_examples")
  client_round = execution.make_client_round(algorithm.cohorts["clients"], batch_fns["clients"], plans["clients"],
                                             True)
  locals_ = []
  for i in range(3):
    one = jax.tree.map(lambda x, i=i: x[i], clients["clients"])
    arrays = jax.tree.map(lambda x, i=i: x[i], data["clients"].arrays)
    _, message, _ = client_round(server, one, arrays, data["clients"].counts[i], data["clients"].steps[i], i)
    locals_.append(jax.tree.map(jnp.add, server.params, message["delta"]))
  new_server, _, _ = runner(server, clients, data, {"clients": np.arange(3)})
  weights = np.array([5, 9, 7]) / 21
  expected = jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs)), *locals_)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new_server.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_weighted_mean_ignores_zero_weight_nan_clients():
  tree = {"w": jnp.array([[1.0, 2.0], [jnp.nan, jnp.inf], [3.0, 6.0]])}
  mean = aggregation.weighted_mean(tree, jnp.array([1.0, 0.0, 3.0]))
  np.testing.assert_allclose(mean["w"], [2.5, 5.0])
  np.testing.assert_array_equal(aggregation.is_finite(tree), [True, False, True])
  np.testing.assert_allclose(aggregation.weighted_mean(tree, jnp.zeros(3))["w"], [0.0, 0.0])


def test_is_finite_on_a_wide_mixed_tree_equals_a_leaf_by_leaf_check():
  # more leaves than one chunk of the check, float32 / float16 / int / bool leaves, one bad value in a late leaf
  rng = np.random.default_rng(0)
  tree = {f"f{i}": rng.normal(size=(4, i % 3 + 1, 2)).astype(np.float32) for i in range(150)}
  tree.update(h=rng.normal(size=(4, 5)).astype(np.float16), n=np.arange(8).reshape(4, 2), b=np.ones((4, 1), bool))
  tree["f131"][2, 0, 1] = np.inf
  tree["h"][3, 4] = np.nan
  expected = [all(np.isfinite(leaf[c]).all() for leaf in tree.values()) for c in range(4)]
  assert expected == [True, True, False, False]
  np.testing.assert_array_equal(aggregation.is_finite(jax.tree.map(jnp.asarray, tree)), expected)


def test_write_back_keeps_non_finite_and_non_selected_clients():
  old = {"a": jnp.zeros((5, 2)), "b": jnp.zeros((5,), jnp.int32)}
  new = {"a": jnp.ones((3, 2)) * jnp.array([1.0, 2.0, 3.0])[:, None], "b": jnp.array([7, 8, 9], jnp.int32)}
  out = execution._write_back(old, new, jnp.array([4, 0, 2]), jnp.array([True, False, True]), everyone=False)
  np.testing.assert_array_equal(out["a"][:, 0], [0.0, 0.0, 3.0, 0.0, 1.0])  # client 0 was not finite: kept
  np.testing.assert_array_equal(out["a"][:, 1], [0.0, 0.0, 3.0, 0.0, 1.0])
  np.testing.assert_array_equal(out["b"], [0, 0, 9, 0, 7])


def test_write_back_of_everyone_equals_the_general_path():
  old = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((3,), jnp.int32)}
  new = {"a": jnp.arange(6.0).reshape(3, 2) + 1, "b": jnp.array([7, 8, 9], jnp.int32)}
  sel, finite = jnp.arange(3), jnp.array([True, False, True])
  fast = execution._write_back(old, new, sel, finite, everyone=True)
  general = execution._write_back(old, new, sel, finite, everyone=False)
  for leaf_fast, leaf_general in zip(jax.tree.leaves(fast), jax.tree.leaves(general)):
    np.testing.assert_array_equal(leaf_fast, leaf_general)
  np.testing.assert_array_equal(fast["b"], [7, 0, 9])


def test_selects_everyone_only_for_all_clients_in_order():
  data = {name: execution.CohortData({}, jnp.ones(3, jnp.int32), jnp.arange(3), jnp.ones(3, jnp.int32))
          for name in ("a", "b", "c", "d")}
  selection = {"a": np.arange(3), "b": np.array([2, 1, 0]), "c": np.arange(2), "d": np.array([0, 1, 2])}
  assert execution.selects_everyone(selection, data) == ("a", "d")


def test_non_finite_client_is_left_out_and_reported():
  algorithm, data, plans, batch_fns, server, clients = _setup()
  arrays = dict(data["clients"].arrays)
  poisoned = data["clients"]._replace(arrays=arrays)
  base_fn = batch_fns["clients"]

  def poison_fn(arrays, idx, key):  # client 1 gets NaN images
    batch = base_fn(arrays, idx, key)
    return {**batch, "images": batch["images"] * arrays["scale"][0]}

  arrays["scale"] = jnp.array([[1.0] * 9, [jnp.nan] * 9, [1.0] * 9])
  runner = execution.RoundRunner(algorithm, {"clients": poison_fn}, plans, strategy="unrolled", unroll=True,
                                 weighting="num_examples")
  new_server, new_clients, report = runner(server, clients, {"clients": poisoned}, {"clients": np.arange(3)})
  np.testing.assert_array_equal(report.finite["clients"], [True, False, True])
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(new_server.params))
  # the aggregate equals a round where client 1 does not take part
  reference, _, _ = execution.RoundRunner(algorithm, {"clients": poison_fn}, plans, strategy="unrolled",
                                          unroll=True, weighting="num_examples")(
      server, clients, {"clients": poisoned}, {"clients": np.array([0, 2])})
  for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(new_server.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_unknown_strategy_is_rejected_with_the_allowed_ones():
  algorithm, data, plans, batch_fns, *_ = _setup()
  with pytest.raises(ValueError, match="allowed: \\('vmap', 'unrolled', 'sequential', 'stepwise', 'sharded'\\)"):
    execution.RoundRunner(algorithm, batch_fns, plans, strategy="pmap", unroll=True, weighting="uniform")


def test_stack_clients_equals_jnp_stack_for_every_dtype():
  trees = [{"f": jnp.full((2, 3), float(i)), "i": jnp.array(i, jnp.int32), "b": jnp.array(i % 2 == 0),
            "h": jnp.full((2,), i, jnp.bfloat16), "k": jax.random.key(i)} for i in range(3)]
  got, want = execution.stack_clients(trees), execution._stack(trees)
  for name in ("f", "i", "b", "h"):
    assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
    np.testing.assert_array_equal(got[name], want[name])
  np.testing.assert_array_equal(jax.random.key_data(got["k"]), jax.random.key_data(want["k"]))


def test_stepwise_runners_of_one_cohort_share_one_compiled_step_whatever_their_number_of_steps():
  """auto's shortened calibration round and the run's rounds compile the local step once."""
  algorithm, data, plans, batch_fns, server, clients = _setup(local_steps=3)
  short_data, short_plans = {"clients": data["clients"]._replace(steps=jnp.minimum(data["clients"].steps, 1))}, {
      "clients": plans["clients"]._replace(num_steps=1)}
  runners = [execution.RoundRunner(algorithm, batch_fns, p, strategy="stepwise", unroll=True,
                                   weighting="num_examples") for p in (short_plans, plans)]
  programs = runners[0]._pieces["clients"].step.programs
  assert programs and all(runners[1]._pieces["clients"].step.programs[phase] is program
                          for phase, program in programs.items())
  for runner, d in zip(runners, (short_data, data)):
    runner(server, clients, d, {"clients": np.arange(3)})
  assert all(program._cache_size() == 1 for program in programs.values())


def _phased_algorithm(phases, traced):
  """A toy cohort whose phases differ: phase 0 adds 1, phase 1 doubles, phase 2 subtracts 3 (order matters)."""
  from fedjax_med.engine.types import CohortSpec, FederatedAlgorithm, ServerState

  def step(local, batch, rng, phase):
    del batch, rng
    traced.add(phase)
    x = local["x"]
    x = x + 1.0 if phase == 0 else (x * 2.0 if phase == 1 else x - 3.0)
    return {"x": x}, {"phase": jnp.asarray(float(phase))}

  spec = CohortSpec(lambda v, r: {}, lambda s, c, r: {"x": s.params["x"]}, step,
                    lambda s, c, local: (c, {"delta": {"x": local["x"] - s.params["x"]}}, {}), phases=phases)

  def server_update(state, results):
    result = results["clients"]
    return state.replace(params=jax.tree.map(jnp.add, state.params, aggregation.weighted_mean(
        result.messages["delta"], result.weights))), {}

  init = lambda v, r: ServerState(v, (), jnp.zeros((), jnp.int32), r, {})
  return FederatedAlgorithm(init, {"clients": spec}, server_update, lambda s, c: s.params)


@pytest.mark.parametrize("strategy", execution.STRATEGIES)
def test_a_cohort_with_phases_runs_each_phase_in_order_and_only_its_own_step(strategy):
  traced = set()
  algorithm = _phased_algorithm((2, 0, 3, 1), traced)  # the empty phase 1 never runs
  data, plan = cohort_data([toy_client(i, 6) for i in range(2)], [0, 1], 2, 6, 0.0)
  batch_fns = {"clients": image_batch_fn((0.5,), (0.25,), flips=False)}
  runner = execution.RoundRunner(algorithm, batch_fns, {"clients": plan}, strategy=strategy, unroll=True,
                                 weighting="uniform")
  server = algorithm.init({"x": jnp.zeros(())}, jax.random.PRNGKey(0))
  server, _, report = runner(server, {"clients": {}}, {"clients": data}, {"clients": np.arange(2)})
  # 0 +1 +1 = 2; -3 -3 -3 = -7; phase 3 (-3 too: any phase > 1 subtracts) = -10
  np.testing.assert_allclose(server.params["x"], -10.0)
  np.testing.assert_allclose(report.metrics["clients"]["phase"], [(0 + 0 + 2 + 2 + 2 + 3) / 6] * 2)
  assert traced == {0, 2, 3}


def test_phases_that_do_not_add_up_to_the_local_steps_are_refused():
  algorithm = _phased_algorithm((2, 3), set())
  data, plan = cohort_data([toy_client(0, 6)], [0], 2, 4, 0.0)
  with pytest.raises(ValueError, match=r"phases \(2, 3\) add up to 5 local steps, the local plan has 4"):
    execution.RoundRunner(algorithm, {"clients": image_batch_fn((0.5,), (0.25,), flips=False)}, {"clients": plan},
                          strategy="sequential", unroll=True, weighting="uniform")
