"""Config-facing builders of the registered algorithms (the only place that reads config)."""

from __future__ import annotations

import dataclasses

import ml_collections

from fedjax_med.algorithms import fcl as fcl_lib
from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import fedicra as fedicra_lib
from fedjax_med.algorithms import fedirm as fedirm_lib
from fedjax_med.algorithms import register
from fedjax_med.engine import aggregation
from fedjax_med.optimizers import client_optimizer


def server_optimizer(config: ml_collections.ConfigDict):
  server = config.server
  return aggregation.server_optimizer(server.optimizer, server.learning_rate, server.momentum, server.b1, server.b2,
                                      server.eps)


@register("fedavg")
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
  keys = [f.name for f in dataclasses.fields(hyper_cls) if f.name not in derived]
  missing = [k for k in keys if k not in algo]
  if missing:
    raise ValueError(f"config.algorithm lacks the {method} keys {missing}; start from {config_file}")
  return {k: algo[k] for k in keys}




@register("fedirm")
def build_fedirm(config: ml_collections.ConfigDict, task, variables, model):
  """FedIRM and its baselines: clients in ``partition.labeled_clients`` are ``labeled``, the rest ``unlabeled``."""
  del task, variables
  values = hyper_values(config.algorithm, fedirm_lib.Hyper, ("num_classes",), "FedIRM", "configs/fedirm.py")
  hp = fedirm_lib.Hyper(num_classes=model.num_classes, **values)
  algorithm = fedirm_lib.fedirm(model, client_optimizer(config.client), server_optimizer(config), hp)
  labeled = set(config.partition.labeled_clients)

  def roles(num_clients: int) -> list[str]:
    if not labeled:  # every client labeled (the upper bound)
      return ["labeled"] * num_clients
    return ["labeled" if c in labeled else "unlabeled" for c in range(num_clients)]

  return algorithm, roles


@register("fcl")
def build_fcl(config: ml_collections.ConfigDict, task, variables, model):
  """FCL pre-training and its contrastive baselines: every client is in the one cohort ``clients``."""
  del task, variables
  values = hyper_values(config.algorithm, fcl_lib.Hyper, ("num_clients", "projection_dim"), "FCL",
                        "configs/fcl_acdc.py")
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


@register("fedicra")
def build_fedicra(config: ml_collections.ConfigDict, task, variables, model):
  """FedICRA: every client (site) is in the one cohort ``clients``; its site index is its partition position."""
  if task.name != "weak_segmentation":
    raise ValueError(f"FedICRA needs config.task.name='weak_segmentation'; got {task.name!r}")
  values = hyper_values(config.algorithm, fedicra_lib.Hyper, ("num_sites", "image_mean", "image_std", "ignore_index"),
                        "FedICRA", "configs/fedicra_acdc.py")
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
