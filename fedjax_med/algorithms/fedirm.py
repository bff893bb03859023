"""FedIRM: federated semi-supervised classification by inter-client relation matching.

Liu, Yang, Dou, Heng, "Federated Semi-supervised Medical Image Classification via
Inter-client Relation Matching", MICCAI 2021 (arXiv 2106.08600).

Two cohorts share one global model (FedAvg over both):

* ``labeled``: supervised label-smoothed cross-entropy on two augmented views
  (``images``, ``images_2``, run as one pass over both, see ``_forward_views``); over the
  round it accumulates its disease relation matrix (DRM, ``losses.relation_matrix``)
  from the first view's logits and the true labels and sends it with its model delta. The server averages the labeled
  clients' DRMs row by row, weighted by their class counts.
* ``unlabeled``: from round ``warmup_rounds`` on. A mean teacher (EMA of the student)
  on the second view gives consistency targets (squared distance of softmaxes); the
  student's confident and certain samples (max probability >= ``confidence``,
  MC-dropout predictive entropy < ``entropy_threshold``, in nats or x log C) get pseudo-labels,
  whose DRM is pulled to the server's by the symmetric KL (the IRM loss). Both terms
  are weighted by a sigmoid ramp-up. The MC-dropout passes reuse one backbone
  forward: only the head (dropout + Dense on pooled features) runs ``mc_passes``
  times, in one batched call, and without touching batch statistics.

The same module gives the baselines of the paper's comparison by hyper-parameters:
``unlabeled_loss='consistency'`` (mean teacher only), ``'fixmatch'`` (FedFixMatch:
pseudo-labels from the weak view above a confidence, cross-entropy on the strong
view) and ``'none'`` (the unlabeled clients never train: FedAvg of the labeled
clients); ``unlabeled_update='zero'`` is the dilution control (the unlabeled clients are
averaged in with zero updates, :func:`zero_update_cohort`). The official code's behaviour
differs in places; :class:`Hyper` has a switch for each (see ``configs/fedirm.py``).
"""

from __future__ import annotations

import dataclasses
import math
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
from fedjax_med.losses import relation
from fedjax_med.losses.multitask import fixmatch_loss

UNLABELED_LOSSES = ("relation", "consistency", "fixmatch", "none")
TEACHER_SYNCS = ("round", "never")
UNLABELED_UPDATES = ("train", "zero")
DRM_PRIORS = ("none", "labels", "predictions")
UNLABELED_AGGREGATIONS = ("count", "ramp", "balanced", "additive")
COHORTS = ("labeled", "unlabeled")


