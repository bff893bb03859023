"""Deployment on Flower: the site/server split equals the simulation; real processes on 127.0.0.1 (2 rounds equal
to the simulation, a site killed mid-run, TLS and authentication against an attacker: an unknown key, a key
registered through Flower's admin API, a site's key claiming another site); key file modes, example-count caps,
the admin-API guard (issue 22)."""

import json
import os
import pathlib
import shutil
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
  server, _ = run_rounds(config, "sequential", ROUNDS, unroll=True)  # as the sites run it
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
  from fedjax_med import xla_flags

  # the apps in Flower's processes run the kernels main.py selects (when this jaxlib accepts the flags)
  expected = xla_flags.apply_cpu_defaults({})
  assert env.get("XLA_FLAGS", "") == expected


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

  def add_site(self, k, *extra, name=None):
    cmd = [sys.executable, "-m", "fedjax_med.deploy.flower", "client", "--site", str(k), "--superlink",
           f"127.0.0.1:{self.port}", "--clientappio_port", str(_free_port()), *extra]
    return self._start(name or f"site{k}", cmd)

  def wait_for(self, what, seconds=120):
    """Waits until ``what(self)`` is true (the server still running)."""
    deadline = time.monotonic() + seconds
    while not what(self):
      if self.server.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"timed out; server log:\n{self.log('server')[-3000:]}\nServerApp log:\n{self.app_log()}")
      time.sleep(0.5)

  def app_log(self) -> str:
    path = os.path.join(self.workdir, flower_apps.SERVER_LOG)
    return open(path).read() if os.path.exists(path) else ""

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _control_client(port: int, ca: str, source: str):
  """Flower's own Control API client (what ``flwr`` uses), connecting from the local address ``source``."""
  import ssl

  import httpx
  from flwr.supercore.control import ControlHttpClient

  client = ControlHttpClient.from_server_address(f"127.0.0.1:{port}", insecure=False,
                                                 root_certificates=open(ca, "rb").read(), interceptors=[])
  context = ssl.create_default_context(cafile=ca)
  client._client = httpx.Client(transport=httpx.HTTPTransport(verify=context, local_address=source), timeout=30)
  return client


