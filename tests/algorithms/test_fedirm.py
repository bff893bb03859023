"""FedIRM: relation aggregation, EMA teacher, uncertainty filter, cohorts, baselines and official switches."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_med import experiment, train
from fedjax_med.algorithms import common, fedirm
from fedjax_med.engine import execution
from fedjax_med.engine.types import ClientResults
from fedjax_med.models.cnn import SmallCNN
from tests.helpers import run_rounds, short_run


def tiny_fedirm_config(mode: str = "fedirm", **algorithm):
  from configs import fedirm as fedirm_config

  config = fedirm_config.get_config(mode)
  config.data.synthetic.update(patients_per_site=5, image_size=16, slices_per_volume=2)
  config.partition.num_clients = 4
  config.partition.labeled_clients = () if mode == "upper" else (0, 1)
  config.model.kwargs.widths = (4,)
  config.model.kwargs.dense = 8
  config.client.local_steps = 2
  config.client.batch_size = 4
  short_run(config)
  config.algorithm.warmup_rounds = 1
  config.algorithm.rampup_rounds = 2.0
  config.algorithm.update(algorithm)
  return config


def test_aggregate_drm_weights_rows_by_class_counts_and_keeps_unseen_rows():
  old = jnp.full((2, 2), 0.5)
  drms = jnp.array([[[0.8, 0.2], [0.5, 0.5]], [[0.6, 0.4], [0.5, 0.5]], [[0.0, 1.0], [0.0, 1.0]]])
  counts = jnp.array([[3.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
  weights = jnp.array([10.0, 4.0, 0.0])  # the third client was non-finite: left out
  new, any_row = fedirm.aggregate_drm(old, ClientResults({"drm": drms, "drm_weight": counts}, weights, jnp.arange(3)))
  np.testing.assert_allclose(new[0], [(3 * 0.8 + 0.6) / 4, (3 * 0.2 + 0.4) / 4], rtol=1e-6)
  np.testing.assert_allclose(new[1], [0.5, 0.5])  # class 1 seen by nobody: the old row stays
  assert bool(any_row)


def test_unlabeled_weights_by_mode():
  labeled = ClientResults({}, jnp.array([30.0, 10.0]), jnp.arange(2))
  unlabeled = ClientResults({}, jnp.array([20.0, 20.0, 40.0, 0.0]), jnp.arange(4))
  results = {"labeled": labeled, "unlabeled": unlabeled}
  np.testing.assert_allclose(fedirm.unlabeled_weights(results, jnp.array(0.5), "ramp"), [10, 10, 20, 0])
  balanced = fedirm.unlabeled_weights(results, jnp.array(0.5), "balanced")
  np.testing.assert_allclose(balanced, [5, 5, 10, 0])  # total 20 = 0.5 x the labeled 40, shares kept
  none_labeled = {"labeled": labeled._replace(weights=jnp.zeros(2)), "unlabeled": unlabeled}
  np.testing.assert_allclose(fedirm.unlabeled_weights(none_labeled, jnp.array(0.5), "balanced"), [10, 10, 20, 0])


def test_ema_update_and_decay_schedule_by_hand():
  teacher, student = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 0.0])}
  np.testing.assert_allclose(common.ema(teacher, student, 0.75)["w"], [1.5, 1.5])
  assert float(fedirm.ema_decay_at(jnp.array(0), 0.99)) == 0.0  # first step: the teacher copies the student
  assert float(fedirm.ema_decay_at(jnp.array(3), 0.99)) == pytest.approx(0.75)
  assert float(fedirm.ema_decay_at(jnp.array(1000), 0.99)) == pytest.approx(0.99)


def test_uncertainty_filter_removes_high_entropy_samples():
  hp = fedirm.Hyper(num_classes=4, entropy_threshold=0.5, entropy_relative=True, confidence=0.3)
  assert hp.entropy_limit == pytest.approx(0.5 * math.log(4))
  probs = jnp.array([[0.9, 0.05, 0.03, 0.02], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
  entropy = -jnp.sum(probs * jnp.log(probs), -1)  # 0.43, 1.28, 1.39 nats
  np.testing.assert_array_equal(fedirm.kept_samples(probs, entropy, hp), [1.0, 0.0, 0.0])
  official = fedirm.Hyper(num_classes=4, entropy_threshold=2.0, entropy_relative=False)
  np.testing.assert_array_equal(fedirm.kept_samples(probs, entropy, official), [1.0, 1.0, 0.0])  # 0.25 < 0.3
  assert official.entropy_limit > math.log(7)  # the official 2.0 nats cannot filter 5 or 7 classes
  assert fedirm.Hyper(num_classes=7).entropy_limit == official.entropy_limit  # the default is the official filter


def test_mc_dropout_entropy_runs_the_head_and_grows_with_dropout():
  model = SmallCNN(num_classes=3, widths=(4,), dense=16, dropout=0.5)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  features = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (6, 16))
  entropy = fedirm.mc_dropout_entropy(model, variables["params"], features, jax.random.PRNGKey(2), passes=50)
  logits = model.apply(variables, features, train=False, method="classify")
  deterministic = -jnp.sum(jax.nn.softmax(logits) * jax.nn.log_softmax(logits), -1)
  assert entropy.shape == (6,)
  assert np.all(np.asarray(entropy) <= math.log(3) + 1e-5)
  assert float(jnp.mean(entropy)) > float(jnp.mean(deterministic))  # averaging dropout draws flattens


def test_head_only_mc_pass_equals_a_whole_network_train_mode_pass():
  """The restructuring the throughput benchmark relies on: the official code runs the whole DenseNet per MC-dropout
  pass (train mode: batch-statistics BN, dropout only before the last Dense). With the same dropout key, the head on
  the features computed once gives the same logits as the whole pass, so the passes are the same in distribution."""
  from fedjax_med.models.densenet import DenseNet

  model = DenseNet(num_classes=3, growth_rate=4, block_config=(1, 1), num_init_features=8, stem="small", dropout=0.5)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 3))
  features = jax.jit(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"], method="backbone")[0])()
  whole_pass = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                               mutable=["batch_stats"]))
  head_pass = jax.jit(lambda key: fedirm._head(model, variables["params"], features, key))  # one compile each
  for seed in range(3):
    key = jax.random.PRNGKey(10 + seed)
    whole, _ = whole_pass(key)
    head = head_pass(key)
    np.testing.assert_allclose(head, whole["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("views", [2, 3])
def test_views_in_one_pass_equal_sequential_passes(views):
  """The labeled step's (and FixMatch's) augmented views run as one call on the concatenated images, batch norm
  per view (``bn_groups``): the logits, the gradient and the running statistics must equal ``views`` train-mode
  calls one after another (decay 0.7 so that the order of the running-statistics updates shows; no dropout, whose
  draws differ by design, next test)."""
  from fedjax_med.models.densenet import DenseNet

  model = DenseNet(num_classes=3, growth_rate=4, block_config=(1, 1), num_init_features=8, stem="small",
                   dropout=0.0, bn_momentum=0.7)
  params, state = common.split_state(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))
  state = jax.tree.map(lambda x: x + 0.3, state)  # running statistics away from their initial values
  images = jax.random.normal(jax.random.PRNGKey(1), (views, 5, 8, 8, 3)) * jnp.arange(1, views + 1)[:, None, None,
                                                                                                   None, None]
  keys = jax.random.split(jax.random.PRNGKey(2), views)

  def sequential(params):
    outs, new = [], state
    for view, key in zip(images, keys):
      out, new = common.apply_train(model, params, new, view, key)
      outs.append(out["logits"])
    return jnp.stack(outs), new

  def batched(params):
    outs, new = fedirm._forward_views(model, params, state, images, keys)
    return outs["logits"], new

  sequential, batched = jax.jit(sequential), jax.jit(batched)  # one compile each, not one per eager op
  loss = lambda fn: lambda p: jnp.sum(jnp.sin(fn(p)[0]))
  (want, want_state), (got, got_state) = sequential(params), batched(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(jnp.std(want[0] - want[1])) > 1e-3  # the views differ
  for g, w, s in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(w - s))) > 1e-3
  grads = [jax.tree.leaves(jax.grad(loss(fn))(params)) for fn in (batched, sequential)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_views_in_one_pass_draw_their_own_dropout_masks():
  """Two identical views through the one-pass forward: without dropout the same logits; with dropout 0.5 each row
  of each view has its own mask, so the views' logits differ, and they average (over rows) to what a pass with
  its own key gives (same distribution; different draws)."""
  from fedjax_med.models.densenet import DenseNet

  image = jax.random.normal(jax.random.PRNGKey(3), (1, 8, 8, 3))
  views = jnp.broadcast_to(image, (2, 256, 8, 8, 3))  # one image repeated: row-to-row spread = dropout alone
  keys = jax.random.split(jax.random.PRNGKey(4))
  logits = {}
  for rate in (0.0, 0.5):
    model = DenseNet(num_classes=3, growth_rate=4, block_config=(1,), num_init_features=8, stem="small",
                     dropout=rate)
    params, state = common.split_state(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))
    params = jax.tree.map(lambda p: p + 0.5, params)  # features and head weights away from zero
    outs, _ = fedirm._forward_views(model, params, state, views, keys)
    own, _ = common.apply_train(model, params, state, views[1], keys[1])
    logits[rate] = outs["logits"], own["logits"]
  np.testing.assert_allclose(logits[0.0][0][0], logits[0.0][0][1], rtol=1e-6)
  both, own = logits[0.5]
  assert float(jnp.mean(jnp.abs(both[0] - both[1]))) > 1e-2  # different masks row by row and view by view
  np.testing.assert_allclose(jnp.mean(both[1], 0), jnp.mean(own, 0), rtol=0.1)
  np.testing.assert_allclose(jnp.mean(both[1], 0), logits[0.0][1][0], rtol=0.1)  # inverted dropout: unbiased


def test_views_of_a_model_without_bn_groups_run_one_after_another():
  import flax.linen as nn

  from fedjax_med.models import layers

  class Tiny(nn.Module):  # batch statistics, but no ``bn_groups`` to keep the views' statistics apart
    @nn.compact
    def __call__(self, x, train):
      return {"logits": nn.Dense(2)(layers.BatchNorm(use_running_average=not train, momentum=0.8)(x))}

  model = Tiny()
  params, state = common.split_state(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), train=False))
  views = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 3))
  keys = jax.random.split(jax.random.PRNGKey(2))
  outs, new = fedirm._forward_views(model, params, state, views, keys)
  ref = state
  for view, key in zip(views, keys):
    out, ref = common.apply_train(model, params, ref, view, key)
  np.testing.assert_allclose(outs["logits"][1], out["logits"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_unknown_switch_names_the_key():
  with pytest.raises(ValueError, match=r"config.algorithm.teacher_sync='sometimes'.*allowed"):
    fedirm.Hyper(num_classes=3, teacher_sync="sometimes")


def _round_messages(config, rounds_before: int):
  """Every client's message in round ``rounds_before + 1`` (after that many rounds), from the per-client program
  the sequential strategy runs (compiled once per cohort); also (runner, client states, experiment) at that point."""
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sequential", unroll=1,
                                 weighting="num_examples")
  for r in range(rounds_before):
    server, states, _ = runner(server, states, exp.data, train.selection_for(exp, r))
  messages = {}
  for name in exp.cohorts:
    data = exp.data[name]
    for i in range(len(exp.cohorts[name])):
      _, message, _ = runner.client_program(name)(server, states[name], data, i)
      messages[int(data.client_ids[i])] = (name, message["delta"])
  return server, messages, (runner, states, exp)


def test_relation_matching_changes_only_the_unlabeled_clients():
  keep_all = dict(warmup_rounds=0, confidence=0.0)  # every sample enters the local DRM (2.0 nats > log 4)
  server_on, with_irm, _ = _round_messages(tiny_fedirm_config(**keep_all), rounds_before=1)
  server_off, without, _ = _round_messages(tiny_fedirm_config(relation_weight=0.0, **keep_all), rounds_before=1)
  assert float(server_on.extra["drm_ready"]) == 1.0  # round 1's labeled clients sent a DRM
  for a, b in zip(jax.tree.leaves(server_on.params), jax.tree.leaves(server_off.params)):
    np.testing.assert_array_equal(a, b)  # no target yet in round 1: both runs are identical so far
  changed = {}
  for client, (cohort, delta) in with_irm.items():
    other = jax.tree.leaves(without[client][1])
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(delta), other)]
    changed[cohort] = changed.get(cohort, []) + [max(diffs)]
  assert changed["labeled"] == [0.0, 0.0]
  assert all(d > 0 for d in changed["unlabeled"])


def test_warmup_trains_the_labeled_clients_alone():
  config = tiny_fedirm_config()
  exp = experiment.build(config)
  assert sorted(train.selection_for(exp, 0)) == ["labeled"]
  assert sorted(train.selection_for(exp, 1)) == ["labeled", "unlabeled"]
  assert sorted(train.selection_for(exp, None)) == ["labeled", "unlabeled"]
  lower = experiment.build(tiny_fedirm_config("lower"))
  assert sorted(train.selection_for(lower, 5)) == ["labeled"]


# fedirm, lower: the tests above
@pytest.mark.parametrize("mode", ["upper", "meanteacher", "zero_update", "fixmatch", "official"])
def test_every_mode_trains_two_rounds_to_finite_metrics(mode, tmp_path):
  summary = train.run(tiny_fedirm_config(mode), str(tmp_path / mode))
  assert np.isfinite(summary["eval"]["macro_auroc"]) or np.isnan(summary["eval"]["macro_auroc"])
  assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
  assert len(rows) == 2
  # Round 1 is the warm-up; round 2 shows which cohorts trained and with which unlabeled loss.
  cohorts = {c["cohort"] for c in rows[1]["clients"].values()}
  assert cohorts == ({"labeled"} if mode == "upper" else {"labeled", "unlabeled"})
  assert {c["cohort"] for c in rows[0]["clients"].values()} == {"labeled"}
  unlabeled = [c for c in rows[1]["clients"].values() if c["cohort"] == "unlabeled"]
  expected_metric = {"meanteacher": "consistency", "fixmatch": "fixmatch", "official": "relation"}.get(mode)
  if expected_metric:
    assert all(expected_metric in c for c in unlabeled)
  if mode == "meanteacher":
    assert not any("relation" in c for c in unlabeled)
  assert len(rows[1]["server"]["drm"]) == 4  # the server's relation matrix, C x C


@pytest.mark.slow
def test_strategies_agree_with_two_cohorts_and_warmup():
  results = {}
  for strategy in ("sequential", "stepwise", "vmap"):
    server, _ = run_rounds(tiny_fedirm_config(), strategy, 2)
    results[strategy] = (server.params, server.extra["drm"])
  for strategy, (params, drm) in results.items():
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results["sequential"][0])):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=strategy)
    np.testing.assert_allclose(drm, results["sequential"][1], rtol=1e-5, atol=1e-6)


def test_additive_aggregation_sums_the_cohort_means():
  hp = fedirm.Hyper(num_classes=2, unlabeled_aggregation="additive", warmup_rounds=0, rampup_rounds=2.0)
  model = SmallCNN(num_classes=2, widths=(2,), dense=4)
  algorithm = fedirm.fedirm(model, optax.sgd(0.1), optax.sgd(1.0), hp)
  variables = {"params": {"w": jnp.zeros(2)}, "batch_stats": {"m": jnp.zeros(1)}}
  state = algorithm.init(variables, jax.random.PRNGKey(0)).replace(round=jnp.array(1))
  ramp = float(fedirm.relation.sigmoid_rampup(1, 2.0))
  delta = lambda w, m: {"params": {"w": jnp.array(w)}, "batch_stats": {"m": jnp.array(m)}}
  stack = lambda *ds: jax.tree.map(lambda *x: jnp.stack(x), *ds)
  labeled = ClientResults({"delta": stack(delta([1.0, 0.0], [1.0]), delta([3.0, 0.0], [3.0])),
                           "drm": jnp.full((2, 2, 2), 0.5), "drm_weight": jnp.ones((2, 2))},
                          jnp.array([1.0, 1.0]), jnp.arange(2))
  unlabeled = ClientResults({"delta": stack(delta([0.0, 2.0], [5.0]), delta([0.0, 4.0], [7.0]))},
                            jnp.array([5.0, 5.0]), jnp.arange(2, 4))
  new, _ = algorithm.server_update(state, {"labeled": labeled, "unlabeled": unlabeled})
  np.testing.assert_allclose(new.params["params"]["w"], [2.0, ramp * 3.0], rtol=1e-6)  # mean L + ramp mean U
  np.testing.assert_allclose(new.params["batch_stats"]["m"], [(2.0 + ramp * 6.0) / (1 + ramp)], rtol=1e-6)


def test_a_round_keeps_the_state_types_so_round_two_does_not_compile_again():
  """The server's initial relation matrix was weakly typed: every run compiled its whole round twice."""
  exp = experiment.build(tiny_fedirm_config(warmup_rounds=0))
  server, clients = experiment.initial_state(exp)
  runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sequential", unroll=1,
                                 weighting="num_examples")
  after = runner(server, clients, exp.data, train.selection_for(exp, None))[:2]
  describe = lambda tree: [(x.dtype, x.shape, x.weak_type) for x in jax.tree.leaves(tree)]
  assert describe(after) == describe((server, clients))
  assert not any(weak for _, _, weak in describe((server, clients)))


