"""Deployment on Flower: the site/server split equals the simulation; real processes on 127.0.0.1 (2 rounds equal
to the simulation, a site killed mid-run, TLS with SuperNode authentication refusing an unknown site)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.serialization
import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config, tiny_overrides
from helpers import run_rounds

from fedjax_med import train
from fedjax_med.deploy import site as site_lib

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed")
from fedjax_med.deploy import certificates, flower_apps  # noqa: E402

ROUNDS = 2


def _config(sites: int, **changes):
  config = tiny_config(num_rounds=ROUNDS, partition__num_clients=sites, **changes)
  config.data.synthetic.num_sites = sites
  return config


def _overrides(sites: int, rounds: int = ROUNDS, min_clients: int = 2, start_sites: int | None = None) -> list[str]:
  return [*tiny_overrides(), f"--config.num_rounds={rounds}", f"--config.partition.num_clients={sites}",
          f"--config.data.synthetic.num_sites={sites}", f"--config.deploy.min_clients={min_clients}",
          # every site takes part from the first round (no start-up race) unless the test says otherwise
          f"--config.deploy.start_sites={sites if start_sites is None else start_sites}",
          "--config.deploy.round_timeout=90", "--config.deploy.connect_timeout=120"]


def _leaves_max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# -- in process: the split at the wire ----------------------------------------------------------------------------
def test_site_and_coordinator_rounds_equal_the_sequential_simulation():
  config = _config(3)
  coordinator = site_lib.Coordinator(config)
  trainers = [site_lib.SiteTrainer(config, k) for k in range(3)]
  states = [None] * 3
  for r in range(ROUNDS):
    replies = []
    for k in coordinator.selected_sites(r):
      states[k], reply = trainers[k].train(site_lib.to_arrays(coordinator.server_state), states[k])
      replies.append(reply)
    coordinator.aggregate(replies[::-1])  # arrival order must not matter
  server, _ = run_rounds(config, "sequential", ROUNDS)
  assert int(coordinator.server_state.round) == ROUNDS
  assert _leaves_max_diff(coordinator.server_state.params, server.params) < 1e-6


def test_a_site_sends_only_its_model_update_and_scalar_metrics():
  config = _config(2)
  coordinator = site_lib.Coordinator(config)
  content = flower_apps._train_content(config.to_json_best_effort(), 0,
                                       site_lib.to_arrays(coordinator.server_state))
  state = flwr.app.RecordDict()
  reply = flower_apps.site_reply(content, {"site": 1, "data": ""}, state)
  assert sorted(reply.keys()) == sorted(flower_apps.REPLY_KEYS)
  sent = reply["message"].to_numpy_ndarrays()
  template = coordinator.message_templates["clients"]
  assert [a.shape for a in sent] == [np.shape(t) for t in jax.tree.leaves(template)]
  # the message is the model delta: as many arrays as the model's variables, the same shapes, nothing else
  variables = coordinator.exp.variables
  assert [a.shape for a in sent] == [np.shape(v) for v in jax.tree.leaves(variables)]
  metrics = dict(reply["metrics"])
  assert metrics["site"] == 1 and metrics["num_examples"] > 0
  assert all(np.ndim(v) == 0 for v in metrics.values())
  assert "client_state" in state  # the persistent client state stays at the site


def test_a_reply_of_another_model_is_refused_naming_the_array():
  config = _config(2)
  coordinator = site_lib.Coordinator(config)
  trainer = site_lib.SiteTrainer(config, 0)
  _, reply = trainer.train(site_lib.to_arrays(coordinator.server_state), None)
  bad = reply._replace(message=[a[..., :1] if a.ndim else a for a in reply.message])
  with pytest.raises(ValueError, match="message of site 0: array .* has shape"):
    coordinator.aggregate([bad])


# -- real processes ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env() -> dict[str, str]:
  """The children's environment, as for a user who runs the environment's python without activating it: the
  directory of this python (where pip put Flower's executables) is not on ``PATH``."""
  here = os.path.dirname(os.path.abspath(sys.executable))
  path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.abspath(p) != here)
  return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "PATH": path}


def test_flowers_own_processes_get_the_directory_of_its_executables_first_on_path():
  from fedjax_med.deploy.flower import flower_environment

  env = flower_environment({"PATH": "/nowhere", "OTHER": "kept"})
  first, rest = env["PATH"].split(os.pathsep, 1)
  assert os.path.exists(os.path.join(first, "flower-superexec")) and rest == "/nowhere"
  assert env["OTHER"] == "kept"


