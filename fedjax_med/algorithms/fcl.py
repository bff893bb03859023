"""FCL: federated contrastive pre-training with feature exchange (Wu et al., MICCAI 2021, arXiv 2204.10983).

Every client holds unlabeled volumes; a batch takes one slice from each of the ``S`` positional partitions of
``B`` volumes (``data.batch_mode='volume_partitions'``, two augmented views). Per client:

* main encoder + projection head ``f_q`` (trained, FedAvg'd) and a momentum encoder ``f_k``
  (``theta_k <- m theta_k + (1 - m) theta_q`` after every step; it stays on the client and, by default,
  is never re-synced, as in MoCo; ``momentum_resync=True`` restarts it from the received global model at the
  start of every round);
* a local FIFO bank of momentum features with their partition ids (``bank_size``);
* a remote bank: the features the other clients sent in the previous round (``exchange_size`` most recent
  entries of each client's bank), handed out by the server. Only these low-dimensional features and the
  model delta leave a client.

Loss of a query ``q = f_q(view 1)`` of partition ``s`` (``losses.contrastive.positive_pair_loss``):

* local: positives = local keys (this batch's ``f_k(view 2)`` and the local bank) of partition ``s``;
  negatives = local and remote keys of other partitions;
* remote: positives = remote keys of partition ``s``; negatives = remote keys of other partitions;

``loss = local + remote_weight * remote``. ``exchange=False`` drops the remote bank (the "local contrastive
learning without exchange" baseline); ``loss='simclr'`` is FedSimCLR (instance InfoNCE between the two views,
no bank). A client recognises its own features in the remote pool by a random tag drawn at ``client_init``.
The client optimizer's state stays on the client across rounds (``persist_optimizer=True``, the default) or
starts afresh every round (``False``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_med.algorithms.common import (
  apply_train,
  ema,
  global_variables,
  initial_server_state,
  model_delta,
  split_state,
)
from fedjax_med.algorithms.fedavg import averaging_server_update
from fedjax_med.engine.types import ClientResults, CohortSpec, FederatedAlgorithm, ServerState
from fedjax_med.losses import contrastive

LOSSES = ("fcl", "simclr")


@dataclasses.dataclass(frozen=True)
class Hyper:
  """FCL hyper-parameters (static); defaults and their sources in ``configs/fcl_acdc.py``."""

  num_clients: int
  projection_dim: int
  loss: str = "fcl"
  temperature: float = 0.1
  momentum: float = 0.99
  momentum_resync: bool = False
  bank_size: int = 256
  exchange_size: int = 128
  remote_weight: float = 1.0
  exchange: bool = True
  persist_optimizer: bool = True  # the client optimizer state is kept across rounds (False: re-initialised)

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"config.algorithm.loss={self.loss!r} is not allowed; allowed: {list(LOSSES)}")
    if not 0 < self.exchange_size <= self.bank_size:
      raise ValueError(f"config.algorithm.exchange_size must be in (0, bank_size={self.bank_size}]; "
                       f"got {self.exchange_size}")
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"config.algorithm.momentum must be in [0, 1); got {self.momentum}")


def _project(model: nn.Module, params, state, images, rng):
  """Train-mode projection ``[N, D]`` and the new batch statistics."""
  out, state = apply_train(model, params, state, images, rng)
  return out["projection"], state


def empty_bank(size: int, dim: int) -> dict:
  return {"features": jnp.zeros((size, dim)), "partition": jnp.full((size,), -1, jnp.int32),
          "valid": jnp.zeros((size,)), "ptr": jnp.zeros((), jnp.int32)}


def enqueue(bank: dict, features: jax.Array, partition: jax.Array) -> dict:
  """FIFO write of ``features [N, D]`` (L2-normalised) at the bank pointer, wrapping around."""
  size = bank["features"].shape[0]
  index = (bank["ptr"] + jnp.arange(features.shape[0])) % size
  return {"features": bank["features"].at[index].set(contrastive.l2_normalize(features)),
          "partition": bank["partition"].at[index].set(partition),
          "valid": bank["valid"].at[index].set(1.0), "ptr": (bank["ptr"] + features.shape[0]) % size}


def most_recent(bank: dict, count: int) -> dict:
  """The ``count`` most recently written entries (oldest first)."""
  size = bank["features"].shape[0]
  index = (bank["ptr"] - count + jnp.arange(count)) % size
  return {k: bank[k][index] for k in ("features", "partition", "valid")}


def fcl_losses(queries, partition, keys, local_bank, remote, hp: Hyper) -> tuple[jax.Array, jax.Array]:
  """(local, remote) losses of ``queries [N, D]`` given this batch's ``keys [N, D]``, the local bank and the
  flattened remote bank (``valid`` already zero for the client's own features and when exchange is off)."""
  n = keys.shape[0]
  all_keys = jnp.concatenate([keys, local_bank["features"], remote["features"]])
  labels = jnp.concatenate([partition, local_bank["partition"], remote["partition"]])
  is_local = jnp.concatenate([jnp.ones(n), local_bank["valid"], jnp.zeros_like(remote["valid"])])
  valid = jnp.concatenate([jnp.ones(n), local_bank["valid"], remote["valid"]])
  local = contrastive.positive_pair_loss(queries, partition, all_keys, labels, is_local, valid, hp.temperature)
  remote_loss = contrastive.positive_pair_loss(queries, partition, remote["features"], remote["partition"],
                                               remote["valid"], remote["valid"], hp.temperature)
  return local, remote_loss


def client_cohort(model: nn.Module, tx: optax.GradientTransformation, hp: Hyper) -> CohortSpec:
  def client_init(variables, rng):
    params, state = split_state(variables)
    client_state = {"momentum_params": params, "momentum_state": state,
                    "bank": empty_bank(hp.bank_size, hp.projection_dim), "tag": jax.random.bits(rng, (2,), jnp.uint32)}
    if hp.persist_optimizer:
      client_state["opt_state"] = tx.init(params)
    return client_state

  def start(server_state: ServerState, client_state, rng):
    del rng
    params, state = split_state(server_state.params)
    pool = server_state.extra
    mine = jnp.all(pool["tag"] == client_state["tag"], axis=-1)  # [K]
    keep = pool["valid"] * (~mine)[:, None] * float(hp.exchange)
    remote = {"features": pool["features"].reshape(-1, hp.projection_dim),
              "partition": pool["partition"].reshape(-1), "valid": keep.reshape(-1)}
    if hp.momentum_resync:  # the momentum encoder restarts from the global model just received
      momentum_params, momentum_state = params, state
    else:
      momentum_params, momentum_state = client_state["momentum_params"], client_state["momentum_state"]
    opt_state = client_state["opt_state"] if hp.persist_optimizer else tx.init(params)
    return {"params": params, "state": state, "opt_state": opt_state,
            "momentum_params": momentum_params, "momentum_state": momentum_state,
            "bank": client_state["bank"], "remote": remote}

  def loss_fn(params, state, batch, rng, local):
    k1, k2 = jax.random.split(rng)
    queries, state = _project(model, params, state, batch["images"], k1)
    if hp.loss == "simclr":
      views2, state = _project(model, params, state, batch["images_2"], k2)
      loss = contrastive.info_nce(queries, views2, hp.temperature)
      return loss, (state, None, {"loss": loss})
    keys, _ = _project(model, local["momentum_params"], local["momentum_state"], batch["images_2"], k2)
    keys = jax.lax.stop_gradient(contrastive.l2_normalize(keys))
    local_loss, remote_loss = fcl_losses(queries, batch["partition"], keys, local["bank"], local["remote"], hp)
    loss = local_loss + hp.remote_weight * remote_loss
    return loss, (state, keys, {"loss": loss, "local_loss": local_loss, "remote_loss": remote_loss,
                                "remote_keys": jnp.sum(local["remote"]["valid"])})

  def step(local, batch, rng):
    grads, (state, keys, metrics) = jax.grad(loss_fn, has_aux=True)(local["params"], local["state"], batch, rng,
                                                                     local)
    updates, opt_state = tx.update(grads, local["opt_state"], local["params"])
    params = optax.apply_updates(local["params"], updates)
    new = {**local, "params": params, "state": state, "opt_state": opt_state}
    if hp.loss == "fcl":
      new["momentum_params"] = ema(local["momentum_params"], params, hp.momentum)
      new["momentum_state"] = state  # running statistics only matter for evaluation
      new["bank"] = enqueue(local["bank"], keys, batch["partition"])
    return new, metrics

  def finish(server_state: ServerState, client_state, local):
    sent = most_recent(local["bank"], hp.exchange_size)
    new_state = {**client_state, "momentum_params": local["momentum_params"],
                 "momentum_state": local["momentum_state"], "bank": local["bank"]}
    if hp.persist_optimizer:
      new_state["opt_state"] = local["opt_state"]
    message = {"delta": model_delta(server_state, local)}
    if hp.exchange and hp.loss == "fcl":
      message["features"] = {**sent, "tag": client_state["tag"]}
    return new_state, message, {}

  return CohortSpec(client_init, start, step, finish)


def update_pool(pool: dict, result: ClientResults) -> dict:
  """The server's remote pool with the slots of the clients in ``result`` replaced by what they sent; a
  client left out (zero weight, e.g. non-finite) keeps its previous slot."""
  sent, ids, ok = result.messages["features"], result.client_ids, result.weights > 0
  new = {}
  for key in ("features", "partition", "valid", "tag"):
    old = pool[key][ids]
    cond = ok.reshape((-1,) + (1,) * (old.ndim - 1))
    new[key] = pool[key].at[ids].set(jnp.where(cond, sent[key].astype(old.dtype), old))
  return new


def fcl(model: nn.Module, client_tx: optax.GradientTransformation, server_tx: optax.GradientTransformation,
        hp: Hyper) -> FederatedAlgorithm:
  """FCL (or its baselines by ``hp``) over one cohort ``clients``."""
  average = averaging_server_update(server_tx)

  def init(variables, rng) -> ServerState:
    pool = {"features": jnp.zeros((hp.num_clients, hp.exchange_size, hp.projection_dim)),
            "partition": jnp.full((hp.num_clients, hp.exchange_size), -1, jnp.int32),
            "valid": jnp.zeros((hp.num_clients, hp.exchange_size)),
            "tag": jnp.zeros((hp.num_clients, 2), jnp.uint32)}
    return initial_server_state(variables, rng, server_tx, pool)

  def server_update(state: ServerState, results: Mapping[str, ClientResults]):
    new_state, metrics = average(state, results)
    pool = state.extra
    if "features" in results["clients"].messages:
      pool = update_pool(pool, results["clients"])
      metrics = {**metrics, "pool_features": jnp.sum(pool["valid"])}
    return new_state.replace(extra=pool), metrics

  return FederatedAlgorithm(init, {"clients": client_cohort(model, client_tx, hp)}, server_update, global_variables)
