"""DP-FedAvg: clipping, fixed-denominator noisy mean, Poisson sampling, accounting, budget stop, protection scope."""

import dataclasses
import json
import logging

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import rdp

from fedjax_med import experiment, train
from fedjax_med.engine import privacy
from fedjax_med.engine.types import ClientResults
from tests.conftest import tiny_config

logging.getLogger("absl").setLevel(logging.ERROR)


def test_clip_updates_by_hand():
  deltas = {"a": jnp.array([[3.0, 0.0], [0.3, 0.0]]), "b": jnp.array([[4.0], [0.4]])}
  clipped, norms = privacy.clip_updates(deltas, 1.0)
  np.testing.assert_allclose(norms, [5.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(clipped["a"], [[0.6, 0.0], [0.3, 0.0]], rtol=1e-6)  # the small one is untouched
  np.testing.assert_allclose(clipped["b"], [[0.8], [0.4]], rtol=1e-6)


def _results(deltas, weights, ids):
  return {"clients": ClientResults({"delta": deltas}, jnp.asarray(weights), jnp.asarray(ids))}


def test_noiseless_mean_divides_the_clipped_sum_by_the_expected_count():
  dp = privacy.DPConfig(clip=1.0, noise_multiplier=0.0, num_clients=4, sampling="fixed", rate=0.5)
  deltas = {"w": jnp.array([[3.0, 4.0], [0.1, 0.2], [9.0, 9.0]])}
  mean, metrics = privacy.noisy_mean(_results(deltas, [1.0, 1.0, 0.0], [0, 1, 2]), jax.random.PRNGKey(0), dp)
  np.testing.assert_allclose(mean["w"], (np.array([0.6, 0.8]) + np.array([0.1, 0.2])) / 2.0, rtol=1e-6)
  assert float(metrics["dp_participants"]) == 2.0  # the zero-weight (non-finite) client is out
  assert float(metrics["dp_clipped_fraction"]) == 0.5


def test_noise_has_std_z_times_clip_over_expected_clients():
  dp = privacy.DPConfig(clip=2.0, noise_multiplier=1.5, num_clients=10, sampling="fixed", rate=1.0)
  deltas = {"w": jnp.zeros((10, 50_000))}
  mean, _ = privacy.noisy_mean(_results(deltas, np.ones(10), np.arange(10)), jax.random.PRNGKey(1), dp)
  assert float(jnp.std(mean["w"])) == pytest.approx(1.5 * 2.0 / 10, rel=0.02)
  assert abs(float(jnp.mean(mean["w"]))) < 0.01


def test_poisson_mask_rate_and_determinism():
  key = jax.random.PRNGKey(3)
  mask = privacy.poisson_mask(key, jnp.arange(20_000), 0.1)
  assert float(jnp.mean(mask)) == pytest.approx(0.1, abs=0.01)
  np.testing.assert_array_equal(mask[:100], privacy.poisson_mask(key, jnp.arange(100), 0.1))


def test_epsilon_matches_dp_accounting_and_calibration_hits_the_target():
  dp = privacy.DPConfig(clip=1.0, noise_multiplier=1.1, num_clients=100, sampling="poisson", rate=0.05)
  reference = rdp.RdpAccountant()
  reference.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1)), 50)
  assert privacy.epsilon(dp, 50, 1e-5) == pytest.approx(reference.get_epsilon(1e-5))
  assert privacy.epsilon(dp, 10, 1e-5) < privacy.epsilon(dp, 50, 1e-5)
  assert privacy.epsilon(dp, 50, 1e-5, "pld") < privacy.epsilon(dp, 50, 1e-5, "rdp")  # PLD is tighter
  z = privacy.calibrate_noise(4.0, 1e-5, 50, dp)
  assert privacy.epsilon(dataclasses.replace(dp, noise_multiplier=z), 50, 1e-5) == pytest.approx(4.0, abs=0.01)
  fixed = dataclasses.replace(dp, sampling="fixed", rate=0.5, num_clients=10)
  assert np.isfinite(privacy.epsilon(fixed, 5, 1e-5, "rdp", clients_per_round=5))
  with pytest.raises(ValueError, match="supports sampling='poisson' only"):
    privacy.epsilon(fixed, 5, 1e-5, "pld", clients_per_round=5)


def _dp_config(**privacy_keys):
  config = tiny_config()
  config.num_rounds = 4
  config.eval.every = 2
  config.checkpoint.every = 2
  config.privacy.enabled = True
  config.privacy.update(privacy_keys)
  return config


