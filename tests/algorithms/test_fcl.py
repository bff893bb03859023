"""FCL: memory bank, feature exchange (own features excluded, stale slots kept), modes, strategies, transfer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import experiment, models, train
from fedjax_med.algorithms import fcl
from fedjax_med.engine.types import ClientResults
from tests.helpers import run_rounds, short_run


def tiny_fcl_config(mode: str = "fcl"):
  from configs import fcl_acdc

  config = fcl_acdc.get_config(mode)
  config.data.name = "synthetic"  # its patients are 4-slice volumes
  config.data.synthetic = dict(num_sites=2, patients_per_site=10, slices_per_volume=4, image_size=16,
                               num_classes=2, channels=1, seed=0)
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.partition.num_clients = 3
  config.model.kwargs.widths = (4, 8)
  config.model.kwargs.projection_dim = 8
  config.algorithm.bank_size = 8
  config.algorithm.exchange_size = 4
  config.client.batch_size = 2
  config.client.local_steps = 2
  return short_run(config)


def test_bank_is_a_fifo_and_most_recent_is_oldest_first():
  bank = fcl.empty_bank(4, 2)
  for i in range(3):  # writes of 2 rows: rows 0-1, 2-3, then 0-1 again
    bank = fcl.enqueue(bank, jnp.array([[i + 1.0, 0.0], [0.0, i + 1.0]]), jnp.array([i, i]))
  np.testing.assert_array_equal(bank["partition"], [2, 2, 1, 1])
  np.testing.assert_allclose(bank["features"][0], [1.0, 0.0])  # L2-normalised
  assert int(bank["ptr"]) == 2
  recent = fcl.most_recent(bank, 3)
  np.testing.assert_array_equal(recent["partition"], [1, 2, 2])


def test_update_pool_replaces_sent_slots_and_keeps_a_left_out_clients_slot():
  pool = {"features": jnp.zeros((3, 2, 1)), "partition": jnp.zeros((3, 2), jnp.int32), "valid": jnp.zeros((3, 2)),
          "tag": jnp.zeros((3, 2), jnp.uint32)}
  sent = {"features": jnp.ones((2, 2, 1)), "partition": jnp.full((2, 2), 3, jnp.int32), "valid": jnp.ones((2, 2)),
          "tag": jnp.array([[5, 5], [6, 6]], jnp.uint32)}
  new = fcl.update_pool(pool, ClientResults({"features": sent}, jnp.array([1.0, 0.0]), jnp.array([2, 0])))
  np.testing.assert_array_equal(new["valid"], [[0, 0], [0, 0], [1, 1]])  # client 0 was non-finite: old slot
  np.testing.assert_array_equal(new["tag"][2], [5, 5])


def test_a_client_never_contrasts_against_its_own_sent_features():
  exp = experiment.build(tiny_fcl_config())
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  tags = states["clients"]["tag"]
  assert len({tuple(np.asarray(t)) for t in tags}) == 3
  pool = {"features": jnp.ones((3, 4, 8)), "partition": jnp.zeros((3, 4), jnp.int32), "valid": jnp.ones((3, 4)),
          "tag": tags}
  server = server.replace(extra=pool)
  mine = jax.tree.map(lambda x: x[1], states["clients"])
  local = spec.start(server, mine, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(local["remote"]["valid"].reshape(3, 4), [[1] * 4, [0] * 4, [1] * 4])


@pytest.mark.parametrize("mode", ["fcl", "local", "simclr"])
def test_modes_train_two_rounds_and_exchange_only_features(mode, tmp_path):
  summary = train.run(tiny_fcl_config(mode), str(tmp_path / mode))
  assert 0.0 <= summary["eval"]["partition_top1"] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
  assert all(np.isfinite(r["train"]["loss"]) for r in rows)
  if mode == "fcl":
    assert rows[0]["train"]["remote_keys"] == 0  # nothing exchanged before the first round ends
    assert rows[1]["train"]["remote_keys"] == 2 * 4  # the two other clients' 4 features each
    assert rows[1]["server"]["pool_features"] == 3 * 4
  elif mode == "local":
    assert rows[1]["train"]["remote_keys"] == 0 and "pool_features" not in rows[1]["server"]


def test_the_wire_carries_the_delta_and_features_only():
  exp = experiment.build(tiny_fcl_config())
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  local = spec.start(server, state, jax.random.PRNGKey(0))
  _, message, _ = spec.finish(server, state, local)
  assert sorted(message) == ["delta", "features"]
  assert sorted(message["features"]) == ["features", "partition", "tag", "valid"]
  assert message["features"]["features"].shape == (4, 8)  # exchange_size x projection_dim, no image


@pytest.mark.slow
def test_strategies_agree_with_banks_and_exchange():
  results = {}
  for strategy in ("sequential", "stepwise", "vmap"):
    server, _ = run_rounds(tiny_fcl_config(), strategy, 2)
    results[strategy] = (server.params, server.extra["features"])
  for strategy, (params, pool) in results.items():
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results["sequential"][0])):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=strategy)
    np.testing.assert_allclose(pool, results["sequential"][1], rtol=1e-4, atol=1e-5, err_msg=strategy)


def test_finetuning_starts_from_the_pretrained_encoder_with_a_fresh_decoder(tmp_path):
  train.run(tiny_fcl_config(), str(tmp_path / "pre"))
  from configs import fcl_finetune_acdc

  config = fcl_finetune_acdc.get_config("2")
  config.data = tiny_fcl_config().data
  config.data.batch_mode, config.data.views, config.data.flips = "images", (), True
  config.model.kwargs.widths = (4, 8)
  config.partition.num_clients = 3
  config.model.init_encoder = str(tmp_path / "pre")
  exp = experiment.build(config)
  with open(tmp_path / "pre" / "global_variables.msgpack", "rb") as f:
    import flax.serialization
    pre = flax.serialization.msgpack_restore(f.read())
  np.testing.assert_array_equal(exp.variables["params"]["down0"]["Conv_0"]["kernel"],
                                pre["params"]["down0"]["Conv_0"]["kernel"])
  np.testing.assert_array_equal(exp.variables["batch_stats"]["bottleneck"]["BatchNorm_0"]["mean"],
                                pre["batch_stats"]["bottleneck"]["BatchNorm_0"]["mean"])
  fresh = models.init_variables(exp.model, jax.random.split(jax.random.PRNGKey(config.seed))[0], (16, 16, 1))
  np.testing.assert_array_equal(exp.variables["params"]["out"]["kernel"], fresh["params"]["out"]["kernel"])
  assert all(len(c.arrays["group"]) and len(set(c.arrays["group"])) == 2 for c in exp.client_datasets)
  short_run(config, rounds=1)
  summary = train.run(config, str(tmp_path / "ft"))
  assert 0.0 <= summary["eval"]["dice3d"] <= 1.0 and "dice3d_class1" in summary["eval"]
  from fedjax_med import overlays

  assert os.path.getsize(overlays.plot_overlays(str(tmp_path / "ft"), str(tmp_path / "ov.png"), 2)) > 0
  with pytest.raises(ValueError, match="needs a segmentation run"):
    overlays.plot_overlays(str(tmp_path / "pre"), str(tmp_path / "ov2.png"), 2)
  config.model.init_encoder = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing/global_variables.msgpack"):
    experiment.build(config)


def test_momentum_encoder_follows_the_main_encoder_by_ema_after_every_step():
  config = tiny_fcl_config()
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  local = spec.start(server, state, jax.random.PRNGKey(0))
  batch = exp.batch_fns["clients"](jax.tree.map(lambda x: x[0], exp.data["clients"].arrays), jnp.arange(2),
                                   jax.random.PRNGKey(1))
  new, _ = jax.jit(spec.step)(local, batch, jax.random.PRNGKey(2))
  m = config.algorithm.momentum
  for old_k, new_q, new_k in zip(jax.tree.leaves(local["momentum_params"]), jax.tree.leaves(new["params"]),
                                 jax.tree.leaves(new["momentum_params"])):
    np.testing.assert_allclose(new_k, m * old_k + (1 - m) * new_q, rtol=1e-5, atol=1e-7)
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(local["momentum_params"]),
                                                   jax.tree.leaves(new["momentum_params"])))


@pytest.mark.parametrize("resync", [True, False])
def test_momentum_resync_restarts_the_momentum_encoder_from_the_broadcast_model(resync):
  config = tiny_fcl_config()
  config.algorithm.momentum_resync = resync
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  state = {**state, "momentum_params": jax.tree.map(lambda x: x - 1.0, state["momentum_params"]),
           "momentum_state": jax.tree.map(lambda x: x + 2.0, state["momentum_state"])}  # lags the global model
  server = server.replace(params=jax.tree.map(lambda x: x + 0.5, server.params))  # a new global model arrives
  local = spec.start(server, state, jax.random.PRNGKey(0))
  expected = (server.params["params"], {k: v for k, v in server.params.items() if k != "params"}) if resync else (
      state["momentum_params"], state["momentum_state"])
  for got, want in zip(jax.tree.leaves((local["momentum_params"], local["momentum_state"])),
                       jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  assert jax.tree.leaves(local["momentum_state"])  # batch statistics are re-synced too


def test_staged_finetuning_keeps_the_encoder_fixed_for_its_frozen_rounds(tmp_path):
  import flax.serialization

  from configs import fcl_finetune_acdc

  config = fcl_finetune_acdc.get_config("2,staged")
  assert config.algorithm.persist_optimizer and config.client.after_unfreeze_lr_scale < 1
  config.data = tiny_fcl_config().data
  config.data.batch_mode, config.data.views, config.data.flips = "images", (), True
  config.model.kwargs.widths = (4, 8)
  config.partition.num_clients = 3
  config.client.local_steps = 2
  short_run(config, rounds=1)  # frozen_rounds >= 1: the only round trains the decoder alone
  assert config.algorithm.frozen_rounds >= 1
  exp = experiment.build(config)
  train.run(config, str(tmp_path / "ft"))
  with open(tmp_path / "ft" / "global_variables.msgpack", "rb") as f:
    final = flax.serialization.msgpack_restore(f.read())
  for module in ("down0", "bottleneck", "dec0", "out"):
    moved = any(bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(final["params"][module]),
                                                      jax.tree.leaves(exp.variables["params"][module])))
    assert moved == module.startswith(("dec", "out")), module


@pytest.mark.parametrize("persist", [True, False])
def test_persist_optimizer_keeps_or_restarts_the_client_optimizer_state(persist):
  config = tiny_fcl_config()
  assert config.algorithm.persist_optimizer  # configs/fcl_acdc.py: what FCL always did before the key existed
  config.algorithm.persist_optimizer = persist
  exp = experiment.build(config)
  server, states = experiment.initial_state(exp)
  spec = exp.algorithm.cohorts["clients"]
  state = jax.tree.map(lambda x: x[0], states["clients"])
  assert ("opt_state" in state) == persist
  if persist:  # the Adam state a client left after an earlier round (count and moments non-zero)
    state = {**state, "opt_state": jax.tree.map(lambda x: x + 1, state["opt_state"])}
  local = spec.start(server, state, jax.random.PRNGKey(0))
  leaves = jax.tree.leaves(local["opt_state"])
  assert leaves and all(bool(jnp.all(x == (1 if persist else 0))) for x in leaves)  # kept, or Adam's fresh zeros
  new_state, _, _ = spec.finish(server, state, local)
  assert ("opt_state" in new_state) == persist
