"""Config-facing builders of the registered algorithms (the only place that reads config)."""

from __future__ import annotations

import ml_collections

from fedjax_med.algorithms import fedavg as fedavg_lib
from fedjax_med.algorithms import register
from fedjax_med.engine import aggregation
from fedjax_med.optimizers import client_optimizer


@register("fedavg")
def build_fedavg(config: ml_collections.ConfigDict, task, variables):
  """FedAvg family: every client is in the one cohort ``clients``."""
  algo = config.algorithm
  server = config.server
  algorithm = fedavg_lib.fedavg(
      task.loss_fn, client_optimizer(config.client),
      aggregation.server_optimizer(server.optimizer, server.learning_rate, server.momentum, server.b1, server.b2,
                                   server.eps),
      variables, prox_mu=algo.prox_mu, batch_stats=algo.batch_stats, local_params=algo.local_params,
      persist_optimizer=algo.persist_optimizer)
  return algorithm, lambda num_clients: ["clients"] * num_clients
