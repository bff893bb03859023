"""The round loop: outputs, resumption, non-finite handling, workdir protection, config errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from fedjax_med import config as config_lib
from fedjax_med import experiment, report, train
from fedjax_med.checkpoint import Checkpointer
from fedjax_med.logging_utils import to_python


def _final_state(config, workdir):
  exp = experiment.build(config)
  server, clients = experiment.initial_state(exp)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = checkpointer.restore(checkpointer.latest_round(), experiment.state_tree(server, clients))
  checkpointer.close()
  return state


def test_run_writes_metrics_checkpoints_and_a_summary(tmp_path, capsys):
  summary = train.run(tiny_config(), str(tmp_path))
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [r["round"] for r in lines] == [1, 2, 3, 4]
  assert set(lines[0]["clients"]) == {"0", "1", "2", "3"} and "loss" in lines[0]["clients"]["0"]
  assert "eval" in lines[1] and "accuracy" in lines[1]["eval"] and "eval" not in lines[0]
  assert to_python(summary["eval"]) == lines[-1]["eval"] and summary["synthetic_data"]
  assert Checkpointer(str(tmp_path / "checkpoints")).latest_round() == 4
  assert report.main([str(tmp_path), "--metrics", "accuracy", "macro_auroc"]) == 0
  row = capsys.readouterr().out.splitlines()[-1]
  assert row.startswith(f"| {tmp_path.name} | {summary['eval']['accuracy']:.4f} | ") and "| 4 |" in row


@pytest.mark.parametrize("loader", ["device", "grain"])
def test_resuming_in_two_parts_equals_one_straight_run_bit_for_bit(tmp_path, loader):
  train.run(tiny_config(data__loader=loader), str(tmp_path / "straight"))
  train.run(tiny_config(data__loader=loader, num_rounds=2), str(tmp_path / "parts"))
  summary = train.run(tiny_config(data__loader=loader, num_rounds=4), str(tmp_path / "parts"))  # rounds may grow
  assert np.isfinite(summary["eval"]["accuracy"])
  a = _final_state(tiny_config(data__loader=loader), str(tmp_path / "straight"))
  b = _final_state(tiny_config(data__loader=loader), str(tmp_path / "parts"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rounds = [json.loads(x)["round"] for x in open(tmp_path / "parts" / "metrics.jsonl")]
  assert rounds == [1, 2, 3, 4]


def _poison_client_from_round(monkeypatch, client: int, round_num: int):
  """Client ``client``'s loss becomes NaN from round ``round_num`` (1-based) on: a real NaN through the engine."""
  build = experiment.build

  def poisoned_build(config):
    exp = build(config)
    name = next(iter(exp.algorithm.cohorts))
    spec = exp.algorithm.cohorts[name]

    def start(server_state, client_state, rng):
      local = spec.start(server_state, client_state, rng)
      bad = (server_state.round >= round_num - 1) & (client_state["marker"] == client)
      return {**local, "poison": jnp.where(bad, jnp.nan, 1.0)}

    def step(local, batch, rng):
      poison = local.pop("poison")
      batch = {**batch, "images": batch["images"] * poison}
      new, metrics = spec.step(local, batch, rng)
      return {**new, "poison": poison}, metrics

    def finish(server_state, client_state, local):
      local = dict(local)
      local.pop("poison")
      state, message, metrics = spec.finish(server_state, {k: v for k, v in client_state.items() if k != "marker"},
                                            local)
      return {**state, "marker": client_state["marker"]}, message, metrics

    exp.algorithm = exp.algorithm._replace(cohorts={name: spec._replace(start=start, step=step, finish=finish)})
    return exp

  def initial_state(exp):
    server, clients = experiment_initial_state(exp)
    name = next(iter(clients))
    clients[name] = {**clients[name], "marker": jnp.arange(len(exp.cohorts[name]))}
    return server, clients

  experiment_initial_state = experiment.initial_state
  monkeypatch.setattr(experiment, "build", poisoned_build)
  monkeypatch.setattr(experiment, "initial_state", initial_state)


def test_nan_client_is_left_out_and_reported_with_skip_policy(tmp_path, monkeypatch, caplog):
  _poison_client_from_round(monkeypatch, client=2, round_num=3)
  summary = train.run(tiny_config(), str(tmp_path))
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [r["excluded"] for r in lines] == [[], [], [2], [2]]
  assert "client(s) [2] sent non-finite updates" in caplog.text
  assert np.isfinite(summary["eval"]["accuracy"])
  # the skips reach results.json, the end-of-run warning and the report
  results = json.load(open(tmp_path / train.RESULTS_FILE))
  assert results["skipped_clients"] == {"3": [2], "4": [2]}
  assert "2 of 4 rounds left clients out of the aggregate" in caplog.text and "round 3: clients [2]" in caplog.text
  from fedjax_med import report

  row = report.run_row(str(tmp_path), ["accuracy"])
  assert row["skipped_rounds"] == 2 and "| 2 |" in report.markdown([row], ["accuracy"])


