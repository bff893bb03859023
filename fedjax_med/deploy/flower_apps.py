"""The Flower ServerApp and ClientApp of a fedjax_med deployment (flwr >= 1.42, the Message API).

Started by ``python -m fedjax_med.deploy.flower`` (see there); the apps are referenced from the generated app
directory's ``pyproject.toml`` as ``fedjax_med.deploy.flower_apps:server_app`` / ``client_app``.

Wire protocol (everything else stays where it is):

* server -> site, ``train``: ``config`` (ConfigRecord: the run's config as JSON, the round) and ``server`` (ArrayRecord:
  the server state's leaves: global variables, server optimizer state, round counter, run key, algorithm state);
* site -> server: ``message`` (ArrayRecord: the algorithm's message leaves, e.g. a model delta) and ``metrics``
  (MetricRecord: ``site``, ``num_examples`` and the local training metrics). The site's data and persistent
  client state (personal layers, optimizer, teacher...) stay at the site, the state in the SuperNode's
  ``context.state``.
* server -> site, ``query`` / site -> server ``metrics`` {``site``}: which SuperNode is which site. With SuperNode
  authentication the server already knows (``deploy.registry``: the node id of each site's key) and the answer only
  has to agree; the server queries and trains only registered nodes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import ml_collections
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedjax_med import train
from fedjax_med.checkpoint import Checkpointer
from fedjax_med.deploy import registry as registry_lib
from fedjax_med.deploy import site as site_lib
from fedjax_med.logging_utils import MetricsWriter, to_python

log = logging.getLogger("fedjax_med")
STATUS_FILE = "deploy_status.json"
CONFIG_FILE = "deploy_config.json"
SERVER_LOG = "server_app.log"  # the ServerApp's own log (refused nodes, capped counts, missing sites)
REPLY_KEYS = ("message", "metrics")  # everything a site sends after training

client_app = ClientApp()
server_app = ServerApp()


# -- site -------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _trainer(config_json: str, data_root: str, site: int) -> site_lib.SiteTrainer:
  config = ml_collections.ConfigDict(json.loads(config_json))
  if data_root:
    config.data.root = data_root
  return site_lib.SiteTrainer(config, site)


def site_of(node_config) -> tuple[int, str]:
  if "site" not in node_config:
    raise ValueError("this SuperNode has no site: start it with --node-config 'site=K data=\"DIR\"'")
  return int(node_config["site"]), str(node_config.get("data", ""))


def site_reply(content: RecordDict, node_config, state: RecordDict) -> RecordDict:
  """A site's answer to ``train``: runs the local update and returns only the message and metrics."""
  site, data = site_of(node_config)
  trainer = _trainer(str(content["config"]["json"]), data, site)
  previous = state["client_state"].to_numpy_ndarrays() if "client_state" in state else None
  client_state, reply = trainer.train(content["server"].to_numpy_ndarrays(), previous)
  state["client_state"] = ArrayRecord(numpy_ndarrays=client_state)
  metrics = {k: v for k, v in reply.metrics.items() if np.isfinite(v)}
  return RecordDict({"message": ArrayRecord(numpy_ndarrays=reply.message),
                     "metrics": MetricRecord({**metrics, "site": site, "num_examples": reply.num_examples})})


@client_app.train()
def site_train(msg: Message, context: Context) -> Message:
  return Message(content=site_reply(msg.content, context.node_config, context.state), reply_to=msg)


@client_app.query()
def site_query(msg: Message, context: Context) -> Message:
  site, _ = site_of(context.node_config)
  return Message(content=RecordDict({"metrics": MetricRecord({"site": site})}), reply_to=msg)


# -- server -----------------------------------------------------------------------------------------------------------
def _status(workdir: str, state: str, message: str = "", **extra) -> None:
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"state": state, "message": message, **extra}, f, indent=1)
  os.replace(path + ".tmp", path)


def _train_content(config_json: str, round_num: int, server_arrays: list[np.ndarray]) -> RecordDict:
  """What the server sends a site in a round (one RecordDict per message)."""
  return RecordDict({"config": ConfigRecord({"json": config_json, "round": round_num}),
                     "server": ArrayRecord(numpy_ndarrays=server_arrays)})