def test_zero_update_is_refused_without_unlabeled_clients():
  with pytest.raises(ValueError, match=r"unlabeled_update='zero' needs the unlabeled clients"):
    fedirm.Hyper(num_classes=3, unlabeled_update="zero", unlabeled_loss="none")


def test_zero_update_dilutes_the_labeled_updates_exactly_as_fedirm():
  """The dilution control: in a round with both cohorts the unlabeled clients send zero deltas (parameters and
  batch statistics), the labeled clients send what they send under FedIRM, and the server's new model is the
  global one plus the sample-weighted mean over ALL clients in which the unlabeled deltas are 0."""
  config = tiny_fedirm_config("zero_update")  # warm-up: round 1 labeled only, round 2 both cohorts
  _, fedirm_messages, _ = _round_messages(tiny_fedirm_config("fedirm"), rounds_before=1)
  server, messages, (runner, states, exp) = _round_messages(config, rounds_before=1)
  counts = {int(c): float(n) for name in exp.cohorts
            for c, n in zip(exp.data[name].client_ids, exp.data[name].counts)}
  expected = jax.tree.map(jnp.zeros_like, server.params)
  for client, (cohort, delta) in messages.items():
    if cohort == "unlabeled":
      assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(delta))
    else:
      for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(fedirm_messages[client][1])):
        np.testing.assert_array_equal(a, b)  # the labeled update does not depend on the switch
      assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(delta)) > 0
    expected = jax.tree.map(lambda e, d, w=counts[client]: e + w * d, expected, delta)
  total = sum(counts.values())
  assert sorted(train.selection_for(exp, 1)) == ["labeled", "unlabeled"] and len(counts) == 4
  new, _, report = runner(server, states, exp.data, train.selection_for(exp, 1))
  assert set(report.metrics["unlabeled"]) == {"local_steps"}  # the engine's count alone: no loss was computed
  for got, old, mean in zip(jax.tree.leaves(new.params), jax.tree.leaves(server.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, old + mean / total, rtol=1e-5, atol=1e-7)  # server SGD with learning rate 1


def test_log_prior_is_the_smoothed_labeled_mass_and_zero_before_any_label():
  hp = fedirm.Hyper(num_classes=3, drm_prior="labels")
  np.testing.assert_array_equal(fedirm.log_prior({"prior_mass": jnp.zeros(3)}, hp), np.zeros(3))
  got = fedirm.log_prior({"prior_mass": jnp.array([5.0, 1.0, 0.0])}, hp)
  np.testing.assert_allclose(got, np.log([6 / 9, 2 / 9, 1 / 9]), rtol=1e-6)  # (m_c + 1) / (M + C)
  off = fedirm.Hyper(num_classes=3)
  np.testing.assert_array_equal(fedirm.log_prior({"prior_mass": jnp.array([5.0, 1.0, 0.0])}, off), np.zeros(3))
  logits = jnp.array([[2.0, 0.0, 0.0]])
  np.testing.assert_allclose(fedirm.prior_adjusted(logits, got), logits - np.log([6 / 9, 2 / 9, 1 / 9]), rtol=1e-6)


def test_prior_mass_counts_labels_or_sums_the_labeled_rows_predictions():
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0], [5.0, 0.0]])
  onehot = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # the last row is unlabeled
  labels = fedirm.prior_mass(logits, onehot, fedirm.Hyper(num_classes=2, drm_prior="labels"))
  np.testing.assert_allclose(labels, [1.0, 1.0])
  predictions = fedirm.prior_mass(logits, onehot, fedirm.Hyper(num_classes=2, drm_prior="predictions"))
  np.testing.assert_allclose(predictions, [0.5 + 0.75, 0.5 + 0.25], rtol=1e-6)


