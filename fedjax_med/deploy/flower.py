"""Real cross-silo deployment on Flower: one server, one process per hospital, only parameters and metrics on the wire.

  # the server (a Flower SuperLink + this run's ServerApp); waits for the sites, trains, writes WORKDIR
  python -m fedjax_med.deploy.flower server --config configs/fedavg.py [--config.key=value ...] --workdir W \\
      [--host 0.0.0.0] [--port 9092] [--certificates DIR --auth_keys DIR --max_examples 0=N0,1=N1,...]
  # each site (a Flower SuperNode running this package's ClientApp on the site's own prepared data)
  python -m fedjax_med.deploy.flower client --site K --data DIR --superlink HOST:9092 \\
      [--certificates DIR] [--auth_key FILE]

The server builds the config's experiment as well, for the model's shapes, the initial state and the
selection: it reads the config's ``data.root`` (in a real deployment, a prepared dataset of the same format and
classes, e.g. a public or synthetic one; it never trains on it).

Needs the ``flower`` extra (``pip install 'fedjax_med[flower]'``, flwr 1.42). The server's config travels to the
sites with every round; ``--data`` replaces its ``data.root`` at the site. A site is client ``K`` of the config's
partition, so its data is what the simulation would give client K (a site that holds only its own rows, e.g. one
ACDC pathology group with ``partition.method='column'``, gets the same client).

Security. ``--certificates DIR`` turns on TLS (``DIR/ca.crt``, and at the server ``DIR/server.pem`` +
``DIR/server.key``). ``--auth_keys DIR`` at the server turns on Flower's SuperNode authentication and registers
each ``DIR/site_K.pub`` (OpenSSH ECDSA public key of site K); a site then starts with ``--auth_key`` (its private
key) and a SuperNode whose key is not registered is refused by Flower. The node ids Flower returns for these keys
go to ``WORKDIR/deploy_sites.json`` (``deploy.registry``): the ServerApp sends work only to those nodes, takes a
node's site from its key (a node reporting another site is refused), and caps each site's example count (its
FedAvg weight) at ``--max_examples K=N``, required with ``--auth_keys`` when ``aggregation.weighting`` is
``num_examples``. Refused nodes are logged in ``WORKDIR/server_app.log`` and listed in the status file. The
SuperLink runs behind ``deploy.superlink``: its Control and Runtime APIs (key registration, runs) answer only
``--admin_hosts`` (default: this host's loopback), other peers reach only the Fleet API. A server listening beyond
loopback (``--host``) needs ``--certificates`` and ``--auth_keys``. ``deploy/certificates.py`` makes throw-away
certificates and keys for tests (private keys mode 0600).

Rounds: the first starts once ``deploy.start_sites`` sites are connected (default ``deploy.min_clients``; a site
that connects later is not used in this run). The server selects the sites as the simulation does, sends them the
server state, and waits up to ``deploy.round_timeout`` s; with at least ``deploy.min_clients`` replies it
aggregates them (a site that died is left out), otherwise it stops with a message naming the missing sites and
keeps the last global checkpoint (``checkpoint.every`` rounds). The same config in simulation
(``execution.strategy='sequential'``) gives the same global parameters (tested).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping

from absl import app, flags
from ml_collections import config_flags

from fedjax_med import xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "server: path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "server: output directory (checkpoints, metrics, global variables).")
flags.DEFINE_string("host", "127.0.0.1", "server: the address the SuperLink listens on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 9092, "server: the SuperLink's port (Fleet, Control and Runtime APIs over HTTP).")
flags.DEFINE_integer("site", None, "client: this site's client index in the config's partition.")
flags.DEFINE_string("data", "", "client: the site's prepared data (replaces config.data.root).")
flags.DEFINE_string("superlink", "127.0.0.1:9092", "client: the server's HOST:PORT.")
flags.DEFINE_integer("clientappio_port", 9094, "client: the local ClientAppIo port (unique per site on one host).")
flags.DEFINE_string("certificates", "", "TLS: a directory with ca.crt (and at the server server.pem, server.key).")
flags.DEFINE_string("auth_keys", "", "server: a directory of the sites' *.pub keys; only they may join.")
flags.DEFINE_string("auth_key", "", "client: this site's private key (OpenSSH ECDSA) for SuperNode authentication.")
flags.DEFINE_list("max_examples", [], "server: K=N,...: site K's example count (its FedAvg weight) is capped at N.")
flags.DEFINE_list("admin_hosts", [], "server: peer addresses that may use the SuperLink's Control and Runtime APIs "
                  "(default: 127.0.0.1, ::1 and --host); every other peer reaches only the Fleet API.")
flags.DEFINE_float("timeout", 0.0, "server: stop the whole deployment after this many seconds (0 = no limit).")

READY = "the SuperLink accepts sites"  # printed once sites may connect (after their keys are registered)
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedjax-med-deploy"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedjax-med"

[tool.flwr.app.components]
serverapp = "fedjax_med.deploy.flower_apps:server_app"
clientapp = "fedjax_med.deploy.flower_apps:client_app"

[tool.flwr.app.config]
workdir = ""
"""