@pytest.mark.slow
def test_only_the_operators_registered_keys_join_each_as_its_own_site(deployment, tmp_path):
  """Issue 22, as an attacker: the admin API refuses other hosts; a key registered by someone else through it (here
  from this host, with only ca.crt) joins Flower but is sent nothing; a registered key claiming another site is
  refused; a key never registered is refused by Flower."""
  import httpx
  from flwr.cli.supernode.register import try_load_public_key
  from flwr.proto.control_pb2 import RegisterNodeRequest

  from fedjax_med.deploy.flower import flower_environment

  keys, tls = tmp_path / "keys", tmp_path / "tls"
  certificates.make_tls(str(tls))
  site_0, _ = certificates.make_site_key(str(tmp_path), "site_0", str(keys))
  site_1, _ = certificates.make_site_key(str(tmp_path), "site_1", str(keys))
  stranger, _ = certificates.make_site_key(str(tmp_path), "stranger", str(tmp_path / "unregistered"))
  attacker, attacker_pub = certificates.make_site_key(str(tmp_path), "attacker", str(tmp_path / "attacker_keys"))
  os.makedirs(tmp_path / "ca_only")
  shutil.copy(tls / "ca.crt", tmp_path / "ca_only" / "ca.crt")  # all the attacker has of the deployment
  d = deployment(_overrides(2, rounds=1, min_clients=1, start_sites=1),
                 extra_server=("--certificates", str(tls), "--auth_keys", str(keys), "--max_examples", "0=1000,1=1000"))
  d.wait_ready()  # the operator's keys are registered
  registered = json.load(open(os.path.join(d.workdir, "deploy_sites.json")))["sites"]
  node_of = {int(k): v["node_id"] for k, v in registered.items()}
  assert sorted(node_of) == [0, 1]

  # from another address than the operator's, Flower's own client cannot register a key or list the nodes
  public = try_load_public_key(pathlib.Path(attacker_pub))
  client = _control_client(d.port, str(tls / "ca.crt"), "127.0.0.2")
  with pytest.raises(httpx.HTTPStatusError, match="403"):
    client.RegisterNode(RegisterNodeRequest(public_key=public))
  client.close()
  assert "refused POST /v1/control/register-node from 127.0.0.2" in (tmp_path / "server" / "superlink.log").read_text()

  # the attacker on the server's host: `flwr supernode register` with only ca.crt succeeds (Flower's Control API
  # has no authentication), and its SuperNode joins Flower claiming site 1
  home = tmp_path / "attacker_home"
  os.makedirs(home)
  (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{d.port}"\n'
                                    f'root-certificates = "{tmp_path / "ca_only" / "ca.crt"}"\n')
  flwr_cli = os.path.join(os.path.dirname(sys.executable), "flwr")
  result = subprocess.run([flwr_cli, "supernode", "register", attacker_pub, "--format", "json"], capture_output=True,
                          text=True, timeout=60, env=flower_environment({**_env(), "FLWR_HOME": str(home)}))
  assert result.returncode == 0, result.stdout + result.stderr
  intruder_node = int(json.loads(result.stdout)["node-id"])
  d.add_site(1, "--certificates", str(tmp_path / "ca_only"), "--auth_key", attacker, name="intruder")
  # a site's registered key (site 1's) on a node that says it is site 0
  d.add_site(0, "--certificates", str(tls), "--auth_key", site_1, name="impostor")
  stranger_proc = d.add_site(1, "--certificates", str(tls), "--auth_key", stranger, name="stranger")
  d.wait_for(lambda d: f"refused node {intruder_node}:" in d.app_log() and f"refused node {node_of[1]}:" in d.app_log())
  d.add_site(0, "--certificates", str(tls), "--auth_key", site_0)
  assert d.wait_server() == 0, d.log("server")[-3000:]

  status = json.load(open(os.path.join(d.workdir, flower_apps.STATUS_FILE)))
  assert status["sites"] == [0]
  assert status["refused"] == {str(intruder_node): "its key is not one the operator registered (--auth_keys); it is "
                                                   "sent nothing",
                               str(node_of[1]): "its key is site 1's but it reports site 0"}
  rows = [json.loads(x) for x in open(os.path.join(d.workdir, "metrics.jsonl"))]
  assert len(rows) == 1 and rows[0]["sites"] == [0] and rows[0]["capped"] == []
  # only site 0's update is in the aggregate: the total weight is its example count alone
  assert rows[0]["server"]["total_weight"] == rows[0]["train"]["num_examples"] > 0
  # the intruder joined Flower (so it was in the Grid's nodes) but was never sent a message; the impostor got only
  # the question which site it is
  assert f"SuperNode ID: {intruder_node}" in d.log("intruder") and "Receiving:" not in d.log("intruder")
  assert "Receiving: query" in d.log("impostor") and "Receiving: train" not in d.log("impostor")
  assert "Receiving: train" in d.log("site0")
  assert "refused node" in d.log("server")  # the operator's command names them too
  assert stranger_proc.wait(timeout=60) != 0  # a key nobody registered: Flower refuses the SuperNode
  assert "Failed to activate SuperNode" in d.log("stranger")


# -- issue 22: keys, the registry, example counts, the admin guard (in process) -----------------------------------
def test_private_keys_are_created_mode_0600(tmp_path):
  old = os.umask(0)  # nothing narrows the mode for us
  try:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.key").write_text("an older key")
    os.chmod(tmp_path / "tls" / "server.key", 0o644)  # a world-readable file in the way is replaced, not reused
    paths = certificates.make_tls(str(tmp_path / "tls"))
    private, public = certificates.make_site_key(str(tmp_path), "site_0")
  finally:
    os.umask(old)
  mode = lambda p: os.stat(p).st_mode & 0o777
  assert mode(paths["key"]) == 0o600 and mode(private) == 0o600
  assert mode(paths["ca"]) & 0o044 and mode(public) & 0o044  # certificates and public keys stay readable
  assert "BEGIN EC PRIVATE KEY" in open(paths["key"]).read()
  assert not [f for f in os.listdir(tmp_path / "tls") if f.endswith(".tmp")]


