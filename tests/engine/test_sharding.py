"""The sharded strategy on 4 forced host devices equals the single-device run (6 clients: padded; 8: even)."""

import os
import subprocess
import sys
import textwrap

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


def test_sharded_round_on_four_devices_equals_the_single_device_run():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=REPO)], capture_output=True, text=True,
                        env=env, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[-4:] == ["ok", "6", "ok", "8"]