def _executable(name: str) -> str:
  path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    raise SystemExit(f"error: {name} not found: install the flower extra (pip install 'fedjax_med[flower]')")
  return path


def flower_environment(base: Mapping[str, str]) -> dict[str, str]:
  """``base`` with the directory of Flower's executables first on ``PATH``.

  The SuperLink and SuperNode start their helpers (``flower-superexec``, ...) by name; run through a virtual
  environment's python without activating it, ``PATH`` lacks them and the SuperLink dies at startup (status 3).
  ``XLA_FLAGS`` gets the CPU defaults of ``fedjax_med.xla_flags``, as ``main.py`` sets them.
  """
  directory = os.path.dirname(_executable("flower-superlink"))
  environment = {**base, "PATH": os.pathsep.join([directory, base.get("PATH", "")]).rstrip(os.pathsep)}
  # the server and site apps run in Flower's processes: the same XLA:CPU kernels as main.py (fedjax_med.xla_flags)
  xla_flags.apply_cpu_defaults(environment)
  return environment


def _tls_files(directory: str, server: bool) -> dict[str, str]:
  names = {"ca": "ca.crt"} | ({"cert": "server.pem", "key": "server.key"} if server else {})
  files = {k: os.path.abspath(os.path.join(directory, v)) for k, v in names.items()}
  missing = [f for f in files.values() if not os.path.exists(f)]
  if missing:
    raise SystemExit(f"error: --certificates {directory}: missing {missing}")
  return files


def _is_loopback(host: str) -> bool:
  import ipaddress

  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


def local_address() -> str:
  """The address this host's own clients (the ``flwr`` CLI, port checks) use to reach the SuperLink."""
  return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(FLAGS.host, FLAGS.host)


def admin_hosts() -> list[str]:
  """Peers that may use the Control and Runtime APIs: ``--admin_hosts``, else loopback and a specific ``--host``
  (the ServerApp's process and the ``flwr`` CLI connect to it from this host)."""
  from fedjax_med.deploy.superlink import LOOPBACK

  if FLAGS.admin_hosts:
    return list(FLAGS.admin_hosts)
  local = local_address().strip("[]")
  return [*LOOPBACK, *([local] if local not in LOOPBACK and local != "localhost" else [])]


def superlink_command() -> list[str]:
  cmd = [sys.executable, "-m", "fedjax_med.deploy.superlink", "--admin_hosts", ",".join(admin_hosts()), "--",
         "--host", FLAGS.host, "--port", str(FLAGS.port), "--database", ":flwr-in-memory:", "--isolation", "subprocess"]
  if FLAGS.certificates:
    tls = _tls_files(FLAGS.certificates, server=True)
    cmd += ["--ssl-ca-certfile", tls["ca"], "--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"]]
  else:
    cmd += ["--insecure"]
  if FLAGS.auth_keys:
    cmd += ["--enable-supernode-auth"]
  return cmd


