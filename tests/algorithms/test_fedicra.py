"""FedICRA: site embedding stays local, ALA weights persist and move, phases train the right parts, modes run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import experiment, train
from fedjax_med.algorithms import fedicra
from tests.helpers import run_rounds, short_run


def tiny_config(mode: str = "fedicra"):
  from configs import fedicra_acdc

  config = fedicra_acdc.get_config(mode)
  config.data.name, config.data.root = "synthetic", ""
  config.data.synthetic = dict(num_sites=5, patients_per_site=5, slices_per_volume=2, image_size=16, num_classes=2,
                               channels=1, seed=0)
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.data.weak_forms = ("scribble", "noisy_scribble", "point", "box", "block")
  config.partition.clients = ()
  config.model.kwargs.widths = (4, 8)
  config.model.kwargs.dropout = (0.0, 0.1)
  if mode == "fedicra":
    config.model.kwargs.aux_width = 4
    config.model.kwargs.num_aux = 1
    config.algorithm.ala_steps, config.algorithm.head_steps, config.algorithm.body_steps = 1, 1, 1
    config.algorithm.ala_start_round = 1
    config.client.local_steps = 3
  else:
    config.client.local_steps = 2
  config.client.batch_size = 2
  config.eval.pad_multiple = 2
  config.task.crf_radius = 1  # 8 offsets instead of 120: the CRF's unrolled offsets dominate compile time
  if "crf_radius" in config.algorithm:
    config.algorithm.crf_radius = 1
  return short_run(config, rounds=2)


def test_site_contrast_by_hand():
  gate = jnp.array([[1.0, 0.0]])
  gates_all = jnp.array([[[1.0, 0.0], [0.0, 0.0], [1.0, 2.0]]])  # sites 0, 1, 2; own = 0
  onehot = jnp.array([1.0, 0.0, 0.0])
  # site 1: mean((1-0)^2, 0) = 0.5; site 2: mean(0, 4) = 2 -> -(0.5 + 2) / 2
  np.testing.assert_allclose(fedicra.site_contrast(gate, gates_all, onehot, True), -1.25)
  grad = jax.grad(lambda g: fedicra.site_contrast(g, gates_all, onehot, True))(gate)
  assert float(jnp.abs(grad).sum()) > 0
  no_grad = jax.grad(lambda g: fedicra.site_contrast(g, gates_all, onehot, False))(gate)
  assert float(jnp.abs(no_grad).sum()) == 0


def _one_client_step(config):
  """(local state after start, a batch, the jitted step taking its phase as a static argument)."""
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  local = spec.start(server, state, jax.random.PRNGKey(0))
  batch = exp.batch_fns["clients"](jax.tree.map(lambda x: x[0], exp.data["clients"].arrays),
                                   jnp.arange(2), jax.random.PRNGKey(1))
  return local, batch, jax.jit(spec.step, static_argnums=3)


def _changed(after, before):
  return jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after["variables"]["params"], before["variables"]["params"])


def test_head_phase_trains_only_the_head_and_the_body_phase_the_rest():
  config = tiny_config()
  config.algorithm.ala_steps, config.algorithm.joint = 0, False
  config.client.local_steps = 2
  local, batch, step = _one_client_step(config)
  after_head, metrics = step(local, batch, jax.random.PRNGKey(2), 1)
  changed = _changed(after_head, local)
  assert changed["out"]["kernel"] and not changed["down0"]["Conv_0"]["kernel"]
  after_body, _ = step(after_head, batch, jax.random.PRNGKey(3), 2)
  changed = _changed(after_body, after_head)
  assert not changed["out"]["kernel"] and changed["down0"]["Conv_0"]["kernel"] and changed["pcs"]["fc_1"]["kernel"]
  assert np.isfinite(float(metrics["tree"])) and np.isfinite(float(metrics["crf"]))


def test_joint_body_phase_trains_every_parameter_and_no_head_steps_needs_joint():
  config = tiny_config()
  config.algorithm.ala_steps, config.algorithm.head_steps, config.algorithm.body_steps = 0, 0, 2
  config.algorithm.joint = True
  config.client.local_steps = 2
  local, batch, step = _one_client_step(config)
  after, _ = step(local, batch, jax.random.PRNGKey(2), 2)
  changed = _changed(after, local)
  assert changed["out"]["kernel"] and changed["down0"]["Conv_0"]["kernel"] and changed["pcs"]["fc_1"]["kernel"]
  config.algorithm.joint = False
  with pytest.raises(ValueError, match="head_steps=0 with joint=False never trains the output layer"):
    experiment.build(config)


def test_ala_mixes_as_fedala_weight_one_takes_the_global_decoder_zero_keeps_the_local():
  config = tiny_config()
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  client = jax.tree.map(lambda x: x[2], states["clients"])
  local = jax.tree.map(lambda x: x + 1.0, client["local"])  # a decoder of the site's own, 1 away from the global
  client = {**client, "local": local, "trained": jnp.ones(()), "site": jnp.eye(5)[2]}
  out = lambda variables: np.asarray(variables["params"]["out"]["kernel"])
  global_out = out(server.params)
  ones = exp.algorithm.eval_variables(server, {**client, "ala": jax.tree.map(jnp.ones_like, local)})
  np.testing.assert_allclose(out(ones), global_out, atol=1e-6)  # W = 1 (FedALA's start): the global decoder
  zeros = exp.algorithm.eval_variables(server, {**client, "ala": jax.tree.map(jnp.zeros_like, local)})
  np.testing.assert_allclose(out(zeros), global_out + 1.0, atol=1e-6)  # W = 0: the site's own
  half = exp.algorithm.eval_variables(server, {**client, "ala": jax.tree.map(lambda w: jnp.full_like(w, 0.25), local)})
  np.testing.assert_allclose(out(half), global_out + 0.75, atol=1e-6)  # local + (global - local) * W
  global_site = exp.algorithm.eval_variants["global"](server, client)
  np.testing.assert_allclose(out(global_site), global_out)
  np.testing.assert_array_equal(global_site["site"]["onehot"], np.eye(5)[2])


def test_an_ala_step_moves_w_by_the_gradient_times_the_global_minus_local_gap():
  config = tiny_config()
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  client = jax.tree.map(lambda x: x[0], states["clients"])
  gap = jax.tree.map(lambda x: 0.05 * jnp.ones_like(x), client["local"])
  client = {**client, "local": jax.tree.map(jnp.subtract, client["local"], gap), "trained": jnp.ones(()),
            "ala": jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), client["local"])}
  server = server.replace(round=jnp.asarray(5, jnp.int32))
  local = spec.start(server, client, jax.random.PRNGKey(0))
  batch = exp.batch_fns["clients"](jax.tree.map(lambda x: x[0], exp.data["clients"].arrays),
                                   jnp.arange(2), jax.random.PRNGKey(1))
  new, _ = spec.step(local, batch, jax.random.PRNGKey(2), 0)
  # by hand: the pCE gradient at the mixed decoder (local + gap * 0.5), times the gap (global - local = +0.05)
  from fedjax_med.algorithms.fedavg import merge
  from fedjax_med.losses import weak

  def pce_of(adaptive):
    variables = {**merge(server.params, adaptive), "site": {"onehot": jax.nn.one_hot(0, 5)}}
    logits = exp.model.apply(variables, batch["images"], train=False)["logits"]
    return weak.partial_cross_entropy(logits, batch["scribbles"], exp.task.ignore_index)

  mixed = jax.tree.map(lambda own, g: own + g * 0.5, client["local"], gap)
  grads = jax.grad(pce_of)(mixed)
  for key in grads:
    np.testing.assert_allclose(new["ala"][key], np.clip(0.5 - grads[key] * 0.05, 0, 1), rtol=1e-5, atol=1e-7)
  assert any(float(jnp.abs(new["ala"][k] - 0.5).max()) > 0 for k in grads)


@pytest.mark.parametrize("mode", ["fedicra", "fedbn", "local", "full"])
def test_modes_run_and_report_per_site(mode, tmp_path, capsys):
  config = tiny_config(mode)
  summary = train.run(config, str(tmp_path / mode))
  sites = [f"site{i}" for i in range(5)]
  assert sorted({k.split("/")[0] for k in summary["eval"] if "/" in k} - {"global"}) == sites
  per_site = [summary["eval"][f"{s}/dice3d"] for s in sites]
  np.testing.assert_allclose(summary["eval"]["dice3d"], np.nanmean(per_site))
  rows = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
  assert all(np.isfinite(r["train"]["loss"]) for r in rows)
  if mode == "local":  # nothing was aggregated: the global model is still the initial one
    server, _ = run_rounds(config, "sequential", 1)
    exp = experiment.build(config)
    for a, b in zip(jax.tree.leaves(server.params), jax.tree.leaves(exp.variables)):
      np.testing.assert_array_equal(a, b)
  if mode == "fedicra":  # the global model with each site's embedding, beside the personalised one
    assert {f"global/{s}/dice3d" for s in sites} <= set(summary["eval"])
    np.testing.assert_allclose(summary["eval"]["global/dice3d"],
                               np.nanmean([summary["eval"][f"global/{s}/dice3d"] for s in sites]))
    from fedjax_med import plot

    assert plot.main([str(tmp_path / mode), "--site-overlays", "1", "--weak-labels", "1"]) == 0
    assert (tmp_path / mode / "site_predictions.png").stat().st_size > 5000
    assert (tmp_path / mode / "weak_labels.png").stat().st_size > 5000
    from fedjax_med import tree_target
    from tests.test_tree_target import rows_of

    capsys.readouterr()
    assert tree_target.main(["--workdir", str(tmp_path / mode), "--sigmas", "0.02"]) == 0
    rows = rows_of(capsys.readouterr().out)  # the site models, their image-tree target and the run's loss target
    assert list(rows) == ["model", "image tree, sigma=0.02", "the run's loss target"]
    assert all(len(v) == 2 and all(0.0 <= x <= 1.0 for x in v) for v in rows.values())


@pytest.mark.slow
def test_strategies_agree_the_site_stays_local_and_ala_weights_persist():
  config = tiny_config()
  results = {}
  for strategy in ("sequential", "vmap", "stepwise"):
    server, states = run_rounds(config, strategy, 2)
    results[strategy] = (server.params["params"], states["clients"]["ala"])
  # The spanning trees are a discontinuous function of the features: a last-bit difference between the lowerings
  # can swap a near-tied edge. Hence a looser tolerance than the other methods' strategy tests.
  for strategy in ("vmap", "stepwise"):
    for a, b in zip(jax.tree.leaves(results[strategy]), jax.tree.leaves(results["sequential"])):
      np.testing.assert_allclose(a, b, rtol=5e-3, atol=1e-3, err_msg=strategy)
  clients = states["clients"]
  np.testing.assert_array_equal(clients["site"], np.eye(5))  # each client learned its own site from its data
  np.testing.assert_array_equal(server.params["site"]["onehot"], np.zeros(5))  # never averaged into the server
  assert np.all(np.asarray(clients["trained"]) == 1)
  weights = np.concatenate([np.asarray(w).reshape(5, -1) for w in jax.tree.leaves(clients["ala"])], axis=1)
  assert weights.min() >= 0 and weights.max() <= 1 and weights.min() < 1  # ALA (from round 1) moved weights
  exp = experiment.build(config)
  one = jax.tree.map(lambda x: x[3], clients)
  personal = exp.algorithm.eval_variables(server, one)
  np.testing.assert_array_equal(personal["site"]["onehot"], np.eye(5)[3])
  np.testing.assert_array_equal(personal["params"]["down0"]["Conv_0"]["kernel"],
                                server.params["params"]["down0"]["Conv_0"]["kernel"])  # the body is global
  global_out = server.params["params"]["out"]["kernel"]
  assert np.any(np.asarray(personal["params"]["out"]["kernel"]) != np.asarray(global_out))  # the decoder is mixed


def test_tree_image_repeats_gray_as_the_official_code_which_divides_sigma_by_three():
  from fedjax_med.losses import tree_filter as tf

  channels = fedicra.Hyper(num_sites=2, ignore_index=2, image_mean=(0.5,), image_std=(0.25,)).tree_gray_channels
  rng = np.random.default_rng(0)
  gray = jnp.asarray(rng.uniform(size=(1, 5, 5, 1)), jnp.float32)
  assert fedicra.tree_image(gray, channels).shape == (1, 5, 5, 3)
  rgb = jnp.asarray(rng.uniform(size=(1, 5, 5, 3)), jnp.float32)
  assert fedicra.tree_image(rgb, channels) is rgb
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32), axis=-1)
  three = tf.tree_filter(probs, fedicra.tree_image(gray, channels), tf.spanning_trees(gray), 0.02)
  np.testing.assert_allclose(three, tf.tree_filter(probs, gray, tf.spanning_trees(gray), 0.02 / 3), rtol=1e-5)
  assert float(jnp.abs(three - tf.tree_filter(probs, gray, tf.spanning_trees(gray), 0.02)).max()) > 1e-3
  with pytest.raises(ValueError, match="tree_gray_channels"):
    fedicra.Hyper(num_sites=2, ignore_index=2, image_mean=(0.5,), image_std=(0.25,), tree_gray_channels=0)