@dataclasses.dataclass(frozen=True)
class Hyper:
  """FedIRM hyper-parameters (static). Defaults follow the paper (the entropy filter: the official code, the paper's
  definition being unverified); ``configs/fedirm.py`` lists the official ones."""

  num_classes: int
  temperature: float = 2.0
  drm_mode: str = "average_probabilities"  # official: average_logits (softmax of the mean logit)
  label_smoothing: float = 0.1
  unlabeled_loss: str = "relation"
  consistency_weight: float = 1.0
  relation_weight: float = 1.0
  loss_multiplier: float = 1.0  # official: 15
  warmup_rounds: int = 20  # rounds < warmup_rounds train the labeled clients alone
  rampup_rounds: float = 30.0
  rampup_start: int = -1  # round at which the ramp-up starts; -1 = warmup_rounds (official: 0)
  confidence: float = 0.3
  entropy_threshold: float = 2.0  # nats (official; never filters 5 or 7 classes); a fraction of log C if relative
  entropy_relative: bool = False
  mc_passes: int = 10
  ema_decay: float = 0.99
  teacher_sync: str = "round"  # round: teacher <- global model each round | never (official)
  labeled_lr_scale_after_warmup: float = 1.0  # official: 1.5 (2e-4 -> 3e-4 at round 21)
  fixmatch_threshold: float = 0.95
  fixmatch_weight: float = 1.0
  persist_optimizer: bool = True  # clients keep their optimizer state across rounds (as the official code)
  unlabeled_aggregation: str = "count"  # count (FedAvg weights) | ramp | balanced | additive; see server_update
  unlabeled_update: str = "train"  # train | zero: the dilution control, see unlabeled_cohort
  drm_prior: str = "none"  # ours: none | labels | predictions: both DRMs from logits minus a log prior (log_prior)

  def __post_init__(self):
    for name, value, allowed in (("unlabeled_loss", self.unlabeled_loss, UNLABELED_LOSSES),
                                 ("teacher_sync", self.teacher_sync, TEACHER_SYNCS),
                                 ("drm_mode", self.drm_mode, relation.DRM_MODES),
                                 ("unlabeled_aggregation", self.unlabeled_aggregation, UNLABELED_AGGREGATIONS),
                                 ("unlabeled_update", self.unlabeled_update, UNLABELED_UPDATES),
                                 ("drm_prior", self.drm_prior, DRM_PRIORS)):
      if value not in allowed:
        raise ValueError(f"config.algorithm.{name}={value!r} is not allowed; allowed: {list(allowed)}")
    if self.mc_passes < 1 and self.unlabeled_loss == "relation":
      raise ValueError(f"config.algorithm.mc_passes must be >= 1 for relation matching; got {self.mc_passes}")
    if self.unlabeled_update == "zero" and self.unlabeled_loss == "none":
      raise ValueError("config.algorithm.unlabeled_update='zero' needs the unlabeled clients in the aggregate; "
                       "unlabeled_loss='none' leaves them out of every round (use another unlabeled_loss)")

  @property
  def entropy_limit(self) -> float:
    """The MC-dropout entropy (nats) a kept sample must stay below."""
    return self.entropy_threshold * math.log(self.num_classes) if self.entropy_relative else self.entropy_threshold

  @property
  def ramp_origin(self) -> int:
    return self.warmup_rounds if self.rampup_start < 0 else self.rampup_start


# -- model helpers ------------------------------------------------------------------------------------------------
def _forward_views(model: nn.Module, params, state, views: jax.Array, keys: jax.Array):
  """Train-mode forward of ``V`` augmented views ``[V, B, ...]``; returns (outputs stacked ``[V, ...]``, state).

  Equals ``V`` calls of :func:`~fedjax_med.algorithms.common.apply_train` one after another (each view with its own
  batch statistics, the running statistics updated view by view) up to the dropout draws, which come from ``keys[0]``
  for all rows instead of one key per view (the same distribution). When the model can (a model without non-parameter
  state, or one with a ``bn_groups`` field: batch-norm statistics per consecutive slice of the batch,
  ``layers.BatchNorm.groups``), the views run as ONE call on the ``V * B`` concatenated images: one network copy in
  the compiled program, and on XLA:CPU faster than ``V`` calls or a ``vmap`` over the views (DenseNet-121 at 2 x 16
  images, forward + backward: 0.74 / 0.68 / 0.94 s, compile 26 / 52 / 37 s; ``docs/performance.md``). Other models run
  the views one after another, with their own keys.
  """
  num_views, batch = views.shape[:2]
  if state and not hasattr(model, "bn_groups"):
    outs = []
    for view, key in zip(views, keys):
      out, state = apply_train(model, params, state, view, key)
      outs.append(out)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs), state
  grouped = model.clone(bn_groups=num_views) if state else model
  out, state = apply_train(grouped, params, state, views.reshape(num_views * batch, *views.shape[2:]), keys[0])
  return jax.tree.map(lambda x: x.reshape(num_views, batch, *x.shape[1:]), out), state