def supernode_command(site: int, data: str) -> list[str]:
  node_config = f'site={site} data="{os.path.abspath(data) if data else ""}"'
  cmd = [_executable("flower-supernode"), "--superlink", FLAGS.superlink, "--node-config", node_config,
         "--port", str(FLAGS.clientappio_port), "--isolation", "subprocess", "--max-retries", "20",
         "--max-wait-time", "120"]
  if FLAGS.certificates:
    cmd += ["--root-certificates", _tls_files(FLAGS.certificates, server=False)["ca"]]
  else:
    cmd += ["--insecure"]
  if FLAGS.auth_key:
    cmd += ["--auth-supernode-private-key", os.path.abspath(FLAGS.auth_key)]
  return cmd


def write_cli_home(home: str) -> dict[str, str]:
  """A private FLWR_HOME whose default connection is this server's Control API; returns the environment."""
  os.makedirs(home, exist_ok=True)
  host = local_address()
  host = f"[{host}]" if ":" in host else host
  lines = ["[superlink]", 'default = "fedjax"', "", "[superlink.fedjax]", f'address = "{host}:{FLAGS.port}"']
  if FLAGS.certificates:
    lines.append(f'root-certificates = "{_tls_files(FLAGS.certificates, server=False)["ca"]}"')
  else:
    lines.append("insecure = true")
  with open(os.path.join(home, "config.toml"), "w") as f:
    f.write("\n".join(lines) + "\n")
  # these would start Flower's legacy gRPC Control / Fleet servers on ports of their own, outside deploy.superlink
  env = {k: v for k, v in os.environ.items()
         if k not in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")}
  return flower_environment({**env, "FLWR_HOME": home})


def _flwr(args: list[str], env: dict[str, str], timeout: float | None = None, check: bool = True):
  result = subprocess.run([_executable("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode:
    raise SystemExit(f"error: flwr {' '.join(args[:2])} failed: {(result.stderr or result.stdout).strip()[-800:]}")
  return result


def _wait_for_port(port: int, process: subprocess.Popen, log: str, seconds: float = 60.0) -> None:
  import socket

  from fedjax_med.deploy.superlink import GUARD_LINE

  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise SystemExit(f"error: flower-superlink exited with status {process.returncode}; see {log}")
    try:
      with socket.create_connection((local_address().strip("[]"), port), timeout=2):
        break
    except OSError:
      time.sleep(0.5)
  else:
    raise SystemExit(f"error: flower-superlink did not open port {port} within {seconds:.0f} s")
  with open(log) as f:
    if GUARD_LINE not in f.read():  # the app is built (and guarded) before the port opens
      raise SystemExit(f"error: the SuperLink started without deploy.superlink's guard of its Control API; see {log}")


def register_sites(keys_dir: str, env: dict[str, str]) -> dict[int, dict[str, object]]:
  """Registers each ``keys_dir/site_K.pub`` with the SuperLink; returns site -> {node_id, public_key, key_file}."""
  from fedjax_med.deploy import registry

  names = sorted(f for f in os.listdir(keys_dir) if f.endswith(".pub"))
  if not names:
    raise SystemExit(f"error: --auth_keys {keys_dir} holds no *.pub key")
  try:
    files = {registry.site_of_key_file(name): os.path.join(os.path.abspath(keys_dir), name) for name in names}
  except ValueError as e:
    raise SystemExit(f"error: --auth_keys: {e}") from None
  sites = {}
  for site, path in sorted(files.items()):
    result = _flwr(["supernode", "register", path, "--format", "json"], env, timeout=60)
    try:
      node_id = int(json.loads(result.stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
      raise SystemExit(f"error: flwr supernode register {path}: no node id in {result.stdout.strip()[-400:]!r}"
                       ) from None
    with open(path) as f:
      sites[site] = {"node_id": node_id, "public_key": f.read().strip(), "key_file": path}
  return sites


def _check_security_flags() -> dict[int, int]:
  """Refuses an open server without authentication and missing caps; returns the caps (site -> examples)."""
  from fedjax_med.deploy import registry

  if not _is_loopback(FLAGS.host) and not (FLAGS.certificates and FLAGS.auth_keys):
    raise SystemExit(f"error: --host {FLAGS.host} lets other hosts connect: it needs --certificates and --auth_keys "
                     "(otherwise anyone who reaches the port joins as any site)")
  try:
    caps = registry.parse_caps(FLAGS.max_examples)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if FLAGS.auth_keys and FLAGS.config.aggregation.weighting == "num_examples":
    try:
      sites = {registry.site_of_key_file(f) for f in os.listdir(FLAGS.auth_keys) if f.endswith(".pub")}
    except (OSError, ValueError) as e:
      raise SystemExit(f"error: --auth_keys: {e}") from None
    if missing := sorted(sites - set(caps)):
      raise SystemExit(f"error: aggregation.weighting='num_examples' weights each site by the example count it "
                       f"reports; give each site's cap with --max_examples K=N (missing for sites {missing}), or "
                       "use --config.aggregation.weighting=uniform")
  return caps


def serve() -> int:
  """Starts the SuperLink, submits this run, streams its logs; returns 0 when every round was aggregated."""
  from fedjax_med.deploy import registry
  from fedjax_med.deploy.flower_apps import CONFIG_FILE, STATUS_FILE

  if FLAGS.config is None or not FLAGS.workdir:
    raise SystemExit("error: server needs --config and --workdir")
  caps = _check_security_flags()
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  for name, text in ((CONFIG_FILE, FLAGS.config.to_json_best_effort()), ("flower_app/pyproject.toml", APP_PYPROJECT)):
    os.makedirs(os.path.dirname(os.path.join(workdir, name)), exist_ok=True)
    with open(os.path.join(workdir, name), "w") as f:
      f.write(text)
  status = os.path.join(workdir, STATUS_FILE)
  for stale in (status, os.path.join(workdir, registry.REGISTRY_FILE)):
    if os.path.exists(stale):
      os.remove(stale)
  env = write_cli_home(os.path.join(workdir, "flwr_home"))
  log_path = os.path.join(workdir, "superlink.log")
  log_file = open(log_path, "w")  # noqa: SIM115 - open for the link's lifetime
  link = subprocess.Popen(superlink_command(), stdout=log_file, stderr=subprocess.STDOUT, env=env)
  try:
    _wait_for_port(FLAGS.port, link, log_path)
    sites = register_sites(FLAGS.auth_keys, env) if FLAGS.auth_keys else {}
    registry.write(workdir, sites, caps, authenticated=bool(FLAGS.auth_keys))
    print(f"{READY} on {FLAGS.host}:{FLAGS.port}" + (f" ({len(sites)} site keys registered)" if sites else ""),
          flush=True)
    # the ServerApp's own record is the status file read below, not flwr's exit status
    subprocess.run([_executable("flwr"), "run", os.path.join(workdir, "flower_app"), "--stream",
                    "--run-config", f'workdir="{workdir}"'], env=env, timeout=FLAGS.timeout or None)
  finally:
    link.terminate()
    try:
      link.wait(timeout=30)
    except subprocess.TimeoutExpired:
      link.kill()
    log_file.close()
  if not os.path.exists(status):
    print(f"error: the run ended without a status ({status}); see {workdir}/superlink.log", file=sys.stderr)
    return 2
  with open(status) as f:
    record = json.load(f)
  for node, reason in sorted(record.get("refused", {}).items()):
    print(f"refused node {node}: {reason}", file=sys.stderr)
  if record["state"] != "finished":
    print(f"error: {record['message']}", file=sys.stderr)
    return 2
  print(f"deployment finished: {record['rounds']} rounds, sites {record['sites']}; global variables in {workdir}")
  return 0


def join() -> int:
  """Runs this site's SuperNode in the foreground until it is stopped."""
  if FLAGS.site is None:
    raise SystemExit("error: client needs --site K (its index in the config's partition)")
  if FLAGS.data and not os.path.exists(FLAGS.data):
    raise SystemExit(f"error: --data {FLAGS.data} does not exist")
  return subprocess.call(supernode_command(FLAGS.site, FLAGS.data), env=flower_environment(os.environ))


def main(argv: list[str]) -> int:
  commands = {"server": serve, "client": join}
  if len(argv) != 2 or argv[1] not in commands:
    raise SystemExit(textwrap.dedent(f"""\
        usage: python -m fedjax_med.deploy.flower {{server,client}} [flags]; got {argv[1:]}
        see python -m fedjax_med.deploy.flower --help"""))
  return commands[argv[1]]()


if __name__ == "__main__":
  app.run(main)
