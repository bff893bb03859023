"""Config-facing builders of the registered algorithms (the only place that reads config).

Every builder declares what it reads of the config (:class:`Reads`): the ``config.algorithm`` keys it needs, the
ones it reads with a default, and whether its clients train on the task's loss. :func:`check_config` refuses a
key the chosen algorithm would ignore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from fedjax_med.algorithms import ALGORITHMS, get_algorithm
from fedjax_med.algorithms import fcl as fcl_lib
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedicra as fedicra_lib
from fedjax_med.algorithms import fedirm as fedirm_lib
from fedjax_med.engine import aggregation
from fedjax_med.optimizers import client_optimizer


def server_optimizer(config: ml_collections.ConfigDict):
  server = config.server
  return aggregation.server_optimizer(server.optimizer, server.learning_rate, server.momentum, server.b1, server.b2,
                                      server.eps)


@dataclasses.dataclass(frozen=True)
class Reads:
  """What an algorithm's builder reads of the config, besides ``config.algorithm.name``.

  Attributes:
    required: ``config.algorithm`` keys it reads; a config without one of them is refused.
    optional: ``config.algorithm`` keys it reads with a default when absent.
    task_loss: its clients train on the task's loss (``task.loss_fn``), so the task's loss weights
      (``config.task.crf_weight``, ...) are read; else it trains on its own loss and ignores them.
    method: the algorithm's name in errors.
    config_file: the config to start from.
  """

  required: tuple[str, ...]
  optional: tuple[str, ...] = ()
  task_loss: bool = False
  method: str = ""
  config_file: str = ""

  @property
  def allowed(self) -> tuple[str, ...]:
    return ("name", *self.required, *self.optional)


READS: dict[str, Reads] = {}
# Loss weights of config.task that some algorithms also have under config.algorithm: task key -> the task whose loss
# has that term. A task weight is only read when the algorithm trains on the task's loss and config.task.name is that
# task; FedICRA's gated CRF weight is config.algorithm.crf_weight, FedIRM's consistency weight
# config.algorithm.consistency_weight.
TASK_WEIGHTS = {"crf_weight": "weak_segmentation", "consistency_weight": "multitask"}


def register(name: str, reads: Reads) -> Callable:
  """Registers a builder under ``name`` together with what it reads of the config."""

  def decorator(builder):
    READS[name] = reads
    return ALGORITHMS.register(name)(builder)

  return decorator


def hyper_keys(hyper_cls, derived: tuple[str, ...]) -> tuple[str, ...]:
  """The fields of ``hyper_cls`` except ``derived`` (set by the builder): the ``config.algorithm`` keys it needs."""
  return tuple(f.name for f in dataclasses.fields(hyper_cls) if f.name not in derived)


def check_config(config: ml_collections.ConfigDict) -> None:
  """ValueError when ``config.algorithm`` holds a key the chosen algorithm does not read (naming the allowed keys)
  or lacks one it needs, or when a task loss weight of :data:`TASK_WEIGHTS` is non-zero where it is not read."""
  algo = config.algorithm
  name = algo.name
  get_algorithm(name)  # an unknown name: the available ones
  reads = READS[name]
  extra = sorted(k for k in algo if k not in reads.allowed)
  if extra:
    hints = [f"config.task.{k}" for k in extra if k in TASK_WEIGHTS and reads.task_loss]
    hint = f" (it reads the task's loss weight {', '.join(hints)})" if hints else ""
    raise ValueError(f"config.algorithm has keys that algorithm {name!r} does not read: {extra}{hint}; allowed "
                     f"keys of {name!r}: {sorted(reads.allowed)}")
  missing = [k for k in reads.required if k not in algo]
  if missing:
    raise ValueError(f"config.algorithm lacks the {reads.method} keys {missing}; start from {reads.config_file}")
  for key, task_name in TASK_WEIGHTS.items():
    value = config.task.get(key, 0.0)
    if not value or (reads.task_loss and config.task.name == task_name):
      continue
    if reads.task_loss:
      why = f"config.task.name={config.task.name!r} has no such term (only {task_name!r} has)"
    else:
      why = f"algorithm {name!r} trains on its own loss, not the task's"
      if key in reads.allowed:
        why += f" (its weight of that name is config.algorithm.{key})"
    raise ValueError(f"config.task.{key}={value!r} is not read: {why}; set config.task.{key}=0")


FEDAVG_READS = Reads(required=("prox_mu", "batch_stats", "local_params", "persist_optimizer"),
                     optional=("frozen", "frozen_rounds"), task_loss=True, method="FedAvg",
                     config_file="configs/fedavg.py")


@register("fedavg", FEDAVG_READS)
def build_fedavg(config: ml_collections.ConfigDict, task, variables, model):
  """FedAvg family: every client is in the one cohort ``clients``.

  The staged schedule's keys (``algorithm.frozen``, ``algorithm.frozen_rounds``, ``client.after_unfreeze_lr_scale``)
  are optional: configs without them (and the workdirs they made, whose fingerprint they are part of) keep
  training every variable at the client learning rate.
  """
  del model
  algo = config.algorithm
  schedule = fedavg_lib.Schedule(frozen=algo.get("frozen", ""), frozen_rounds=algo.get("frozen_rounds", 0),
                                 after_unfreeze_lr_scale=config.client.get("after_unfreeze_lr_scale", 1.0))
  algorithm = fedavg_lib.fedavg(
      task.loss_fn, client_optimizer(config.client),
      server_optimizer(config), variables, prox_mu=algo.prox_mu, batch_stats=algo.batch_stats,
      local_params=algo.local_params, persist_optimizer=algo.persist_optimizer, schedule=schedule)
  return algorithm, lambda num_clients: ["clients"] * num_clients


def hyper_values(algo: ml_collections.ConfigDict, hyper_cls, derived: tuple[str, ...], method: str,
                 config_file: str) -> dict:
  """``config.algorithm``'s values for the fields of ``hyper_cls`` except ``derived`` (set by the builder);
  ValueError naming the missing keys and the config to start from."""
  keys = hyper_keys(hyper_cls, derived)
  missing = [k for k in keys if k not in algo]
  if missing:
    raise ValueError(f"config.algorithm lacks the {method} keys {missing}; start from {config_file}")
  return {k: algo[k] for k in keys}


FEDIRM_DERIVED = ("num_classes",)
FCL_DERIVED = ("num_clients", "projection_dim")
FEDICRA_DERIVED = ("num_sites", "image_mean", "image_std", "ignore_index")


@register("fedirm", Reads(hyper_keys(fedirm_lib.Hyper, FEDIRM_DERIVED), method="FedIRM",
                          config_file="configs/fedirm.py"))
def build_fedirm(config: ml_collections.ConfigDict, task, variables, model):
  """FedIRM and its baselines: clients in ``partition.labeled_clients`` are ``labeled``, the rest ``unlabeled``."""
  del task, variables
  values = hyper_values(config.algorithm, fedirm_lib.Hyper, FEDIRM_DERIVED, "FedIRM", "configs/fedirm.py")
  hp = fedirm_lib.Hyper(num_classes=model.num_classes, **values)
  algorithm = fedirm_lib.fedirm(model, client_optimizer(config.client), server_optimizer(config), hp)
  labeled = set(config.partition.labeled_clients)

  def roles(num_clients: int) -> list[str]:
    if not labeled:  # every client labeled (the upper bound)
      return ["labeled"] * num_clients
    return ["labeled" if c in labeled else "unlabeled" for c in range(num_clients)]

  return algorithm, roles


@register("fcl", Reads(hyper_keys(fcl_lib.Hyper, FCL_DERIVED), method="FCL", config_file="configs/fcl_acdc.py"))
def build_fcl(config: ml_collections.ConfigDict, task, variables, model):
  """FCL pre-training and its contrastive baselines: every client is in the one cohort ``clients``."""
  del task, variables
  values = hyper_values(config.algorithm, fcl_lib.Hyper, FCL_DERIVED, "FCL", "configs/fcl_acdc.py")
  if config.data.batch_mode != "volume_partitions" or len(config.data.views) != 2:
    raise ValueError("FCL needs config.data.batch_mode='volume_partitions' and two config.data.views; got "
                     f"{config.data.batch_mode!r} and {tuple(config.data.views)}")
  if not hasattr(model, "projection_dim"):
    raise ValueError(f"FCL needs a model with a projection head (model.name='unet_encoder_projector'); got "
                     f"{config.model.name!r}")
  hp = fcl_lib.Hyper(num_clients=config.partition.num_clients, projection_dim=model.projection_dim,
                     **values)
  algorithm = fcl_lib.fcl(model, client_optimizer(config.client), server_optimizer(config), hp)
  return algorithm, lambda num_clients: ["clients"] * num_clients


@register("fedicra", Reads(hyper_keys(fedicra_lib.Hyper, FEDICRA_DERIVED), method="FedICRA",
                           config_file="configs/fedicra_acdc.py"))
def build_fedicra(config: ml_collections.ConfigDict, task, variables, model):
  """FedICRA: every client (site) is in the one cohort ``clients``; its site index is its partition position."""
  if task.name != "weak_segmentation":
    raise ValueError(f"FedICRA needs config.task.name='weak_segmentation'; got {task.name!r}")
  values = hyper_values(config.algorithm, fedicra_lib.Hyper, FEDICRA_DERIVED, "FedICRA", "configs/fedicra_acdc.py")
  if not hasattr(model, "num_sites"):
    raise ValueError(f"FedICRA needs model.name='unet_pcs' (site channel selection, aux heads); got "
                     f"{config.model.name!r}")
  hp = fedicra_lib.Hyper(num_sites=model.num_sites, image_mean=tuple(config.data.mean),
                         image_std=tuple(config.data.std), ignore_index=task.ignore_index, **values)
  if config.client.local_steps != hp.local_steps:
    raise ValueError(f"config.client.local_steps={config.client.local_steps} must equal algorithm.ala_steps + "
                     f"head_steps + body_steps = {hp.local_steps}")
  algorithm = fedicra_lib.fedicra(model, client_optimizer(config.client), server_optimizer(config), variables, hp)

  def roles(num_clients: int) -> list[str]:
    if num_clients != hp.num_sites:
      raise ValueError(f"FedICRA: {num_clients} clients but model.kwargs.num_sites={hp.num_sites}")
    return ["clients"] * num_clients

  return algorithm, roles
