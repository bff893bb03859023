"""The sharded strategy on 4 forced host devices equals the single-device run (6 clients: padded; 8: even)."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp, numpy as np
    from tests.conftest import tiny_config
    from tests.helpers import run_rounds
    from fedjax_med import experiment, train
    from fedjax_med.engine import execution

    assert len(jax.devices()) == 4, jax.devices()
    for n in (6, 8):
      config = tiny_config()
      config.partition.method, config.partition.num_clients = "iid", n
      params = {{s: run_rounds(config, s, 2)[0].params for s in ("sequential", "sharded")}}
      for a, b in zip(jax.tree.leaves(params["sequential"]), jax.tree.leaves(params["sharded"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      exp = experiment.build(config)
      server, states = experiment.initial_state(exp)
      runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sharded", unroll=True,
                                     weighting="num_examples")
      selection = {{k: jnp.asarray(v, jnp.int32) for k, v in train.selection_for(exp, 0).items()}}
      hlo = runner._round.lower(server, states, exp.data, selection).compile().as_text()
      assert "all-reduce" in hlo  # the client axis really is split over the devices
      print("ok", n)
""")


@pytest.mark.slow
def test_sharded_round_on_four_devices_equals_the_single_device_run():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=REPO)], capture_output=True, text=True,
                        env=env, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[-4:] == ["ok", "6", "ok", "8"]


PROCESS = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    sys.path.insert(0, {repo!r})
    from fedjax_med.engine import distributed
    distributed.initialize({address!r}, 2, int(sys.argv[1]))
    import jax, numpy as np
    from tests.conftest import tiny_config
    from tests.helpers import run_rounds
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    config = tiny_config()
    config.partition.method, config.partition.num_clients = "iid", 6
    server, _ = run_rounds(config, "sharded", 2)
    np.savez(sys.argv[2], *[np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(server.params)])
""")


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_the_client_axis_and_equal_one_process(tmp_path):
  import jax
  import numpy as np

  from tests.conftest import tiny_config
  from tests.helpers import run_rounds

  script = PROCESS.format(repo=REPO, address=f"127.0.0.1:{_free_port()}")
  outs = [str(tmp_path / f"p{i}.npz") for i in range(2)]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, "-c", script, str(i), outs[i]], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  config = tiny_config()
  config.partition.method, config.partition.num_clients = "iid", 6
  server, _ = run_rounds(config, "sequential", 2)
  for out in outs:
    got = np.load(out)
    for i, leaf in enumerate(jax.tree.leaves(server.params)):
      np.testing.assert_allclose(got[f"arr_{i}"], leaf, rtol=1e-5, atol=1e-6)


CONFIG_FILE = textwrap.dedent("""
    from tests.conftest import tiny_config


    def get_config():
      config = tiny_config()
      config.partition.method, config.partition.num_clients = "iid", 6
      config.num_rounds, config.eval.every, config.checkpoint.every = 2, 1, 1
      config.execution.strategy = "auto"  # several processes: train.run takes the sharded strategy
      return config
""")


@pytest.mark.slow
def test_main_py_over_two_processes_writes_one_run_equal_to_one_process(tmp_path):
  """``python main.py`` with the FEDJAX_MED_* variables on two processes (two CPU devices each): one metrics
  file, results and final model written once, equal to the single-process run's."""
  import json

  import flax.serialization
  import jax
  import numpy as np

  (tmp_path / "two_process_config.py").write_text(CONFIG_FILE)
  config_path = str(tmp_path / "two_process_config.py")
  address = f"127.0.0.1:{_free_port()}"
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = []
  for i in range(2):
    env = {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "FEDJAX_MED_COORDINATOR": address,
           "FEDJAX_MED_NUM_PROCESSES": "2", "FEDJAX_MED_PROCESS_ID": str(i), "PYTHONPATH": REPO}
    procs.append(subprocess.Popen([sys.executable, "main.py", "--config", config_path, "--workdir",
                                   str(tmp_path / "multi")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, "main.py", "--config", config_path, "--config.execution.strategy=sequential",
                           "--workdir", str(tmp_path / "single")], env={**base, "PYTHONPATH": REPO}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / "multi" / "metrics.jsonl")]
  assert [r["round"] for r in rows] == [1, 2] and all("eval" in r for r in rows)  # written once, by process 0
  results = json.load(open(tmp_path / "multi" / "results.json"))
  assert results["num_processes"] == 2 and results["strategy"] == "sharded"
  assert "Final evaluation" in outs[0][0] and "Final evaluation" not in outs[1][0]
  load = lambda d: flax.serialization.msgpack_restore((tmp_path / d / "global_variables.msgpack").read_bytes())
  for a, b in zip(jax.tree.leaves(load("multi")), jax.tree.leaves(load("single"))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  single_eval = json.load(open(tmp_path / "single" / "results.json"))["eval"]
  assert set(results["eval"]) == set(single_eval)
  for key, value in single_eval.items():
    if isinstance(value, float):
      np.testing.assert_allclose(results["eval"][key], value, rtol=1e-4, atol=1e-5)
    else:  # per-class lists, or None where a metric is undefined on the tiny split
      assert results["eval"][key] == value or np.allclose(results["eval"][key], value, rtol=1e-4, atol=1e-5), key