def test_private_keys_are_never_readable_by_others_while_written(tmp_path, monkeypatch):
  """The key's file is opened with mode 0600 (no chmod afterwards: no moment where others may read it)."""
  opened = []
  real_open = os.open

  def spy(path, flags, mode=0o777, *args, **kwargs):
    opened.append((os.path.basename(path), mode))
    return real_open(path, flags, mode, *args, **kwargs)

  monkeypatch.setattr(os, "open", spy)
  monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod after the key was written"))
  certificates.make_tls(str(tmp_path))
  certificates.make_site_key(str(tmp_path), "site_3")
  assert [m for name, m in opened if "server.key" in name] == [0o600]
  assert [m for name, m in opened if "site_3" in name and ".pub" not in name] == [0o600]


def test_registry_names_sites_by_key_file_and_parses_caps(tmp_path):
  from fedjax_med.deploy import registry

  assert registry.site_of_key_file("keys/site_12.pub") == 12
  for bad in ("hospital.pub", "site_1.pub.bak", "site_-1.pub"):
    with pytest.raises(ValueError, match="site_K.pub"):
      registry.site_of_key_file(bad)
  assert registry.parse_caps(["0=120", "1=80"]) == {0: 120, 1: 80}
  for bad in (["0"], ["a=3"], ["1=0"]):
    with pytest.raises(ValueError, match="--max_examples"):
      registry.parse_caps(bad)
  registry.write(str(tmp_path), {0: {"node_id": 11, "public_key": "k0"}, 1: {"node_id": 22, "public_key": "k1"}},
                 {0: 120, 1: 80}, authenticated=True)
  read = registry.read(str(tmp_path))
  assert read.authenticated and read.site_of(22) == 1 and read.site_of(33) is None and read.caps == {0: 120, 1: 80}


class _Reply:
  def __init__(self, node, site):
    self.metadata = type("Metadata", (), {"src_node_id": node})()
    self.content = {"metrics": {"site": site}}

  def has_error(self):
    return False


class _Grid:
  """Connected nodes, each answering the site query with the site it claims."""

  def __init__(self, claims):
    self.claims, self.asked = claims, []

  def get_node_ids(self):
    return list(self.claims)

  def send_and_receive(self, messages, timeout):
    self.asked += messages
    return [_Reply(node, self.claims[node]) for node in messages]


def test_discovery_takes_a_nodes_site_from_its_registered_key(monkeypatch):
  from fedjax_med.deploy import registry

  # a query message is only its destination here (a real Message needs a running Flower run)
  monkeypatch.setattr(flower_apps, "Message", lambda content, message_type, dst_node_id: dst_node_id)

  keys = registry.Registry(True, {11: 0, 22: 1}, {})
  # 11: site 0's key, honest; 22: site 1's key claiming site 0; 99: a key the operator never registered
  grid, refusals = _Grid({11: 0, 22: 0, 99: 1}), flower_apps.Refusals()
  assert flower_apps._discover(grid, keys, 2, 1, 5.0, refusals) == {0: 11}
  assert sorted(grid.asked) == [11, 22]  # the unregistered node is not even asked
  assert refusals.reasons == {22: "its key is site 1's but it reports site 0",
                              99: "its key is not one the operator registered (--auth_keys); it is sent nothing"}
  # without authentication a node is the site it says, and the first to say it keeps it
  grid, refusals = _Grid({11: 0, 22: 0, 33: 1, 44: 7}), flower_apps.Refusals()
  assert flower_apps._discover(grid, registry.Registry(False, {}, {}), 2, 2, 5.0, refusals) == {0: 11, 1: 33}
  assert sorted(refusals.reasons) == [22, 44]