def test_noiseless_dp_with_everyone_equals_uniformly_weighted_fedavg():
  plain = tiny_config()
  plain.aggregation.weighting = "uniform"
  dp = _dp_config(clip=1e6, noise_multiplier=0.0, rate=1.0)
  states = []
  for config in (plain, dp):
    exp = experiment.build(config)
    server, clients = experiment.initial_state(exp)
    runner = train.execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sequential",
                                         unroll=True, weighting=config.aggregation.weighting)
    for r in range(2):
      server, clients, _ = runner(server, clients, exp.data, train.selection_for(exp, r))
    states.append(server.params)
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_poisson_rounds_compute_a_capacity_subset_and_give_the_all_clients_result():
  config = _dp_config(clip=0.5, noise_multiplier=0.5, rate=0.1)
  config.partition.method, config.partition.num_clients = "iid", 16
  config.data.synthetic.patients_per_site = 12
  exp = experiment.build(config)
  server, clients = experiment.initial_state(exp)
  runner = train.execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sequential", unroll=True,
                                       weighting=config.aggregation.weighting)
  (cohort, ids), = exp.cohorts.items()
  ids = np.asarray(ids)
  capacity = privacy.poisson_capacity(16, 0.1)
  assert capacity < 16
  for r in range(3):
    secret = privacy.fresh_key()
    narrowed = train.round_selection(exp, r, secret)[cohort]
    drawn = np.asarray(privacy.poisson_mask(privacy.sampling_key(jnp.asarray(secret)), jnp.asarray(ids), 0.1)) > 0
    assert len(narrowed) == capacity and set(np.flatnonzero(drawn)) <= set(narrowed.tolist())
    full_server, _, full_report = runner(server, clients, exp.data, {cohort: np.arange(16, dtype=np.int32)},
                                         secret_key=secret)
    server, clients, report = runner(server, clients, exp.data, {cohort: narrowed}, secret_key=secret)
    assert report.server_metrics["dp_participants"] == drawn.sum() == full_report.server_metrics["dp_participants"]
    for a, b in zip(jax.tree.leaves(full_server.params), jax.tree.leaves(server.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_run_logs_epsilon_and_stops_before_exceeding_the_target(tmp_path):
  config = _dp_config(noise_multiplier=1.0, rate=0.5, target_epsilon=0.0)
  dp = experiment.dp_config(config, config.partition.num_clients)
  eps = [privacy.epsilon(dp, r, 1e-5) for r in range(1, 5)]
  config.privacy.target_epsilon = (eps[2] + eps[3]) / 2  # allows 3 rounds, not 4
  summary = train.run(config, str(tmp_path / "dp"))
  assert summary["rounds"] == 3 and summary["privacy"]["stopped_by_budget"]
  assert summary["privacy"]["epsilon"] == pytest.approx(eps[2]) and eps[2] <= config.privacy.target_epsilon
  rows = [json.loads(line) for line in open(tmp_path / "dp" / "metrics.jsonl")]
  assert [r["privacy"]["epsilon"] for r in rows] == pytest.approx(eps[:3])
  assert "accuracy" in summary["eval"]
  assert train.Checkpointer(str(tmp_path / "dp" / "checkpoints")).latest_round() == 3


def test_calibrated_noise_and_refusal_of_unprotected_messages(tmp_path):
  config = _dp_config(noise_multiplier=-1.0, target_epsilon=5.0, rate=0.5)
  dp = experiment.dp_config(config, config.partition.num_clients)
  assert privacy.epsilon(dp, config.num_rounds, 1e-5) == pytest.approx(5.0, abs=0.02)
  with pytest.raises(ValueError, match="set config.privacy.target_epsilon"):
    experiment.dp_config(_dp_config(noise_multiplier=-1.0), 4)
  from tests.algorithms.test_fedirm import tiny_fedirm_config

  fedirm = tiny_fedirm_config()
  fedirm.privacy.enabled = True
  with pytest.raises(ValueError, match=r"also sends \['drm', 'drm_weight'\]"):
    train.run(fedirm, str(tmp_path / "fedirm"))
  fedirm.privacy.unprotected_messages = ("drm", "drm_weight")
  fedirm.overwrite = True
  assert "privacy" in train.run(fedirm, str(tmp_path / "fedirm"))


@pytest.mark.parametrize("arg", ["2", "inf"])
def test_the_dp_ham10000_config_calibrates_to_its_target(arg, tmp_path):
  from configs import fedavg_ham10000_dp
  from tests.helpers import short_run

  config = fedavg_ham10000_dp.get_config(arg)
  config.data.name, config.data.root = "synthetic", ""
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.partition.num_clients = 20
  config.model.kwargs.widths, config.model.kwargs.dense = (4,), 8
  if arg == "inf":
    config.aggregation.clients_per_round = 2
  summary = train.run(short_run(config, rounds=3), str(tmp_path / arg))
  rows = [json.loads(line) for line in open(tmp_path / arg / "metrics.jsonl")]
  if arg == "inf":
    assert "privacy" not in rows[-1]
  else:
    spent = rows[-1]["privacy"]["epsilon"]
    assert 1.0 < spent <= 2.0 and rows[-1]["privacy"]["noise_multiplier"] > 0  # calibrated for 3 rounds at q = 0.1
  assert np.isfinite(summary["eval"]["macro_auroc"])


def _published_and_recomputed_noise(workdir, round_num: int):
  """The attacker: from the files a run wrote (its config and checkpoints) only, the DP mean the server applied in
  ``round_num`` (server SGD at lr 1: the parameter change) and the noise recomputed from every key those files
  determine; returns (published mean, [candidate noise means])."""
  import ml_collections

  config = ml_collections.ConfigDict(json.load(open(workdir / train.FULL_CONFIG_FILE)))
  exp = experiment.build(config)
  template = experiment.state_tree(*experiment.initial_state(exp))
  checkpoints = train.Checkpointer(str(workdir / "checkpoints"), max_to_keep=config.checkpoint.keep)
  before = checkpoints.restore(round_num, template)[0]["server"]
  after = checkpoints.restore(round_num + 1, template)[0]["server"]
  checkpoints.close()
  published = jax.tree.map(jnp.subtract, after.params, before.params)
  nobody = {"clients": ClientResults({"delta": jax.tree.map(lambda x: jnp.zeros((1,) + x.shape), published)},
                                     jnp.zeros(1), jnp.zeros(1, jnp.int32))}
  keys = [privacy.reproducible_key(before.rng, round_num), privacy.reproducible_key(after.rng, round_num),
          privacy.reproducible_key(jax.random.PRNGKey(config.seed), round_num), jax.random.PRNGKey(config.seed)]
  return published, [privacy.noisy_mean(nobody, key, exp.dp)[0] for key in keys]


def _distance(a, b) -> float:
  return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))