def _forward_pair(model: nn.Module, params, state, batch, rng):
  """:func:`_forward_views` on ``batch["images"]`` and ``batch["images_2"]``; returns (first, second, state)."""
  outs, state = _forward_views(model, params, state, jnp.stack([batch["images"], batch["images_2"]]),
                               jax.random.split(rng))
  return jax.tree.map(lambda x: x[0], outs), jax.tree.map(lambda x: x[1], outs), state


def _head(model: nn.Module, params, features, rng):
  """The classifier head (dropout + Dense) alone, in train mode, on pooled ``features [N, F]``."""
  return model.apply({"params": params}, features, train=True, rngs={"dropout": rng}, method="classify")


def mc_dropout_entropy(model: nn.Module, params, features: jax.Array, rng: jax.Array, passes: int) -> jax.Array:
  """Predictive entropy ``[B]`` of the mean softmax over ``passes`` dropout draws of the head (Gal & Ghahramani 2016).

  The backbone ran once; ``features [B, F]`` are tiled to ``[passes * B, F]`` and the head
  runs in one batched call (each row gets its own dropout mask).
  """
  batch = features.shape[0]
  tiled = jnp.tile(jax.lax.stop_gradient(features), (passes, 1))
  logits = _head(model, params, tiled, rng).reshape(passes, batch, -1)
  mean_prob = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
  return -jnp.sum(mean_prob * jnp.log(mean_prob + 1e-6), axis=-1)


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
  """``min(1 - 1 / (step + 1), max_decay)``: the teacher follows closely at first."""
  return jnp.minimum(1.0 - 1.0 / (step.astype(jnp.float32) + 1.0), max_decay)


def kept_samples(probs: jax.Array, entropy: jax.Array, hp: Hyper) -> jax.Array:
  """float ``[B]``: 1 for samples confident (max prob >= ``hp.confidence``) and certain (entropy < limit)."""
  return ((jnp.max(probs, axis=-1) >= hp.confidence) & (entropy < hp.entropy_limit)).astype(jnp.float32)


# -- labeled cohort -----------------------------------------------------------------------------------------------
def _drm_stats(logits: jax.Array, onehot: jax.Array, hp: Hyper) -> tuple[jax.Array, jax.Array]:
  """What one batch adds to a client's round DRM: (sum [C, C], weight [C])."""
  if hp.drm_mode == "average_probabilities":  # per-class sums of softened probabilities and class counts
    return onehot.T @ jax.nn.softmax(logits / hp.temperature, axis=-1), jnp.sum(onehot, axis=0)
  drm, _ = relation.relation_matrix(logits, onehot, hp.temperature, "average_logits")
  return drm, jnp.ones(hp.num_classes)  # official: the per-batch matrices are averaged, absent classes included


def log_prior(extra: Mapping[str, jax.Array], hp: Hyper) -> jax.Array:
  """``[C]``: the log prior both DRMs subtract from the logits, from the labeled clients' last round (add-one
  smoothed): their label frequencies (``drm_prior='labels'``) or their model's mean predicted distribution on
  those images (``'predictions'``); zeros when ``drm_prior='none'`` or before any labeled round."""
  if hp.drm_prior == "none":
    return jnp.zeros(hp.num_classes)
  mass = extra["prior_mass"]
  prior = jnp.log((mass + 1.0) / (jnp.sum(mass) + hp.num_classes))
  return jnp.where(jnp.sum(mass) > 0, prior, 0.0)


def prior_mass(logits: jax.Array, onehot: jax.Array, hp: Hyper) -> jax.Array:
  """``[C]``: what one labeled batch adds to the prior: label counts, or the summed softmax of its labeled rows."""
  if hp.drm_prior == "predictions":
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * jnp.sum(onehot, axis=-1, keepdims=True), axis=0)
  return jnp.sum(onehot, axis=0)