def _content(site, count, arrays=None):
  arrays = [np.zeros(2, np.float32)] if arrays is None else list(arrays)
  return flwr.app.RecordDict({"message": flwr.app.ArrayRecord(numpy_ndarrays=arrays),
                              "metrics": flwr.app.MetricRecord({"site": site, "num_examples": count, "loss": 0.5})})


def test_a_reply_is_its_nodes_site_and_its_example_count_is_capped():
  reply, capped = flower_apps.accept_reply(_content(1, 10**9), 1, cap=40)
  assert (reply.site, reply.num_examples, capped, reply.metrics["num_examples"]) == (1, 40, True, 40.0)
  reply, capped = flower_apps.accept_reply(_content(1, 25), 1, cap=40)
  assert (reply.num_examples, capped) == (25, False)  # fewer than the cap (e.g. data withdrawn): its own count
  assert flower_apps.accept_reply(_content(1, 10**9), 1, cap=None)[0].num_examples == 10**9  # no cap configured
  with pytest.raises(ValueError, match="it is site 1 but its reply reports site 0"):
    flower_apps.accept_reply(_content(0, 25), 1, cap=40)
  for bad in (-5, 2.5, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="examples"):
      flower_apps.accept_reply(_content(1, bad), 1, cap=40)


def test_an_inflated_example_count_weighs_no_more_than_its_cap():
  config = _config(2)
  honest, capped, trusting = (site_lib.Coordinator(config) for _ in range(3))
  replies = [site_lib.SiteTrainer(config, k).train(site_lib.to_arrays(honest.server_state), None)[1] for k in (0, 1)]
  counts = [r.num_examples for r in replies]
  inflated = [replies[0], replies[1]._replace(num_examples=1000 * counts[1])]  # site 1 lies
  honest.aggregate(replies)
  capped.aggregate([flower_apps.accept_reply(_content(r.site, r.num_examples, r.message), r.site, cap=c)[0]
                    for r, c in zip(inflated, counts, strict=True)])
  trusting.aggregate(inflated)
  assert _leaves_max_diff(capped.server_state.params, honest.server_state.params) == 0.0
  assert _leaves_max_diff(trusting.server_state.params, honest.server_state.params) > 1e-4  # what the cap prevents


def test_the_admin_guard_lets_other_peers_reach_only_the_fleet_api():
  from fedjax_med.deploy.superlink import AdminFromOperatorOnly

  guard = AdminFromOperatorOnly(app=None, admins=["127.0.0.1", "::1"])
  assert guard.allowed("10.0.0.5", "/v1/fleet/pull-messages")
  for path in ("/v1/control/register-node", "/v1/runtime/acquire-task", "/docs", "/v1/fleet/../control/list-nodes",
               "/v1/fleet//x", "/v1/fleetx"):
    assert not guard.allowed("10.0.0.5", path), path
  assert not guard.allowed(None, "/v1/control/list-nodes") and not guard.allowed("127.0.0.2", "/v1/control/x")
  for operator in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
    assert guard.allowed(operator, "/v1/control/register-node")


def test_the_server_refuses_to_listen_beyond_loopback_without_keys_or_caps(tmp_path):
  base = [sys.executable, "-m", "fedjax_med.deploy.flower", "server", "--config",
          os.path.join(REPO, "configs/fedavg.py"), "--workdir", str(tmp_path / "w")]
  keys = tmp_path / "keys"
  certificates.make_site_key(str(tmp_path), "site_0", str(keys))
  certificates.make_tls(str(tmp_path / "tls"))
  for extra, message in (
      (["--host", "0.0.0.0"], "--host 0.0.0.0 lets other hosts connect: it needs --certificates and --auth_keys"),
      (["--certificates", str(tmp_path / "tls"), "--auth_keys", str(keys)],
       "give each site's cap with --max_examples K=N (missing for sites [0])")):
    result = subprocess.run(base + extra, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "w" / "superlink.log")  # refused before anything started
