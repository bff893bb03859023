"""FedAvg and its server-optimizer / proximal / personalised variants.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (FedAvg); Reddi et al., "Adaptive Federated
Optimization", ICLR 2021 (server optimizers on the pseudo-gradient); Li et al.,
"Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx term
``mu/2 ||w - w_global||^2``); Li et al., "FedBN", ICLR 2021 (normalisation kept local).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fedjax_med.engine import aggregation
from fedjax_med.engine.types import CohortSpec, FederatedAlgorithm, PyTree, ServerState

BATCH_STATS_POLICIES = ("average", "local")


def local_mask(variables: PyTree, local_params: str, batch_stats: str) -> PyTree:
  """Bool pytree over the model variables: True = stays on the client, never averaged."""
  if batch_stats not in BATCH_STATS_POLICIES:
    raise ValueError(f"unknown batch_stats policy {batch_stats!r}; allowed: {BATCH_STATS_POLICIES}")
  pattern = local_params
  if batch_stats == "local":  # FedBN: statistics and the norm layers' affine parameters stay local
    pattern = "|".join(p for p in (local_params, r"^batch_stats/", r"(?i:norm)") if p)
  return aggregation.path_mask(variables, pattern)


def flat_select(tree: PyTree, mask: PyTree) -> dict[str, jax.Array]:
  """The leaves where ``mask`` is True, as a flat ``{path: leaf}`` dict."""
  flat, flat_mask = traverse_util.flatten_dict(tree, sep="/"), traverse_util.flatten_dict(mask, sep="/")
  return {k: v for k, v in flat.items() if flat_mask[k]}


def merge(tree: PyTree, personal: dict[str, jax.Array]) -> PyTree:
  """``tree`` with the leaves named in the flat dict ``personal`` replaced."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  return traverse_util.unflatten_dict({**flat, **personal}, sep="/")


def supervised_cohort(loss_fn: Callable, client_tx: optax.GradientTransformation, mask: PyTree, *,
                      prox_mu: float = 0.0, persist_optimizer: bool = False) -> CohortSpec:
  """The FedAvg local update of one client: optax steps on ``loss_fn`` from the broadcast model.

  Args:
    loss_fn: ``(params, model_state, batch, rng) -> (loss, (model_state, metrics))``.
    client_tx: the client optimizer.
    mask: static bool pytree over the variables; True leaves are personal (kept local).
    prox_mu: FedProx coefficient; 0 = FedAvg.
    persist_optimizer: keep the client optimizer state across rounds (else re-initialised
      every round, as FedAvg and the official codes do).
  """

  def client_init(variables, rng):
    del rng
    state = {"personal": flat_select(variables, mask)}
    if persist_optimizer:
      state["opt_state"] = client_tx.init(variables["params"])
    return state

  def start(server_state: ServerState, client_state, rng):
    del rng
    variables = merge(server_state.params, client_state["personal"])
    opt_state = client_state["opt_state"] if persist_optimizer else client_tx.init(variables["params"])
    return {"variables": variables, "opt_state": opt_state, "anchor": server_state.params["params"]}

  def objective(params, model_state, anchor, batch, rng):
    loss, (model_state, metrics) = loss_fn(params, model_state, batch, rng)
    if prox_mu:
      sq = sum(jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
      loss = loss + 0.5 * prox_mu * sq
    return loss, (model_state, metrics)

  def step(local, batch, rng):
    variables = local["variables"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    grads, (model_state, metrics) = jax.grad(objective, has_aux=True)(
        variables["params"], model_state, local["anchor"], batch, rng)
    updates, opt_state = client_tx.update(grads, local["opt_state"], variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {**local, "variables": {"params": params, **model_state}, "opt_state": opt_state}, metrics

  def finish(server_state: ServerState, client_state, local):
    variables = local["variables"]
    delta = jax.tree.map(lambda m, new, old: jnp.zeros_like(old) if m else new - old,
                         mask, variables, server_state.params)
    new_state = {"personal": flat_select(variables, mask)}
    if persist_optimizer:
      new_state["opt_state"] = local["opt_state"]
    return new_state, {"delta": delta}, {}

  return CohortSpec(client_init, start, step, finish)


def averaging_server_update(server_tx: optax.GradientTransformation) -> Callable:
  """Server update: ``server_tx`` on the pseudo-gradient of ``params``; other collections averaged."""

  def server_update(state: ServerState, results):
    mean_delta, total = aggregation.pooled_mean(results, "delta")
    pseudo_grad = jax.tree.map(jnp.negative, mean_delta["params"])
    updates, opt_state = server_tx.update(pseudo_grad, state.opt_state, state.params["params"])
    params = {**jax.tree.map(jnp.add, state.params, mean_delta), "params": optax.apply_updates(
        state.params["params"], updates)}
    keep = total > 0  # nobody sent a finite update: the global model stays as it was
    params = jax.tree.map(lambda new, old: jnp.where(keep, new, old), params, state.params)
    opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), opt_state, state.opt_state)
    delta_norm = optax.tree.norm(mean_delta["params"])
    return state.replace(params=params, opt_state=opt_state), {"update_norm": delta_norm, "total_weight": total}

  return server_update


def fedavg(loss_fn: Callable, client_tx: optax.GradientTransformation, server_tx: optax.GradientTransformation,
           variables: PyTree, *, cohorts: tuple[str, ...] = ("clients",), prox_mu: float = 0.0,
           batch_stats: str = "average", local_params: str = "",
           persist_optimizer: bool = False) -> FederatedAlgorithm:
  """FedAvg / FedProx / FedOpt / FedBN / personalised layers, for any supervised ``loss_fn``.

  Example::

    algorithm = fedavg(task.loss_fn, optax.adam(1e-3), optax.sgd(1.0), variables)
    server_state = algorithm.init(variables, jax.random.key_data(jax.random.key(0)))

  Args:
    variables: the initial model variables (only their structure is used here).
    cohorts: names of the cohorts; all run the same supervised update.
    local_params: regex over '/'-joined variable paths kept local (e.g. ``"head"``).
    batch_stats: ``average`` or ``local`` (FedBN).
  """
  mask = local_mask(variables, local_params, batch_stats)
  spec = supervised_cohort(loss_fn, client_tx, mask, prox_mu=prox_mu, persist_optimizer=persist_optimizer)

  def init(variables, rng) -> ServerState:
    return ServerState(params=variables, opt_state=server_tx.init(variables["params"]),
                       round=jnp.zeros((), jnp.int32), rng=rng, extra={})

  def eval_variables(server_state: ServerState, client_state):
    return server_state.params if client_state is None else merge(server_state.params, client_state["personal"])

  return FederatedAlgorithm(init, {name: spec for name in cohorts}, averaging_server_update(server_tx),
                            eval_variables)