def prior_adjusted(logits: jax.Array, prior: jax.Array) -> jax.Array:
  """Logits minus a log class prior ``[C]`` (logit adjustment, Menon et al., ICLR 2021, "Long-tail learning via
  logit adjustment"): a relation matrix of these measures how classes resemble each other rather than how common
  each is, or how much the model favours each. Ours, not FedIRM's: with a random-init model trained on few,
  imbalanced labels the plain DRM has the majority class as every row's arg-max (docs/results/fedirm_ham10000.md),
  and matching it pulls every unlabeled prediction to that class. A DRM built from these has the gradient of one
  from the raw logits shifted by a constant, so the model itself is not re-weighted."""
  return logits - prior


def _drm_from_stats(total: jax.Array, weight: jax.Array, num_classes: int) -> jax.Array:
  uniform = jnp.full_like(total, 1.0 / num_classes)
  return jnp.where(weight[:, None] > 0, total / jnp.maximum(weight[:, None], 1e-8), uniform)


def labeled_cohort(model: nn.Module, tx: optax.GradientTransformation, hp: Hyper) -> CohortSpec:
  """Supervised two-view update; accumulates the round's DRM from view-1 logits and true labels."""
  num_classes = hp.num_classes

  def client_init(variables, rng):
    del rng
    return {"opt_state": tx.init(variables["params"])} if hp.persist_optimizer else {}

  def start(server_state: ServerState, client_state, rng):
    del rng
    params, state = split_state(server_state.params)
    opt_state = client_state["opt_state"] if hp.persist_optimizer else tx.init(params)
    scale = jnp.where(server_state.round >= hp.warmup_rounds, hp.labeled_lr_scale_after_warmup, 1.0)
    return {"params": params, "state": state, "opt_state": opt_state, "lr_scale": scale,
            "drm_sum": jnp.zeros((num_classes, num_classes)), "drm_weight": jnp.zeros(num_classes),
            "prior": log_prior(server_state.extra, hp), "prior_mass": jnp.zeros(num_classes)}

  def loss_fn(params, state, batch, rng):
    out1, out2, state = _forward_pair(model, params, state, batch, rng)
    labels = batch["labels"]
    valid = (labels >= 0).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(valid), 1.0)
    ce = lambda z: jnp.sum(relation.label_smoothing_ce(z, labels, hp.label_smoothing)) / denom
    loss = ce(out1["logits"]) + ce(out2["logits"])
    accuracy = jnp.sum((jnp.argmax(out1["logits"], -1) == labels) * valid) / denom
    return loss, (state, out1["logits"], {"loss": loss, "accuracy": accuracy})

  def step(local, batch, rng):
    grads, (state, logits, metrics) = jax.grad(loss_fn, has_aux=True)(local["params"], local["state"], batch, rng)
    updates, opt_state = tx.update(grads, local["opt_state"], local["params"])
    updates = jax.tree.map(lambda u: u * local["lr_scale"], updates)  # Adam's step is linear in its lr
    onehot = jax.nn.one_hot(batch["labels"], num_classes) * (batch["labels"] >= 0)[:, None]
    logits = jax.lax.stop_gradient(logits)
    drm_sum, drm_weight = _drm_stats(prior_adjusted(logits, local["prior"]), onehot, hp)
    return {**local, "params": optax.apply_updates(local["params"], updates), "state": state,
            "opt_state": opt_state, "drm_sum": local["drm_sum"] + drm_sum,
            "drm_weight": local["drm_weight"] + drm_weight,
            "prior_mass": local["prior_mass"] + prior_mass(logits, onehot, hp)}, metrics

  def finish(server_state: ServerState, client_state, local):
    delta = model_delta(server_state, local)
    drm = _drm_from_stats(local["drm_sum"], local["drm_weight"], num_classes)
    row_weight = local["drm_weight"] if hp.drm_mode == "average_probabilities" else jnp.ones(num_classes)
    new_state = {"opt_state": local["opt_state"]} if hp.persist_optimizer else {}
    message = {"delta": delta, "drm": drm, "drm_weight": row_weight}
    if hp.drm_prior != "none":  # C numbers for the server's prior (sums over the round, no image or label)
      message["prior_mass"] = local["prior_mass"]
    return new_state, message, {}

  return CohortSpec(client_init, start, step, finish)


