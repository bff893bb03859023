"""Helpers shared by the configs: the data root and the baseline modes of a comparison."""

import os

import ml_collections


def data_file(relative: str) -> str:
  """``$FEDJAX_MED_DATA/relative`` when that variable is set, else '' (then pass --config.data.root)."""
  root = os.environ.get("FEDJAX_MED_DATA", "")
  return os.path.join(root, relative) if root else ""


def apply_mode(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  """Same-budget baselines of a federated config.

  ``fedavg`` leaves the config as it is. ``pooled`` trains one client on all training
  data and ``siteK`` trains client K alone; both run ``num_clients`` times as many
  rounds (of the same local steps), i.e. as many gradient steps as the whole
  federation takes. Rounds rather than local steps are multiplied so that the
  unrolled local-step program, and its compile time, stay the same size.
  """
  if mode in ("", "fedavg"):
    return config
  if mode == "pooled":
    config.partition.method = "pooled"
  elif mode.startswith("site") and mode[4:].isdigit():
    config.partition.only_client = int(mode[4:])
  else:
    last = config.partition.num_clients - 1
    raise ValueError(f"unknown config mode {mode!r}; allowed: fedavg, pooled, site0..site{last}")
  scale = config.partition.num_clients
  config.num_rounds *= scale
  config.eval.every *= scale
  config.checkpoint.every *= scale
  return config
