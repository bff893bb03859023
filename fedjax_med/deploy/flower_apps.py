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
* server -> site, ``query`` / site -> server ``metrics`` {``site``}: which SuperNode is which site.
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
from fedjax_med.deploy import site as site_lib
from fedjax_med.logging_utils import MetricsWriter, to_python

log = logging.getLogger("fedjax_med")
STATUS_FILE = "deploy_status.json"
CONFIG_FILE = "deploy_config.json"
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


def _discover(grid: Grid, min_sites: int, timeout: float) -> dict[int, int]:
  """site -> node id of the connected SuperNodes, waiting up to ``timeout`` s for ``min_sites`` of them."""
  deadline, sites = time.monotonic() + timeout, {}
  while time.monotonic() < deadline:
    nodes = [n for n in grid.get_node_ids() if n not in sites.values()]
    if nodes:
      queries = [Message(content=RecordDict(), message_type="query", dst_node_id=n) for n in nodes]
      for reply in grid.send_and_receive(queries, timeout=min(30.0, timeout)):
        if not reply.has_error():
          sites[int(reply.content["metrics"]["site"])] = reply.metadata.src_node_id
    if len(sites) >= min_sites:
      return sites
    time.sleep(1.0)
  raise RuntimeError(f"only {len(sites)} site(s) {sorted(sites)} connected within {timeout:.0f} s; the first round "
                     f"waits for {min_sites} (deploy.start_sites / deploy.min_clients)")


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
  workdir = str(context.run_config["workdir"])
  try:
    _serve(grid, workdir)
  except Exception as e:  # the CLI reads the status file and prints one line
    _status(workdir, "failed", f"{type(e).__name__}: {e}")
    raise


def _serve(grid: Grid, workdir: str) -> None:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config_json = f.read()
  config = ml_collections.ConfigDict(json.loads(config_json))
  deploy = config.deploy
  coordinator = site_lib.Coordinator(config)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep)
  start = checkpointer.latest_round() or 0
  if start:
    state, _ = checkpointer.restore(start, {"server": coordinator.server_state})
    coordinator.server_state = state["server"]
    log.info("resumed the server state of %s at round %d", workdir, start)
  # the first round waits for start_sites (e.g. every hospital of the study); later rounds need min_clients replies
  sites = _discover(grid, max(deploy.get("start_sites", 0), deploy.min_clients), deploy.connect_timeout)
  writer = MetricsWriter(workdir, start, tensorboard=False)
  try:
    for round_num in range(start, config.num_rounds):
      tick = time.perf_counter()
      wanted = [s for s in coordinator.selected_sites(round_num) if s in sites]
      server_arrays = site_lib.to_arrays(coordinator.server_state)
      messages = [Message(content=_train_content(config_json, round_num, server_arrays), message_type="train",
                          dst_node_id=sites[s]) for s in wanted]
      replies = [r for r in grid.send_and_receive(messages, timeout=deploy.round_timeout) if not r.has_error()]
      got = [site_lib.Reply(int(r.content["metrics"]["site"]), r.content["message"].to_numpy_ndarrays(),
                            int(r.content["metrics"]["num_examples"]),
                            {k: float(v) for k, v in r.content["metrics"].items() if k not in ("site",)})
             for r in replies if set(r.content.keys()) >= set(REPLY_KEYS)]
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
                    "missing": missing, "server": server_metrics,
                    "train": {k: float(np.mean([r.metrics[k] for r in got if k in r.metrics])) for k in keys}})
      if done % config.checkpoint.every == 0 or done == config.num_rounds:
        checkpointer.save(done, {"server": coordinator.server_state}, {"deploy": "flower"})
  finally:
    writer.close()
    checkpointer.close()
  variables = coordinator.exp.algorithm.eval_variables(coordinator.server_state, None)
  train.save_global_variables(workdir, variables)
  _status(workdir, "finished", rounds=int(coordinator.server_state.round), sites=to_python(sorted(sites)))