# -- unlabeled cohort ---------------------------------------------------------------------------------------------
def unlabeled_cohort(model: nn.Module, tx: optax.GradientTransformation, hp: Hyper) -> CohortSpec:
  """Mean teacher + relation matching (or FixMatch) on unlabeled data; see the module docstring."""
  num_classes = hp.num_classes
  uses_teacher = hp.unlabeled_loss in ("relation", "consistency")

  def client_init(variables, rng):
    del rng
    state = {"opt_state": tx.init(variables["params"])} if hp.persist_optimizer else {}
    if uses_teacher:
      state.update(teacher=variables["params"], teacher_ready=jnp.zeros((), jnp.bool_),
                   steps=jnp.zeros((), jnp.int32))
    return state

  def start(server_state: ServerState, client_state, rng):
    del rng
    params, state = split_state(server_state.params)
    local = {"params": params, "state": state,
             "opt_state": client_state["opt_state"] if hp.persist_optimizer else tx.init(params),
             "ramp": relation.sigmoid_rampup(server_state.round - hp.ramp_origin, hp.rampup_rounds),
             "target": server_state.extra["drm"], "target_ready": server_state.extra["drm_ready"],
             "prior": log_prior(server_state.extra, hp)}
    if uses_teacher:
      if hp.teacher_sync == "round":
        teacher = params
      else:  # official: copied from the student once, at the client's first round, then never re-synced
        teacher = jax.tree.map(lambda t, p: jnp.where(client_state["teacher_ready"], t, p),
                               client_state["teacher"], params)
      local.update(teacher=teacher, steps=client_state["steps"])
    return local

  def relation_terms(params, state, batch, rng, local):
    k_student, k_teacher, k_mc = jax.random.split(rng, 3)
    features, state = apply_train(model, params, state, batch["images"], k_student, method="backbone")
    k_head, _ = jax.random.split(k_student)
    logits = _head(model, params, features, k_head)
    teacher_out, _ = apply_train(model, local["teacher"], local["state"], batch["images_2"], k_teacher)
    probs, teacher_probs = jax.nn.softmax(logits), jax.lax.stop_gradient(jax.nn.softmax(teacher_out["logits"]))
    consistency = jnp.mean(jnp.sum((probs - teacher_probs) ** 2, axis=-1))
    metrics = {"consistency": consistency}
    total = hp.consistency_weight * consistency
    if hp.unlabeled_loss == "relation":
      entropy = mc_dropout_entropy(model, params, features, k_mc, hp.mc_passes)
      keep = kept_samples(jax.lax.stop_gradient(probs), entropy, hp)
      onehot = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes) * keep[:, None]
      local_drm, counts = relation.relation_matrix(prior_adjusted(logits, local["prior"]), onehot, hp.temperature,
                                                   hp.drm_mode)
      # Rows of classes with no kept sample are constants (uniform); the official code averages them in.
      rows = (counts > 0).astype(jnp.float32) if hp.drm_mode == "average_probabilities" else None
      irm = relation.symmetric_kl(local["target"], local_drm, row_weights=rows) * local["target_ready"]
      total = total + hp.relation_weight * irm
      metrics.update(relation=irm, kept_fraction=jnp.mean(keep), mc_entropy=jnp.mean(entropy),
                     local_drm=jax.lax.stop_gradient(local_drm))
    return total, state, metrics

  def fixmatch_terms(params, state, batch, rng):
    weak, strong, state = _forward_pair(model, params, state, batch, rng)
    loss, kept = fixmatch_loss(weak["logits"], strong["logits"], hp.fixmatch_threshold)
    return hp.fixmatch_weight * loss, state, {"fixmatch": loss, "kept_fraction": kept}

  def loss_fn(params, state, batch, rng, local):
    if hp.unlabeled_loss == "fixmatch":
      total, state, metrics = fixmatch_terms(params, state, batch, rng)
    else:
      total, state, metrics = relation_terms(params, state, batch, rng, local)
    loss = hp.loss_multiplier * local["ramp"] * total
    return loss, (state, {"loss": loss, "ramp": local["ramp"], **metrics})

  def step(local, batch, rng):
    grads, (state, metrics) = jax.grad(loss_fn, has_aux=True)(local["params"], local["state"], batch, rng, local)
    updates, opt_state = tx.update(grads, local["opt_state"], local["params"])
    params = optax.apply_updates(local["params"], updates)
    new = {**local, "params": params, "state": state, "opt_state": opt_state}
    if uses_teacher:
      new["teacher"] = ema(local["teacher"], params, ema_decay_at(local["steps"], hp.ema_decay))
      new["steps"] = local["steps"] + 1
    return new, metrics

  def finish(server_state: ServerState, client_state, local):
    delta = model_delta(server_state, local)
    new_state = {"opt_state": local["opt_state"]} if hp.persist_optimizer else {}
    if uses_teacher:
      new_state.update(teacher=local["teacher"], teacher_ready=jnp.ones((), jnp.bool_), steps=local["steps"])
    return new_state, {"delta": delta}, {}

  return CohortSpec(client_init, start, step, finish)


