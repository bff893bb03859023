"""The server's record of which SuperNode is which site, written by the operator's command, read by the ServerApp.

``python -m fedjax_med.deploy.flower server --auth_keys DIR`` registers every ``DIR/site_K.pub`` with the SuperLink and
writes what Flower answered to ``WORKDIR/deploy_sites.json``: for each site K its public key and the node id Flower
gave that key. Flower authenticates every request of a SuperNode against its key's node id, so the node id is the
site's identity: the ServerApp talks only to these node ids, and a node's site is the one of its key, never the
number the node reports (a registered node reporting another site is refused).

The file also holds the operator's cap on each site's example count (``--max_examples K=N``): a site's aggregation
weight is the count it reports, at most its cap.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

REGISTRY_FILE = "deploy_sites.json"
KEY_NAME = re.compile(r"^site_(\d+)\.pub$")


def site_of_key_file(name: str) -> int:
  """``site_K.pub`` -> K; any other name is refused (the file name says which site a key belongs to)."""
  match = KEY_NAME.match(os.path.basename(name))
  if not match:
    raise ValueError(f"{name}: a site's public key must be named site_K.pub (K: its client index in the config)")
  return int(match.group(1))


def parse_caps(entries: Iterable[str]) -> dict[int, int]:
  """``["0=120", "1=80"]`` -> {0: 120, 1: 80}: the most examples each site may report."""
  caps = {}
  for entry in entries:
    site, sep, count = entry.partition("=")
    try:
      if not sep:
        raise ValueError
      caps[int(site)] = int(count)
    except ValueError:
      raise ValueError(f"--max_examples {entry!r}: expected K=N (site K reports at most N examples)") from None
    if caps[int(site)] < 1:
      raise ValueError(f"--max_examples {entry!r}: the cap must be at least 1")
  return caps


class Registry(NamedTuple):
  """authenticated: Flower checked each node's key (``--auth_keys``), so ``node_site`` binds node ids to sites;
  without it ``node_site`` is empty and any node may join as the site it reports.
  node_site: node id -> site of the key registered under that id.
  caps: site -> the most examples the site may report (absent: no cap).
  """

  authenticated: bool
  node_site: dict[int, int]
  caps: dict[int, int]

  def site_of(self, node_id: int) -> int | None:
    return self.node_site.get(int(node_id))


def write(workdir: str, sites: Mapping[int, Mapping[str, object]], caps: Mapping[int, int],
          authenticated: bool) -> str:
  """Writes the registry: ``sites`` maps site -> {"node_id", "public_key"} (empty without authentication)."""
  record = {"authenticated": authenticated,
            "sites": {str(k): {**dict(v), "max_examples": caps.get(k)} for k, v in sorted(sites.items())},
            "max_examples": {str(k): v for k, v in sorted(caps.items())}}
  path = os.path.join(workdir, REGISTRY_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)
  return path


def read(workdir: str) -> Registry:
  with open(os.path.join(workdir, REGISTRY_FILE)) as f:
    record = json.load(f)
  node_site = {int(v["node_id"]): int(k) for k, v in record["sites"].items()}
  if len(node_site) != len(record["sites"]):
    raise ValueError(f"{REGISTRY_FILE}: two sites share a node id")
  return Registry(bool(record["authenticated"]), node_site,
                  {int(k): int(v) for k, v in record["max_examples"].items()})