class Deployment:
  """A server and its sites as child processes of the test; everything is killed on exit."""

  def __init__(self, tmp_path, overrides, extra_server=(), sites=()):
    self.tmp, self.port, self.procs = tmp_path, _free_port(), {}
    self.workdir = str(tmp_path / "server")
    cmd = [sys.executable, "-m", "fedjax_med.deploy.flower", "server", "--config",
           os.path.join(REPO, "configs/fedavg.py"), *overrides, "--workdir", self.workdir, "--port", str(self.port),
           "--timeout", "400", *extra_server]
    self.server = self._start("server", cmd)

  def _start(self, name, cmd):
    out = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
                            start_new_session=True)
    self.procs[name] = proc
    return proc

  def wait_ready(self, seconds=120):
    from fedjax_med.deploy.flower import READY

    deadline = time.monotonic() + seconds
    while READY not in self.log("server"):
      if self.server.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"the server did not get ready; log:\n{self.log('server')[-3000:]}")
      time.sleep(0.3)

  def add_site(self, k, *extra):
    cmd = [sys.executable, "-m", "fedjax_med.deploy.flower", "client", "--site", str(k), "--superlink",
           f"127.0.0.1:{self.port}", "--clientappio_port", str(_free_port()), *extra]
    return self._start(f"site{k}", cmd)

  def kill(self, name):
    proc = self.procs[name]
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()

  def log(self, name) -> str:
    return (self.tmp / f"{name}.log").read_text()

  def rounds_done(self) -> int:
    path = os.path.join(self.workdir, "metrics.jsonl")
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0

  def wait_server(self, seconds=420) -> int:
    try:
      return self.server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
      pytest.fail(f"the deployment did not finish in {seconds} s; server log:\n{self.log('server')[-3000:]}")

  def close(self):
    for name in list(self.procs):
      self.kill(name)


@pytest.fixture
def deployment(tmp_path):
  made = []

  def make(*args, **kwargs):
    made.append(Deployment(tmp_path, *args, **kwargs))
    return made[-1]

  yield make
  for d in made:
    d.close()


def _global_variables(workdir):
  with open(os.path.join(workdir, train.GLOBAL_VARIABLES_FILE), "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def test_server_and_two_site_processes_give_the_simulations_global_model(deployment, tmp_path):
  d = deployment(_overrides(2))
  for k in range(2):
    d.add_site(k)
  assert d.wait_server() == 0, d.log("server")[-3000:]
  status = json.load(open(os.path.join(d.workdir, flower_apps.STATUS_FILE)))
  assert status["state"] == "finished" and status["rounds"] == ROUNDS and status["sites"] == [0, 1]
  simulated = train.run(_config(2, checkpoint__every=ROUNDS, eval__every=ROUNDS), str(tmp_path / "sim"))
  assert simulated["rounds"] == ROUNDS
  assert _leaves_max_diff(_global_variables(d.workdir), _global_variables(str(tmp_path / "sim"))) < 1e-5


def test_a_killed_site_is_left_out_until_fewer_than_min_clients_remain(deployment):
  d = deployment(_overrides(3, rounds=3, min_clients=2) + ["--config.checkpoint.every=1"])
  for k in range(3):
    d.add_site(k)
  for round_num, site in ((1, "site2"), (2, "site1")):  # kill a site after each of the first two rounds
    deadline = time.monotonic() + 300
    while d.rounds_done() < round_num and d.server.poll() is None and time.monotonic() < deadline:
      time.sleep(0.5)
    d.kill(site)
  assert d.wait_server() == 2
  rows = [json.loads(x) for x in open(os.path.join(d.workdir, "metrics.jsonl"))]
  assert [r["round"] for r in rows] == [1, 2]
  assert rows[0]["sites"] == [0, 1, 2] and rows[0]["missing"] == []
  assert rows[1]["sites"] == [0, 1] and rows[1]["missing"] == [2]  # continued without the dead site
  assert "round 3: 1 of 3 sites replied (missing [1, 2]), fewer than deploy.min_clients=2" in d.log("server")
  from fedjax_med.checkpoint import Checkpointer

  checkpointer = Checkpointer(os.path.join(d.workdir, "checkpoints"))
  assert checkpointer.latest_round() == 2  # the last good global checkpoint is intact
  checkpointer.close()


def test_tls_and_node_authentication_refuse_an_unregistered_site(deployment, tmp_path):
  keys = tmp_path / "keys"
  certificates.make_tls(str(tmp_path / "tls"))
  known, _ = certificates.make_site_key(str(tmp_path), "site_0", str(keys))
  stranger, _ = certificates.make_site_key(str(tmp_path), "stranger", str(tmp_path / "unregistered"))
  d = deployment(_overrides(2, rounds=1, min_clients=1, start_sites=1),  # site 1 is refused
                 extra_server=("--certificates", str(tmp_path / "tls"), "--auth_keys", str(keys)))
  d.wait_ready()  # the keys are registered
  intruder = d.add_site(1, "--certificates", str(tmp_path / "tls"), "--auth_key", stranger)
  d.add_site(0, "--certificates", str(tmp_path / "tls"), "--auth_key", known)
  assert d.wait_server() == 0, d.log("server")[-3000:]
  status = json.load(open(os.path.join(d.workdir, flower_apps.STATUS_FILE)))
  assert status["sites"] == [0]  # only the registered site joined
  rows = [json.loads(x) for x in open(os.path.join(d.workdir, "metrics.jsonl"))]
  assert rows[0]["sites"] == [0]
  assert intruder.wait(timeout=60) != 0  # the unregistered SuperNode was refused and gave up
  assert "Failed to activate SuperNode" in d.log("site1")