def test_nan_stops_the_run_naming_round_and_client_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  _poison_client_from_round(monkeypatch, client=1, round_num=3)
  with pytest.raises(train.NonFiniteError, match=r"round 3: non-finite update \(NaN/inf\) from client\(s\) \[1\]"):
    train.run(tiny_config(aggregation__nonfinite="stop"), str(tmp_path))
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  assert checkpointer.latest_round() == 2
  state = _final_state(tiny_config(aggregation__nonfinite="stop"), str(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state) if np.asarray(x).dtype.kind == "f")


def test_workdir_of_another_config_is_refused_unless_overwrite(tmp_path):
  train.run(tiny_config(num_rounds=1), str(tmp_path / "w"))
  with pytest.raises(config_lib.ConfigError, match=r"different config \(client.learning_rate: 0.003 -> 0.1"):
    train.run(tiny_config(num_rounds=1, client__learning_rate=0.1), str(tmp_path / "w"))
  train.run(tiny_config(num_rounds=1, client__learning_rate=0.1, overwrite=True), str(tmp_path / "w"))
  moved = [p for p in os.listdir(tmp_path) if p.startswith("w.replaced-")]
  assert len(moved) == 1 and os.path.exists(tmp_path / moved[0] / "metrics.jsonl")  # the old run is kept


@pytest.mark.parametrize("changes,message", [
    ({"execution__strategy": "pmap"}, r"config.execution.strategy='pmap' is not allowed; allowed: \['vmap'"),
    ({"client__optimizer": "adm"}, r"config.client.optimizer='adm' is not allowed.*Did you mean 'adam'\?"),
    ({"client__batch_size": 0}, r"config.client.batch_size must be > 0; got 0"),
    ({"client__local_epochs": 1.0}, r"exactly one of config.client.local_steps and config.client.local_epochs"),
    ({"model__name": "resnet"}, r"model 'resnet' is not known; available: \["),
    ({"partition__column": "hospital"}, r"config.partition.column='hospital' is not a column"),
])
def test_bad_config_values_name_the_key_and_what_is_allowed(tmp_path, changes, message):
  with pytest.raises(ValueError, match=message):
    train.run(tiny_config(**changes), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing written


def test_auto_measures_the_candidates_records_the_pick_and_keeps_it_on_resume(tmp_path, caplog):
  caplog.set_level("INFO", logger="fedjax_med")
  summary = train.run(tiny_config(num_rounds=2, execution__strategy="auto"), str(tmp_path))
  assert set(summary["calibration"]) == {"vmap", "unrolled", "sequential", "stepwise"}
  assert summary["strategy"] == min(summary["calibration"], key=lambda s: summary["calibration"][s]["run_estimate_s"])
  assert f"auto picked {summary['strategy']} on backend cpu" in caplog.text
  caplog.clear()
  resumed = train.run(tiny_config(num_rounds=3, execution__strategy="auto"), str(tmp_path))
  assert resumed["strategy"] == summary["strategy"] and "auto picked" not in caplog.text  # no new calibration


def test_a_second_run_loads_its_programs_from_the_compilation_cache(tmp_path, monkeypatch):
  import glob

  import jax

  from fedjax_med import train
  from tests.conftest import tiny_config

  previous = jax.config.jax_compilation_cache_dir
  monkeypatch.delenv("FEDJAX_MED_COMPILATION_CACHE")  # conftest's per-run folder would replace the config's path
  try:
    config = tiny_config(num_rounds=1)
    config.execution.compilation_cache = str(tmp_path / "cache")
    config.execution.compilation_cache_min_seconds = 0.0  # store every program, however fast its compile was
    train.run(config, str(tmp_path / "first"))
    written = sorted(glob.glob(str(tmp_path / "cache" / "*")))
    assert written  # the round and evaluation programs were stored
    hits = []
    listener = lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
    jax.monitoring.register_event_listener(listener)
    try:
      train.run(config, str(tmp_path / "second"))  # new jitted functions, the same programs: read back
    finally:
      jax.monitoring.unregister_event_listener(listener)
    assert len(hits) >= 2  # at least the round and the evaluation
    assert sorted(glob.glob(str(tmp_path / "cache" / "*"))) == written  # nothing new stored
  finally:
    train.use_compilation_cache(previous or "", 0.5)


def test_the_compilation_cache_folder_comes_from_the_environment_when_set(tmp_path, monkeypatch):
  import jax

  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("FEDJAX_MED_COMPILATION_CACHE", str(tmp_path / "cache"))
  try:
    train.use_compilation_cache("~/.cache/fedjax_med/xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
  finally:  # the rest of this worker's tests keep the suite's folder
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", before)