def zero_update_cohort() -> CohortSpec:
  """The dilution control (``unlabeled_update='zero'``): the unlabeled clients join the aggregate from round
  ``warmup_rounds`` on with their usual weight but send a zero delta (parameters and batch statistics), so the
  labeled clients' updates are diluted exactly as in FedIRM while nothing is learned from the unlabeled data. A
  method that beats this control gains from its unlabeled loss, not only from taking less weight off the labeled
  clients. The step does no work (the batches it is given are unused)."""

  def client_init(variables, rng):
    del variables, rng
    return {}

  def start(server_state: ServerState, client_state, rng):
    del server_state, client_state, rng
    return {}

  def step(local, batch, rng):
    del batch, rng
    return local, {}

  def finish(server_state: ServerState, client_state, local):
    del client_state, local
    return {}, {"delta": jax.tree.map(jnp.zeros_like, server_state.params)}, {}

  return CohortSpec(client_init, start, step, finish)


# -- server -------------------------------------------------------------------------------------------------------
def aggregate_drm(old: jax.Array, result: ClientResults) -> tuple[jax.Array, jax.Array]:
  """Row-wise weighted mean of the labeled clients' DRMs; rows nobody saw keep ``old``. Returns (drm, any row)."""
  weights = (result.weights > 0)[:, None] * result.messages["drm_weight"]  # [clients, C]
  total = jnp.sum(weights, axis=0)
  mean = jnp.einsum("kc,kcj->cj", weights, result.messages["drm"]) / jnp.maximum(total, 1e-8)[:, None]
  return jnp.where(total[:, None] > 0, mean, old), jnp.any(total > 0)


def unlabeled_weights(results: Mapping[str, ClientResults], ramp: jax.Array, mode: str) -> jax.Array:
  """The unlabeled clients' aggregation weights ``[K_u]`` under ``mode`` (ours; FedAvg is ``count``).

  ``ramp``: the sample counts times the ramp-up weight. Adam makes a client's step size independent of its
  loss scale, so the ramp-up of the loss alone cannot keep early, noisy unlabeled updates small.
  ``balanced``: the counts rescaled so that the unlabeled cohort weighs ``ramp`` times the labeled cohort in
  total; with count weights 8 unlabeled clients hold 80 % of every update although their loss carries no
  label information, which slows the supervised progress 5-fold. ``additive`` has the weights of
  ``balanced`` (the server then rescales, see ``additive_deltas``). Falls back to ``ramp`` when no labeled
  client has weight this round.
  """
  weights = results["unlabeled"].weights
  if mode == "ramp" or "labeled" not in results:
    return weights * ramp
  labeled_total, unlabeled_total = jnp.sum(results["labeled"].weights), jnp.sum(weights)
  scale = jnp.where(labeled_total > 0, labeled_total / jnp.maximum(unlabeled_total, 1e-8), 1.0)
  return weights * ramp * scale