class Refusals:
  """Nodes the server refused for this run (node id -> reason); each is logged once and never sent work again."""

  def __init__(self):
    self.reasons: dict[int, str] = {}

  def add(self, node_id: int, reason: str) -> None:
    if int(node_id) not in self.reasons:
      log.warning("refused node %d: %s", node_id, reason)
      self.reasons[int(node_id)] = reason

  def __contains__(self, node_id) -> bool:
    return int(node_id) in self.reasons

  def to_json(self) -> dict[str, str]:
    return {str(k): v for k, v in sorted(self.reasons.items())}


def _reported_site(metrics) -> int:
  """The site number a node reports; ValueError if it is not a whole number."""
  value = float(metrics["site"])
  if not np.isfinite(value) or value != int(value):
    raise ValueError(f"reports site {value!r}")
  return int(value)


def _discover(grid: Grid, registry: registry_lib.Registry, clients: int, min_sites: int, timeout: float,
              refusals: Refusals) -> dict[int, int]:
  """site -> node id of the connected sites, waiting up to ``timeout`` s for ``min_sites`` of them.

  With authentication a node counts only if its node id is one the operator's keys were registered under, and only
  as its key's site: a node reporting another site is refused, an unregistered one is never sent anything. Without,
  a node is the site it reports (the first node to report a site keeps it).
  """
  deadline, sites = time.monotonic() + timeout, {}
  while time.monotonic() < deadline:
    nodes = []
    for n in grid.get_node_ids():
      if n in sites.values() or n in refusals:
        continue
      if registry.authenticated and registry.site_of(n) is None:
        refusals.add(n, "its key is not one the operator registered (--auth_keys); it is sent nothing")
        continue
      nodes.append(n)
    if nodes:
      queries = [Message(content=RecordDict(), message_type="query", dst_node_id=n) for n in nodes]
      for reply in grid.send_and_receive(queries, timeout=min(30.0, timeout)):
        if reply.has_error():
          continue
        node = reply.metadata.src_node_id
        try:
          reported = _reported_site(reply.content["metrics"])
        except (KeyError, TypeError, ValueError) as e:
          refusals.add(node, f"its answer names no site ({type(e).__name__}: {e})")
          continue
        if registry.authenticated:
          if reported != registry.site_of(node):
            refusals.add(node, f"its key is site {registry.site_of(node)}'s but it reports site {reported}")
            continue
        elif not 0 <= reported < clients:
          refusals.add(node, f"reports site {reported}, not a client of this config (0..{clients - 1})")
          continue
        elif reported in sites:
          refusals.add(node, f"reports site {reported}, which node {sites[reported]} joined as first")
          continue
        sites[reported] = node
    if len(sites) >= min_sites:
      return sites
    time.sleep(1.0)
  raise RuntimeError(f"only {len(sites)} site(s) {sorted(sites)} connected within {timeout:.0f} s; the first round "
                     f"waits for {min_sites} (deploy.start_sites / deploy.min_clients)")


def accept_reply(content: RecordDict, site: int, cap: int | None) -> tuple[site_lib.Reply, bool]:
  """The reply of the node that is ``site`` (known from its key, not from the reply), with its example count
  capped at ``cap``; returns (reply, whether the count was capped). ValueError if the node reports another site or
  a count that is not a whole number >= 0."""
  metrics = content["metrics"]
  reported = _reported_site(metrics)
  if reported != site:
    raise ValueError(f"it is site {site} but its reply reports site {reported}")
  count = float(metrics["num_examples"])
  if not np.isfinite(count) or count < 0 or count != int(count):
    raise ValueError(f"site {site} reports {count!r} examples")
  capped = cap is not None and count > cap
  count = min(int(count), cap) if cap is not None else int(count)
  scalars = {k: float(v) for k, v in metrics.items() if k != "site"}
  scalars["num_examples"] = float(count)
  return site_lib.Reply(site, content["message"].to_numpy_ndarrays(), count, scalars), capped


def _log_to(workdir: str) -> logging.Handler:
  handler = logging.FileHandler(os.path.join(workdir, SERVER_LOG))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  handler.setLevel(logging.INFO)
  log.addHandler(handler)
  if log.getEffectiveLevel() > logging.INFO:
    log.setLevel(logging.INFO)
  return handler


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
  workdir = str(context.run_config["workdir"])
  refusals = Refusals()
  handler = _log_to(workdir)
  try:
    _serve(grid, workdir, refusals)
  except Exception as e:  # the CLI reads the status file and prints one line
    _status(workdir, "failed", f"{type(e).__name__}: {e}", refused=refusals.to_json())
    raise
  finally:
    log.removeHandler(handler)
    handler.close()


