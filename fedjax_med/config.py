"""Validation of run configs: one clear error naming the key and what is allowed."""

from __future__ import annotations

import difflib
import json
from typing import Any

import ml_collections

from fedjax_med import algorithms
from fedjax_med.data.format import SPLITS
from fedjax_med.data.partition import PARTITIONERS
from fedjax_med.data.pipeline import BATCH_MODES
from fedjax_med.engine.aggregation import SERVER_OPTIMIZERS
from fedjax_med.engine.execution import STRATEGIES, WEIGHTINGS
from fedjax_med.tasks import TASKS

CLIENT_OPTIMIZERS = ("sgd", "adam", "adamw")
NONFINITE_POLICIES = ("skip", "stop")

CHOICES: dict[str, tuple] = {
    "task.name": TASKS,
    "partition.method": PARTITIONERS,
    "data.batch_mode": BATCH_MODES,
    "data.loader": ("device", "grain"),
    "client.optimizer": CLIENT_OPTIMIZERS,
    "server.optimizer": SERVER_OPTIMIZERS,
    "aggregation.weighting": WEIGHTINGS,
    "aggregation.nonfinite": NONFINITE_POLICIES,
    "execution.strategy": (*STRATEGIES, "auto"),
    "algorithm.batch_stats": ("average", "local"),  # FedAvg's (an algorithm's keys are checked when it has them)
    "eval.select_mode": ("max", "min"),
}
POSITIVE = ("num_rounds", "client.batch_size", "client.learning_rate", "partition.num_clients", "eval.every",
            "eval.batch_size", "checkpoint.every", "checkpoint.keep")
NON_NEGATIVE = ("client.local_steps", "client.local_epochs", "aggregation.clients_per_round", "algorithm.prox_mu",
                "client.weight_decay", "server.learning_rate", "execution.calibration_budget_s")
# Keys that may change between a run and its resumption without changing its results.
RESUMABLE_CHANGES = ("num_rounds", "overwrite", "execution", "eval", "log", "checkpoint", "deploy")


class ConfigError(ValueError):
  """A config key has a value that is not allowed."""


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config key {dotted!r} is missing; this config has {sorted(node.keys())} at that level")
    node = node[part]
  return node


def applies(config: ml_collections.ConfigDict, dotted: str) -> bool:
  """False for an ``algorithm.*`` key the config's algorithm does not have (each algorithm has its own keys)."""
  section, _, key = dotted.partition(".")
  return section != "algorithm" or key in config.algorithm


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value is not allowed; ValueError (``algorithms.check_config``)
  for a ``config.algorithm`` key the chosen algorithm does not read, or a task loss weight set where it is unread."""
  algorithms.check_config(config)
  for key, allowed in CHOICES.items():
    if not applies(config, key):
      continue
    value = get(config, key)
    if value not in allowed:
      close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"config.{key}={value!r} is not allowed; allowed: {list(allowed)}.{hint}")
  for key in POSITIVE:
    if not get(config, key) > 0:
      raise ConfigError(f"config.{key} must be > 0; got {get(config, key)!r}")
  for key in NON_NEGATIVE:
    if applies(config, key) and not get(config, key) >= 0:
      raise ConfigError(f"config.{key} must be >= 0; got {get(config, key)!r}")
  if (config.client.local_steps > 0) == (config.client.local_epochs > 0):
    raise ConfigError("exactly one of config.client.local_steps and config.client.local_epochs must be > 0; got "
                      f"local_steps={config.client.local_steps}, local_epochs={config.client.local_epochs}")
  bad = [c for c in config.execution.candidates if c not in STRATEGIES]
  if bad or not config.execution.candidates:
    raise ConfigError(f"config.execution.candidates={tuple(config.execution.candidates)} must be a non-empty subset "
                      f"of {STRATEGIES}")
  check_selection(config)
  if config.partition.only_client >= config.partition.num_clients:
    raise ConfigError(f"config.partition.only_client={config.partition.only_client} must be < "
                      f"partition.num_clients={config.partition.num_clients} (or -1 for all clients)")


def check_selection(config: ml_collections.ConfigDict) -> None:
  """``eval.select_on``: a split other than the evaluation split and test, scored with the global model."""
  split = config.eval.select_on
  if not split:
    return
  if split == "test" or split == config.data.eval_split or split not in SPLITS:
    raise ConfigError(f"config.eval.select_on={split!r} must name a split other than the evaluation split "
                      f"(data.eval_split={config.data.eval_split!r}) and 'test', e.g. 'val'; splits: {list(SPLITS)}")
  unsupported = {"eval.per_client=True": config.eval.per_client, "data.name='tfds'": config.data.name == "tfds",
                 "data.cls_source": bool(config.data.cls_source.name)}
  for what, present in unsupported.items():
    if present:
      raise ConfigError(f"config.eval.select_on={split!r} selects the global model on one split of data.root; it is "
                        f"not available with {what} (set eval.select_on='')")


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The part of the config that determines results (what a resumed run must share)."""
  as_dict = json.loads(config.to_json_best_effort())
  return {k: v for k, v in as_dict.items() if k not in RESUMABLE_CHANGES}


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two nested dicts."""
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out