def additive_deltas(results: Mapping[str, ClientResults], ramp: jax.Array) -> Mapping[str, ClientResults]:
  """Every client's parameter delta times ``1 + ramp``, so that with ``balanced`` weights the averaged update is
  ``mean_labeled + ramp * mean_unlabeled``: the federated form of the centralised semi-supervised objective
  ``L_sup + lambda * L_unsup``, whose gradient is the SUM of the two terms' gradients, not their average
  (averaging halves the supervised step). Batch-norm statistics stay averaged (summing would overshoot)."""
  scale = 1.0 + ramp

  def scaled(result: ClientResults) -> ClientResults:
    delta = result.messages["delta"]
    delta = {**delta, "params": jax.tree.map(lambda x: x * scale.astype(x.dtype), delta["params"])}
    return result._replace(messages={**result.messages, "delta": delta})

  return {name: scaled(result) for name, result in results.items()}


def fedirm(model: nn.Module, client_tx: optax.GradientTransformation, server_tx: optax.GradientTransformation,
           hp: Hyper) -> FederatedAlgorithm:
  """FedIRM (and its baselines by ``hp.unlabeled_loss``) over the cohorts ``labeled`` and ``unlabeled``."""
  average = averaging_server_update(server_tx)

  def init(variables, rng) -> ServerState:
    uniform = jnp.full((hp.num_classes, hp.num_classes), 1.0 / hp.num_classes)
    extra = {"drm": uniform, "drm_ready": jnp.zeros((), jnp.float32)}
    if hp.drm_prior != "none":
      extra["prior_mass"] = jnp.zeros(hp.num_classes)
    return initial_server_state(variables, rng, server_tx, extra)

  def server_update(state: ServerState, results: Mapping[str, ClientResults]):
    if "unlabeled" in results and hp.unlabeled_aggregation != "count":
      ramp = relation.sigmoid_rampup(state.round - hp.ramp_origin, hp.rampup_rounds)
      mode = "balanced" if hp.unlabeled_aggregation == "additive" else hp.unlabeled_aggregation
      weights = unlabeled_weights(results, ramp, mode)
      results = {**results, "unlabeled": results["unlabeled"]._replace(weights=weights)}
      if hp.unlabeled_aggregation == "additive" and "labeled" in results:
        results = additive_deltas(results, ramp)
    new_state, metrics = average(state, results)
    extra = state.extra
    if "labeled" in results:
      drm, any_row = aggregate_drm(extra["drm"], results["labeled"])
      extra = {**extra, "drm": drm, "drm_ready": jnp.maximum(extra["drm_ready"], any_row.astype(jnp.float32))}
      if hp.drm_prior != "none":  # the last round's labeled mass (the model's bias moves as it trains)
        labeled = results["labeled"]
        extra["prior_mass"] = jnp.sum((labeled.weights > 0)[:, None] * labeled.messages["prior_mass"], axis=0)
      metrics = {**metrics, "drm_diagonal": jnp.mean(jnp.diagonal(drm)), "drm": drm}
    return new_state.replace(extra=extra), metrics

  def participates(cohort: str, round_num: int) -> bool:
    if cohort != "unlabeled":
      return True
    return hp.unlabeled_loss != "none" and round_num >= hp.warmup_rounds

  unlabeled = unlabeled_cohort(model, client_tx, hp) if hp.unlabeled_update == "train" else zero_update_cohort()
  cohorts = {"labeled": labeled_cohort(model, client_tx, hp), "unlabeled": unlabeled}
  return FederatedAlgorithm(init, cohorts, server_update, global_variables, participates)