def _serve(grid: Grid, workdir: str, refusals: Refusals) -> None:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config_json = f.read()
  config = ml_collections.ConfigDict(json.loads(config_json))
  deploy = config.deploy
  registry = registry_lib.read(workdir)
  coordinator = site_lib.Coordinator(config)
  clients = len(coordinator.exp.client_datasets)
  if unknown := sorted(set(registry.node_site.values()) - set(range(clients))):
    raise ValueError(f"keys registered for sites {unknown}, which are not clients of this config (0..{clients - 1})")
  if not registry.authenticated:
    log.warning("no SuperNode authentication (--auth_keys): any node that reaches the server joins as the site it "
                "reports")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep)
  start = checkpointer.latest_round() or 0
  if start:
    state, _ = checkpointer.restore(start, {"server": coordinator.server_state})
    coordinator.server_state = state["server"]
    log.info("resumed the server state of %s at round %d", workdir, start)
  # the first round waits for start_sites (e.g. every hospital of the study); later rounds need min_clients replies
  sites = _discover(grid, registry, clients, max(deploy.get("start_sites", 0), deploy.min_clients),
                    deploy.connect_timeout, refusals)
  log.info("sites %s joined as nodes %s", sorted(sites), [sites[k] for k in sorted(sites)])
  writer = MetricsWriter(workdir, start, tensorboard=False)
  try:
    for round_num in range(start, config.num_rounds):
      tick = time.perf_counter()
      node_site = {node: site for site, node in sites.items() if node not in refusals}
      wanted = [s for s in coordinator.selected_sites(round_num) if s in sites and sites[s] in node_site]
      server_arrays = site_lib.to_arrays(coordinator.server_state)
      messages = [Message(content=_train_content(config_json, round_num, server_arrays), message_type="train",
                          dst_node_id=sites[s]) for s in wanted]
      got, capped = [], []
      for r in grid.send_and_receive(messages, timeout=deploy.round_timeout):
        node = r.metadata.src_node_id
        if r.has_error() or node not in node_site or not set(r.content.keys()) >= set(REPLY_KEYS):
          continue
        site = node_site[node]
        try:
          reply, was_capped = accept_reply(r.content, site, registry.caps.get(site))
          coordinator.check(reply)
        except (KeyError, TypeError, ValueError) as e:
          refusals.add(node, f"round {round_num + 1}: {e}")
          continue
        if was_capped:
          log.warning("round %d: site %d reported %s examples, more than its cap %d (--max_examples); weighted "
                      "as %d", round_num + 1, site, r.content["metrics"]["num_examples"], reply.num_examples,
                      reply.num_examples)
          capped.append(site)
        got.append(reply)
      got.sort(key=lambda r: r.site)
      missing = sorted(set(wanted) - {r.site for r in got})
      if len(got) < deploy.min_clients:
        raise RuntimeError(f"round {round_num + 1}: {len(got)} of {len(wanted)} sites replied (missing {missing}), "
                           f"fewer than deploy.min_clients={deploy.min_clients}; the server stops, the last global "
                           f"checkpoint (round {checkpointer.latest_round() or 0}) is kept in {workdir}/checkpoints")
      if missing:
        log.warning("round %d: site(s) %s did not reply; aggregating the %d others", round_num + 1, missing, len(got))
      _, server_metrics = coordinator.aggregate(got)
      done = round_num + 1
      keys = sorted({k for r in got for k in r.metrics})
      writer.write({"round": done, "seconds": time.perf_counter() - tick, "sites": [r.site for r in got],
                    "missing": missing, "capped": sorted(capped), "server": server_metrics,
                    "train": {k: float(np.mean([r.metrics[k] for r in got if k in r.metrics])) for k in keys}})
      if done % config.checkpoint.every == 0 or done == config.num_rounds:
        checkpointer.save(done, {"server": coordinator.server_state}, {"deploy": "flower"})
  finally:
    writer.close()
    checkpointer.close()
  variables = coordinator.exp.algorithm.eval_variables(coordinator.server_state, None)
  train.save_global_variables(workdir, variables)
  _status(workdir, "finished", rounds=int(coordinator.server_state.round), sites=to_python(sorted(sites)),
          refused=refusals.to_json())