@pytest.mark.parametrize("reproducible", [False, True], ids=["secure", "reproducible"])
def test_the_noise_cannot_be_recomputed_from_the_files_a_run_writes(reproducible, tmp_path, monkeypatch):
  issued = []
  real_fresh_key = privacy.fresh_key
  monkeypatch.setattr(privacy, "fresh_key", lambda: issued.append(real_fresh_key()) or issued[-1])
  clip = 0.05
  runs = []
  for name in ("a", "b"):  # the same config twice
    config = _dp_config(clip=clip, noise_multiplier=100.0, rate=1.0, reproducible_noise=reproducible)
    config.num_rounds, config.checkpoint.keep, config.checkpoint.every = 3, 5, 1
    train.run(config, str(tmp_path / name))
    runs.append(tmp_path / name)
  published, candidates = _published_and_recomputed_noise(runs[0], 1)
  # the clipped mean has norm <= clip; the noise mean ~ z clip sqrt(d) / N, thousands of times larger
  best = min(_distance(published, noise) for noise in candidates)
  other_run, _ = _published_and_recomputed_noise(runs[1], 1)
  results = json.load(open(runs[0] / train.RESULTS_FILE))
  if reproducible:  # the control: the attack works, and the results say so
    assert best <= clip * 1.001
    assert _distance(published, other_run) < 1e-5  # same seed, same noise
    assert "NOT private" in results["privacy"]["noise_source"]
    assert not issued
  else:
    assert best > 100 * clip  # no key on disk recomputes the noise
    assert _distance(published, other_run) > 100 * clip  # two runs of one config draw different noise
    assert results["privacy"]["noise_source"] == train.NOISE_SECURE
    assert len(issued) == 6  # one key per round, 3 rounds x 2 runs
    # no issued key is written anywhere in the workdirs, in any of the encodings a file might hold it
    patterns = [p for key in issued for p in (key.tobytes(), key.astype(">u4").tobytes(),
                                              str(int(key[0])).encode(), str(int(key[1])).encode())
                if len(p) >= 7]  # a short decimal could match a metric's digits by chance
    for path in (p for run in runs for p in run.rglob("*") if p.is_file()):
      content = path.read_bytes()
      assert not any(p in content for p in patterns), path
