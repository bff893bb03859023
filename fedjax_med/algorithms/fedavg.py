"""FedAvg and its server-optimizer / proximal / personalised variants.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (FedAvg); Reddi et al., "Adaptive Federated
Optimization", ICLR 2021 (server optimizers on the pseudo-gradient); Li et al.,
"Federated Optimization in Heterogeneous Networks", MLSys 2020 (FedProx term
``mu/2 ||w - w_global||^2``); Li et al., "FedBN", ICLR 2021 (normalisation kept local).

A staged schedule (:class:`Schedule`) keeps chosen variables fixed for the first rounds (e.g. a pre-trained
encoder while a fresh decoder learns), then trains everything at a scaled learning rate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fedjax_med.algorithms.common import initial_server_state
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


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Staged local training: the variables matching ``frozen`` stay fixed in rounds ``< frozen_rounds``; from round
  ``frozen_rounds`` on every parameter trains with its update (= the learning rate of sgd / adam / adamw) scaled
  by ``after_unfreeze_lr_scale``. The defaults change nothing.

  The client optimizer still sees the frozen leaves' gradients (with a persistent optimizer state its moments are
  warm when they unfreeze); their new values are discarded after the optimizer step, so they do not move at all,
  not even by weight decay, and their running statistics stay too when the regex matches ``batch_stats/...``.

  Attributes:
    frozen: regex over '/'-joined variable paths (``params/down0/Conv_0/kernel``, ``batch_stats/...``); "" = none.
    frozen_rounds: rounds (from 0) with those variables fixed.
    after_unfreeze_lr_scale: factor on every update from round ``frozen_rounds`` on.
  """

  frozen: str = ""
  frozen_rounds: int = 0
  after_unfreeze_lr_scale: float = 1.0

  def __post_init__(self):
    if self.frozen_rounds < 0:
      raise ValueError(f"config.algorithm.frozen_rounds must be >= 0; got {self.frozen_rounds}")
    if not self.after_unfreeze_lr_scale > 0:
      raise ValueError(f"config.client.after_unfreeze_lr_scale must be > 0; got {self.after_unfreeze_lr_scale}")
    try:
      re.compile(self.frozen)
    except re.error as e:
      raise ValueError(f"config.algorithm.frozen={self.frozen!r} is not a regex: {e}") from e

  @property
  def active(self) -> bool:
    return self.frozen_rounds > 0 or self.after_unfreeze_lr_scale != 1.0


def frozen_mask(variables: PyTree, schedule: Schedule) -> PyTree:
  """Bool pytree over the variables, True = fixed while frozen; ValueError if ``schedule.frozen`` matches none."""
  mask = aggregation.path_mask(variables, schedule.frozen)
  if schedule.frozen and not any(jax.tree.leaves(mask)):
    paths = list(traverse_util.flatten_dict(variables, sep="/"))
    raise ValueError(f"config.algorithm.frozen={schedule.frozen!r} matches no variable; paths look like "
                     f"{paths[:4]}")
  return mask


def staged_update(schedule: Schedule, frozen: PyTree, unfrozen: jax.Array, variables: PyTree, updates: PyTree,
                  model_state: PyTree) -> PyTree:
  """The variables after one local step under ``schedule``: the optimizer's ``updates`` (of ``params``) scaled
  for this stage, then, while frozen, the leaves marked in ``frozen`` reset to their values in ``variables``."""
  scale = jnp.where(unfrozen, schedule.after_unfreeze_lr_scale, 1.0)
  updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
  new = {"params": optax.apply_updates(variables["params"], updates), **model_state}
  return jax.tree.map(lambda m, n, o: jnp.where(unfrozen, n, o) if m else n, frozen, new, variables)


def supervised_cohort(loss_fn: Callable, client_tx: optax.GradientTransformation, mask: PyTree, *,
                      prox_mu: float = 0.0, persist_optimizer: bool = False,
                      schedule: Schedule = Schedule(), frozen: PyTree | None = None) -> CohortSpec:
  """The FedAvg local update of one client: optax steps on ``loss_fn`` from the broadcast model.

  Args:
    loss_fn: ``(params, model_state, batch, rng) -> (loss, (model_state, metrics))``.
    client_tx: the client optimizer.
    mask: static bool pytree over the variables; True leaves are personal (kept local).
    prox_mu: FedProx coefficient; 0 = FedAvg.
    persist_optimizer: keep the client optimizer state across rounds (else re-initialised
      every round, as FedAvg and the official codes do).
    schedule: staged training (frozen variables, then a scaled learning rate); the default changes nothing.
    frozen: static bool pytree over the variables, True = fixed while ``schedule`` freezes (``frozen_mask``).
  """
  if schedule.active and frozen is None:
    raise ValueError("supervised_cohort: a schedule needs its `frozen` mask (fedavg.frozen_mask)")

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
    local = {"variables": variables, "opt_state": opt_state, "anchor": server_state.params["params"]}
    if schedule.active:  # the stage of this round (server_state.round = rounds completed before it)
      local["unfrozen"] = server_state.round >= schedule.frozen_rounds
    return local

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
    if schedule.active:
      new = staged_update(schedule, frozen, local["unfrozen"], variables, updates, model_state)
    else:
      new = {"params": optax.apply_updates(variables["params"], updates), **model_state}
    return {**local, "variables": new, "opt_state": opt_state}, metrics

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
           persist_optimizer: bool = False, schedule: Schedule = Schedule()) -> FederatedAlgorithm:
  """FedAvg / FedProx / FedOpt / FedBN / personalised layers, for any supervised ``loss_fn``.

  Example::

    algorithm = fedavg(task.loss_fn, optax.adam(1e-3), optax.sgd(1.0), variables)
    server_state = algorithm.init(variables, jax.random.key_data(jax.random.key(0)))

  Args:
    variables: the initial model variables (only their structure is used here).
    cohorts: names of the cohorts; all run the same supervised update.
    local_params: regex over '/'-joined variable paths kept local (e.g. ``"head"``).
    batch_stats: ``average`` or ``local`` (FedBN).
    schedule: staged training, e.g. ``Schedule(frozen=r"^params/(down\\d+|bottleneck)/", frozen_rounds=10,
      after_unfreeze_lr_scale=0.1)``: a fresh decoder first, then everything at a tenth of the learning rate.
  """
  mask = local_mask(variables, local_params, batch_stats)
  spec = supervised_cohort(loss_fn, client_tx, mask, prox_mu=prox_mu, persist_optimizer=persist_optimizer,
                           schedule=schedule, frozen=frozen_mask(variables, schedule))

  def init(variables, rng) -> ServerState:
    return initial_server_state(variables, rng, server_tx)

  def eval_variables(server_state: ServerState, client_state):
    return server_state.params if client_state is None else merge(server_state.params, client_state["personal"])

  return FederatedAlgorithm(init, {name: spec for name in cohorts}, averaging_server_update(server_tx),
                            eval_variables)