def test_prior_adjusted_drm_counts_the_labels_and_changes_only_later_targets():
  """Round 1 (warm-up): nothing counted yet, so the prior is flat and the DRM equals the plain one; the server
  then holds the labeled clients' label counts of the last round. Round 2: the DRM is built from adjusted logits
  and differs."""
  prior, after = "labels", {}
  for mode in ("none", prior):
    config = tiny_fedirm_config(drm_prior=mode)
    exp = experiment.build(config)
    server, states = experiment.initial_state(exp)
    runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sequential", unroll=1,
                                   weighting="num_examples")
    after[mode] = []
    for r in range(2):
      server, states, _ = runner(server, states, exp.data, train.selection_for(exp, r))
      after[mode].append(server.extra)
  np.testing.assert_array_equal(after[prior][0]["drm"], after["none"][0]["drm"])
  assert "prior_mass" not in after["none"][0]
  steps = config.client.local_steps * config.client.batch_size  # labeled rows each labeled client draws a round
  mass = [np.asarray(extra["prior_mass"]) for extra in after[prior]]
  assert mass[0].sum() == 2 * steps and mass[1].sum() == 2 * steps and mass[0].min() >= 0  # the last round's
  labels = np.concatenate([np.asarray(x) for x in exp.data["labeled"].arrays["labels"]])
  assert set(np.nonzero(mass[1])[0]) <= set(labels[labels >= 0].tolist())
  assert float(np.max(np.abs(np.asarray(after[prior][1]["drm"]) - np.asarray(after["none"][1]["drm"])))) > 1e-4
