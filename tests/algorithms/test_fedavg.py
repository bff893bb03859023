"""The FedAvg family: server optimizers, FedProx, FedBN / personal layers, cohorts with different updates, the
staged schedule (frozen variables, then a scaled learning rate)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import tasks
from fedjax_med.algorithms.fedavg import (
    Schedule,
    averaging_server_update,
    fedavg,
    frozen_mask,
    local_mask,
    supervised_cohort,
)
from fedjax_med.data.pipeline import cohort_data, image_batch_fn
from fedjax_med.engine import execution
from fedjax_med.engine.types import FederatedAlgorithm
from tests.helpers import TinyConvNet, toy_client


def _setup(algorithm_fn, counts=(5, 9, 7), cohorts=None, steps=3):
  model = TinyConvNet()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  task = tasks.classification(model)
  algorithm = algorithm_fn(task, variables)
  cohorts = cohorts or {name: list(range(len(counts))) for name in algorithm.cohorts}
  data, plans, states = {}, {}, {}
  for name, ids in cohorts.items():
    data[name], plans[name] = cohort_data([toy_client(i, counts[i]) for i in ids], ids, 4, steps, 0.0)
    per = [algorithm.cohorts[name].client_init(variables, None) for _ in ids]
    states[name] = jax.tree.map(lambda *x: jnp.stack(x), *per)
  batch_fn = image_batch_fn((0.5,), (0.25,), flips=False)
  server = algorithm.init(variables, jax.random.PRNGKey(1))
  return algorithm, data, plans, {n: batch_fn for n in cohorts}, server, states, variables


def _round(strategy, setup, rounds=1):
  algorithm, data, plans, batch_fns, server, states, _ = setup
  runner = execution.RoundRunner(algorithm, batch_fns, plans, strategy=strategy, unroll=True,
                                 weighting="num_examples")
  for _ in range(rounds):
    server, states, report = runner(server, states, data, {n: np.arange(len(data[n].counts)) for n in data})
  return server, states, report


def test_server_adam_applies_optax_adam_to_the_mean_pseudo_gradient():
  sgd_setup = _setup(lambda t, v: fedavg(t.loss_fn, optax.sgd(0.1), optax.sgd(1.0), v))
  adam_setup = _setup(lambda t, v: fedavg(t.loss_fn, optax.sgd(0.1), optax.adam(0.01, eps=1e-3), v))
  sgd_server, _, _ = _round("sequential", sgd_setup)
  adam_server, _, _ = _round("sequential", adam_setup)
  start = adam_setup[4].params["params"]
  mean_local = sgd_server.params["params"]  # with server SGD lr 1 the new model is the mean of the local models
  pseudo_grad = jax.tree.map(jnp.subtract, start, mean_local)
  tx = optax.adam(0.01, eps=1e-3)
  updates, _ = tx.update(pseudo_grad, tx.init(start), start)
  expected = optax.apply_updates(start, updates)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(adam_server.params["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fedprox_adds_mu_times_the_drift_to_each_local_gradient():
  """One client, local SGD, server SGD at lr 1 (the new global model is the local one). The first local step has
  no proximal pull (w1 = w0 - lr g(w0) for every mu); the second adds lr mu (w1 - w0) to the plain step, on the
  same batch: w2(mu) = w2(0) - lr mu (w1 - w0)."""
  lr, mu = 0.1, 3.0

  def local_model(prox_mu, steps):
    setup = _setup(lambda t, v: fedavg(t.loss_fn, optax.sgd(lr), optax.sgd(1.0), v, prox_mu=prox_mu), counts=(9,),
                   steps=steps)
    return setup[4].params["params"], _round("sequential", setup)[0].params["params"]

  w0, w1 = local_model(mu, 1)
  _, w2_plain = local_model(0.0, 2)
  _, w2_prox = local_model(mu, 2)
  expected = jax.tree.map(lambda plain, a, b: plain - lr * mu * (a - b), w2_plain, w1, w0)
  for got, want in zip(jax.tree.leaves(w2_prox), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, w2_prox, w2_plain))) > 1e-3  # the pull is not nothing


def test_fedbn_and_personal_layers_stay_local():
  setup = _setup(lambda t, v: fedavg(t.loss_fn, optax.sgd(0.5), optax.sgd(1.0), v, batch_stats="local",
                                     local_params="Dense_0"))
  server, states, _ = _round("sequential", setup, rounds=2)
  start = setup[4].params
  personal = states["clients"]["personal"]
  assert set(personal) == {"params/BatchNorm_0/scale", "params/BatchNorm_0/bias", "params/Dense_0/kernel",
                           "params/Dense_0/bias", "batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var"}
  np.testing.assert_array_equal(server.params["params"]["Dense_0"]["kernel"], start["params"]["Dense_0"]["kernel"])
  np.testing.assert_array_equal(server.params["batch_stats"]["BatchNorm_0"]["mean"],
                                start["batch_stats"]["BatchNorm_0"]["mean"])
  kernels = personal["params/Dense_0/kernel"]
  assert float(jnp.abs(kernels[0] - kernels[1]).max()) > 1e-4  # each client keeps its own head
  assert float(jnp.abs(server.params["params"]["Conv_0"]["kernel"] - start["params"]["Conv_0"]["kernel"]).max()) > 0
  algorithm = setup[0]
  merged = algorithm.eval_variables(server, jax.tree.map(lambda x: x[1], states["clients"]))
  np.testing.assert_array_equal(merged["params"]["Dense_0"]["kernel"], kernels[1])


def test_local_mask_rejects_unknown_policy():
  with pytest.raises(ValueError, match="unknown batch_stats policy 'mean'; allowed"):
    local_mask({"params": {}}, "", "mean")


def _two_cohorts(task, variables):
  """Cohort 'active' trains; cohort 'frozen' sends zero deltas (same message structure)."""
  mask = local_mask(variables, "", "average")
  active = supervised_cohort(task.loss_fn, optax.sgd(0.5), mask)
  frozen = supervised_cohort(task.loss_fn, optax.sgd(0.0), mask)
  base = fedavg(task.loss_fn, optax.sgd(0.5), optax.sgd(1.0), variables)
  return FederatedAlgorithm(base.init, {"active": active, "frozen": frozen}, averaging_server_update(optax.sgd(1.0)),
                            base.eval_variables)


@pytest.mark.slow
def test_cohorts_with_different_updates_in_one_round_agree_across_strategies():
  cohorts = {"active": [0, 2], "frozen": [1]}
  results = {s: _round(s, _setup(_two_cohorts, cohorts=cohorts))[0].params for s in execution.STRATEGIES}
  for s in ("vmap", "unrolled", "stepwise"):
    for a, b in zip(jax.tree.leaves(results["sequential"]), jax.tree.leaves(results[s])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # the frozen client (9 examples) dilutes the active clients' mean delta by its weight: (5 + 7) / 21
  setup = _setup(_two_cohorts, cohorts={"active": [0, 2]})
  active_only = _round("sequential", setup)[0].params["params"]
  start = setup[4].params["params"]
  expected = jax.tree.map(lambda s, a: s + (a - s) * 12 / 21, start, active_only)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(results["sequential"]["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _flat(tree):
  from flax import traverse_util

  return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


FROZEN = "Conv_0|BatchNorm_0"  # TinyConvNet's conv, norm weights and running statistics; Dense_0 trains


@pytest.mark.parametrize("strategy", ["sequential", "stepwise", "vmap"])
@pytest.mark.parametrize("client_tx", [optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.3, momentum=0.9)),
                                       optax.adamw(0.05, weight_decay=0.5)], ids=["sgd_l2", "adamw"])
def test_frozen_variables_do_not_move_while_frozen_not_even_by_weight_decay(strategy, client_tx):
  schedule = Schedule(frozen=FROZEN, frozen_rounds=2, after_unfreeze_lr_scale=0.5)
  setup = _setup(lambda t, v: fedavg(t.loss_fn, client_tx, optax.sgd(1.0), v, persist_optimizer=True,
                                     schedule=schedule))
  start = _flat(setup[4].params)
  server, states, _ = _round(strategy, setup, rounds=2)
  after_two = _flat(server.params)
  frozen = [k for k in start if "Conv_0" in k or "BatchNorm_0" in k]
  assert len(frozen) == 6  # conv kernel and bias, norm scale and bias, running mean and var
  for k in frozen:
    np.testing.assert_array_equal(after_two[k], start[k], err_msg=k)
  assert np.abs(after_two["params/Dense_0/kernel"] - start["params/Dense_0/kernel"]).max() > 1e-4
  assert int(server.round) == 2
  # round 3 (server.round = 2 = frozen_rounds): everything trains, from the persisted optimizer state
  spec = setup[0].cohorts["clients"]
  client = jax.tree.map(lambda x: x[0], states["clients"])
  local = spec.start(server, client, None)
  assert bool(local["unfrozen"])
  third, _, _ = _round(strategy, (setup[0], setup[1], setup[2], setup[3], server, states, setup[6]))
  moved = _flat(third.params)
  assert all(np.abs(moved[k] - after_two[k]).max() > 0 for k in frozen if k.startswith("params/"))


@pytest.mark.parametrize("tx", [optax.sgd, optax.adam])
def test_after_unfreezing_the_client_learning_rate_is_scaled(tx):
  schedule = Schedule(after_unfreeze_lr_scale=0.25)  # frozen_rounds = 0: scaled from round 0
  staged = _round("sequential", _setup(lambda t, v: fedavg(t.loss_fn, tx(0.04), optax.sgd(1.0), v,
                                                           schedule=schedule)))[0]
  plain = _round("sequential", _setup(lambda t, v: fedavg(t.loss_fn, tx(0.01), optax.sgd(1.0), v)))[0]
  for a, b in zip(jax.tree.leaves(staged.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_persistent_client_optimizer_state_carries_over_rounds():
  schedule = Schedule(frozen="Conv_0", frozen_rounds=1, after_unfreeze_lr_scale=0.5)
  setup = _setup(lambda t, v: fedavg(t.loss_fn, optax.adam(1e-2), optax.sgd(1.0), v, persist_optimizer=True,
                                     schedule=schedule))
  _, states, _ = _round("sequential", setup, rounds=2)
  counts = states["clients"]["opt_state"][0].count
  np.testing.assert_array_equal(counts, [6, 6, 6])  # 3 local steps x 2 rounds, never re-initialised
  mu = _flat(states["clients"]["opt_state"][0].mu)
  assert np.abs(mu["Conv_0/kernel"]).max() > 0  # the frozen conv's gradients reached Adam's moments


def test_schedule_errors_name_the_key():
  with pytest.raises(ValueError, match="frozen_rounds must be >= 0"):
    Schedule(frozen_rounds=-1)
  with pytest.raises(ValueError, match="after_unfreeze_lr_scale must be > 0"):
    Schedule(after_unfreeze_lr_scale=0.0)
  with pytest.raises(ValueError, match="is not a regex"):
    Schedule(frozen="down(")
  variables = TinyConvNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  with pytest.raises(ValueError, match="frozen='encoder' matches no variable; paths look like"):
    frozen_mask(variables, Schedule(frozen="encoder", frozen_rounds=1))
