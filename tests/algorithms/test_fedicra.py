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


def test_head_phase_trains_only_the_head_and_the_body_phase_the_rest():
  config = tiny_config()
  config.algorithm.ala_steps = 0
  config.client.local_steps = 2
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  local = spec.start(server, state, jax.random.PRNGKey(0))
  batch = exp.batch_fns["clients"](jax.tree.map(lambda x: x[0], exp.data["clients"].arrays),
                                   jnp.arange(2), jax.random.PRNGKey(1))
  step = jax.jit(spec.step)
  after_head, metrics = step(local, batch, jax.random.PRNGKey(2))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after_head["variables"]["params"],
                         local["variables"]["params"])
  assert changed["out"]["kernel"] and not changed["down0"]["Conv_0"]["kernel"]
  after_body, _ = step(after_head, batch, jax.random.PRNGKey(3))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after_body["variables"]["params"],
                         after_head["variables"]["params"])
  assert not changed["out"]["kernel"] and changed["down0"]["Conv_0"]["kernel"] and changed["pcs"]["fc_1"]["kernel"]
  assert np.isfinite(float(metrics["tree"])) and np.isfinite(float(metrics["crf"]))


@pytest.mark.parametrize("mode", ["fedicra", "fedbn", "local", "full"])
def test_modes_run_and_report_per_site(mode, tmp_path):
  config = tiny_config(mode)
  summary = train.run(config, str(tmp_path / mode))
  sites = [f"site{i}" for i in range(5)]
  assert sorted({k.split("/")[0] for k in summary["eval"] if "/" in k}) == sites
  per_site = [summary["eval"][f"{s}/dice3d"] for s in sites]
  np.testing.assert_allclose(summary["eval"]["dice3d"], np.nanmean(per_site))
  rows = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
  assert all(np.isfinite(r["train"]["loss"]) for r in rows)
  if mode == "local":  # nothing was aggregated: the global model is still the initial one
    server, _ = run_rounds(config, "sequential", 1)
    exp = experiment.build(config)
    for a, b in zip(jax.tree.leaves(server.params), jax.tree.leaves(exp.variables)):
      np.testing.assert_array_equal(a, b)
  if mode == "fedicra":
    from fedjax_med import plot

    assert plot.main([str(tmp_path / mode), "--site-overlays", "1", "--weak-labels", "1"]) == 0
    assert (tmp_path / mode / "site_predictions.png").stat().st_size > 5000
    assert (tmp_path / mode / "weak_labels.png").stat().st_size > 5000


def test_strategies_agree_the_site_stays_local_and_ala_weights_persist():
  config = tiny_config()
  results = {}
  for strategy in ("sequential", "vmap"):
    server, states = run_rounds(config, strategy, 2)
    results[strategy] = (server.params["params"], states["clients"]["ala"])
  # The spanning trees are a discontinuous function of the features: a last-bit difference between the lowerings
  # can swap a near-tied edge. Hence a looser tolerance than the other methods' strategy tests.
  for a, b in zip(jax.tree.leaves(results["vmap"]), jax.tree.leaves(results["sequential"])):
    np.testing.assert_allclose(a, b, rtol=5e-3, atol=1e-3)
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
