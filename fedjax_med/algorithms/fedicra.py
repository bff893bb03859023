"""FedICRA: personalised weakly-supervised federated segmentation (Lin et al., arXiv 2304.05635).

Every site annotates in its own cheap form (``data.weak_forms``: scribbles, points, boxes, blocks; unannotated
pixels = ``ignore_index``). The model is :class:`~fedjax_med.models.unet_pcs.UNetPCS` (a U-Net with personalised
channel selection at the bottleneck, driven by the site's one-hot embedding, and auxiliary heads). One client
round of ``ala_steps + head_steps + body_steps`` local steps:

1. adaptive aggregation (FedALA, Zhang et al., AAAI 2023, eq. 4-5): element-wise weights ``W`` in [0, 1] mix the
   client's previous decoder with the new global one, ``theta = theta_local + (theta_g - theta_local) * W`` (W = 1:
   take the global decoder, FedALA's initialisation); each ALA step moves
   ``W <- clip(W - ala_lr * dL/dtheta * (theta_g - theta_local), 0, 1)`` on the partial cross-entropy of a local
   batch. ``W`` persists across rounds (the official code re-initialises it to ones every call, a typo);
   ALA starts at round ``ala_start_round`` and only once the client holds a decoder of its own; before that
   (and when ALA is inactive) the client starts from the global model;
2. ``head_steps`` steps training the output layer only, then ``body_steps`` steps training everything else
   (the official head/body alternation; ``joint=True``: the body steps train every parameter, head included);
   AdamW re-initialised every round, as the official code. The three kinds of step are the cohort's phases, so
   a step computes only its own phase (no branch computed and discarded);
3. the loss: partial cross-entropy + ``crf_weight`` x gated CRF + ``tree_weight`` x multiscale tree energy (image
   tree, then each auxiliary head's tree) + ``lc_weight`` x the site contrastive term
   ``-mean_{k != own} MSE(gate_own, stopgrad(gate_k))`` over the other sites' channel-selection gates (computed
   from the same bottleneck features, one encoder pass);
4. the client sends its whole model delta except its site embedding; the server averages (FedAvg, all parameters
   and batch statistics, as the official strategy).

A site's personalised model (evaluation): the global model with the decoder mixed by the client's ``W``
(``theta_local + (theta_g - theta_local) * W``, what the site would start its next round from) and the client's
site embedding. The evaluation variant ``global`` is the global model with the site's embedding (the official test
script's model).

Earlier versions of this module mixed ``theta_g + (theta_local - theta_g) * W`` with ``W`` starting at 1: every
site kept its own decoder from its first ALA round on and the server averaged decoders with no common start.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_med.algorithms.common import apply_train, initial_server_state
from fedjax_med.algorithms.fedavg import averaging_server_update, flat_select, merge
from fedjax_med.engine import aggregation
from fedjax_med.engine.types import CohortSpec, FederatedAlgorithm, ServerState
from fedjax_med.losses import tree_filter, weak


@dataclasses.dataclass(frozen=True)
class Hyper:
  """FedICRA hyper-parameters (static); defaults and their sources in ``configs/fedicra_acdc.py``."""

  num_sites: int
  ignore_index: int
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  crf_weight: float = 0.1
  crf_radius: int = 5
  crf_sigma_xy: float = 6.0
  crf_sigma_rgb: float = 0.1
  tree_weight: float = 0.1
  tree_low_sigma: float = 0.02
  tree_high_sigma: float = 1.0
  tree_gray_channels: int = 3
  lc_weight: float = 1.0
  lc_gradient: bool = False
  ala_steps: int = 2
  head_steps: int = 7
  body_steps: int = 3
  ala_lr: float = 1.0
  ala_start_round: int = 5
  persist_ala: bool = True
  joint: bool = False
  adaptive: str = r"^params/(up\d+|dec\d+|out)/"
  head: str = r"^params/out/"

  def __post_init__(self):
    if self.num_sites < 2:
      raise ValueError(f"FedICRA needs at least 2 sites for its site contrastive term; got {self.num_sites}")
    if min(self.ala_steps, self.head_steps, self.body_steps) < 0 or self.head_steps + self.body_steps == 0:
      raise ValueError("config.algorithm.ala_steps, head_steps, body_steps must be >= 0 with some training steps")
    if self.tree_gray_channels < 1:
      raise ValueError(f"config.algorithm.tree_gray_channels must be >= 1; got {self.tree_gray_channels}")
    if not self.joint and not self.head_steps:
      raise ValueError("config.algorithm.head_steps=0 with joint=False never trains the output layer; set "
                       "joint=True (the body steps train every parameter) or head_steps > 0")

  @property
  def local_steps(self) -> int:
    return self.ala_steps + self.head_steps + self.body_steps

  @property
  def phases(self) -> tuple[int, int, int]:
    """Steps of the ALA, head-only and body phases of a round, in order."""
    return (self.ala_steps, self.head_steps, self.body_steps)


def unit_images(images: jax.Array, hp: Hyper) -> jax.Array:
  """Normalised ``[B, H, W, C]`` back to intensities in [0, 1] (the CRF and image-tree features)."""
  return images * jnp.asarray(hp.image_std, images.dtype) + jnp.asarray(hp.image_mean, images.dtype)


def tree_image(image: jax.Array, gray_channels: int) -> jax.Array:
  """The image tree's features ``[B, H, W, K]``: a one-channel image repeated ``gray_channels`` times.

  The official code repeats its grayscale (FAZ) images to three channels before the tree energy loss, which
  triples every squared distance: ``w = exp(-3 d^2 / sigma)``. Colour images are used as they are.
  """
  if image.shape[-1] != 1:
    return image
  return jnp.repeat(image, gray_channels, axis=-1)


def site_contrast(gate: jax.Array, gates_all: jax.Array, onehot: jax.Array, gradient: bool) -> jax.Array:
  """``-1/(K-1) sum_{k != own} mean_{B,F} (gate - stopgrad(gate_k))^2``; gate ``[B, F]``, gates_all ``[B, K, F]``."""
  others = jax.lax.stop_gradient(gates_all)
  per_site = jnp.mean(jnp.square(gate[:, None, :] - others), axis=(0, 2))  # [K]
  value = -jnp.sum(per_site * (1.0 - onehot)) / (onehot.shape[0] - 1)
  return value if gradient else jax.lax.stop_gradient(value)


def weak_losses(outputs: dict, batch: dict, onehot: jax.Array, hp: Hyper) -> tuple[jax.Array, dict]:
  """The total local loss and its parts for one batch (model outputs of :class:`UNetPCS`)."""
  logits, labels = outputs["logits"], batch["scribbles"]
  image = unit_images(batch["images"], hp)
  total, parts = weak.partial_ce_crf(logits, labels, image, hp.ignore_index, hp.crf_weight, hp.crf_radius,
                                     hp.crf_sigma_xy, hp.crf_sigma_rgb)
  if hp.tree_weight:
    probs = jax.nn.softmax(logits, axis=-1)
    filtered = tree_filter.multiscale_tree_filter(probs, tree_image(image, hp.tree_gray_channels), outputs["aux"],
                                                  hp.tree_low_sigma, hp.tree_high_sigma)
    unannotated = (labels == hp.ignore_index).astype(probs.dtype)
    parts["tree"] = tree_filter.tree_energy_loss(probs, filtered, unannotated)
    total = total + hp.tree_weight * parts["tree"]
  if hp.lc_weight:
    parts["lc"] = site_contrast(outputs["gate"], outputs["gates_all"], onehot, hp.lc_gradient)
    total = total + hp.lc_weight * parts["lc"]
  return total, {"loss": total, **parts}


def fedicra(model: nn.Module, client_tx: optax.GradientTransformation, server_tx: optax.GradientTransformation,
            variables: dict, hp: Hyper) -> FederatedAlgorithm:
  """FedICRA over one cohort ``clients``; batches need ``images``, ``scribbles`` and ``client_index``."""
  adaptive_mask = aggregation.path_mask(variables, hp.adaptive)
  head_mask = jax.tree.map(bool, aggregation.path_mask({"params": variables["params"]}, hp.head)["params"])
  if not any(jax.tree.leaves(adaptive_mask)) or not any(jax.tree.leaves(head_mask)):
    raise ValueError(f"config.algorithm.adaptive={hp.adaptive!r} or head={hp.head!r} matches no model variable")

  def mix(global_flat: dict, local_flat: dict, weights: dict) -> dict:
    """FedALA's ``theta_local + (theta_g - theta_local) * W`` (W = 1: the global decoder)."""
    return {k: local_flat[k] + (global_flat[k] - local_flat[k]) * weights[k] for k in global_flat}

  def with_site(variables, onehot):
    return {**variables, "site": {"onehot": onehot}}

  def client_init(variables, rng):
    del rng
    local = flat_select(variables, adaptive_mask)
    return {"local": local, "ala": jax.tree.map(jnp.ones_like, local), "site": jnp.zeros((hp.num_sites,)),
            "trained": jnp.zeros(())}

  def start(server_state: ServerState, client_state, rng):
    del rng
    active = (server_state.round >= hp.ala_start_round) & (client_state["trained"] > 0)
    ala = client_state["ala"] if hp.persist_ala else jax.tree.map(jnp.ones_like, client_state["ala"])
    return {"variables": server_state.params, "global": flat_select(server_state.params, adaptive_mask),
            "old_local": client_state["local"], "ala": ala, "active": active, "site": client_state["site"],
            "opt_state": client_tx.init(server_state.params["params"])}

  def ala_step(local, batch, onehot, rng):
    del rng

    def pce_of(adaptive):
      variables = with_site(merge(local["variables"], adaptive), onehot)
      logits = model.apply(variables, batch["images"], train=False)["logits"]
      return weak.partial_cross_entropy(logits, batch["scribbles"], hp.ignore_index)

    current = mix(local["global"], local["old_local"], local["ala"])
    loss, grads = jax.value_and_grad(pce_of)(current)
    moved = {k: jnp.clip(local["ala"][k] - hp.ala_lr * grads[k] * (local["global"][k] - local["old_local"][k]),
                         0.0, 1.0) for k in grads}
    ala = jax.tree.map(lambda new, old: jnp.where(local["active"], new, old), moved, local["ala"])
    adaptive = jax.tree.map(lambda m, g: jnp.where(local["active"], m, g),
                            mix(local["global"], local["old_local"], ala), local["global"])
    return {**local, "ala": ala, "variables": merge(local["variables"], adaptive)}, loss

  def train_step(local, batch, onehot, rng, head_phase: bool):
    variables = local["variables"]
    params, state = variables["params"], {k: v for k, v in variables.items() if k not in ("params", "site")}

    def objective(params):
      outputs, new_state = apply_train(model, params, state, batch["images"], rng,
                                       constants={"site": {"onehot": onehot}})
      loss, metrics = weak_losses(outputs, batch, onehot, hp)
      return loss, (new_state, metrics)

    grads, (new_state, metrics) = jax.grad(objective, has_aux=True)(params)
    if head_phase or not hp.joint:  # head phase: the head only; body phase: the rest
      trained = jax.tree.map(lambda is_head: is_head == head_phase, head_mask)
      # frozen leaves: zero gradient and parameters kept (their Adam moments decay, unlike torch's skipped params)
      grads = jax.tree.map(lambda on, g: g if on else jnp.zeros_like(g), trained, grads)
    updates, opt_state = client_tx.update(grads, local["opt_state"], params)
    stepped = optax.apply_updates(params, updates)
    if head_phase or not hp.joint:
      stepped = jax.tree.map(lambda on, new, old: new if on else old, trained, stepped, params)
    variables = {**variables, "params": stepped, **new_state}  # the site collection stays the global zeros
    return {**local, "variables": variables, "opt_state": opt_state}, metrics

  train_keys = ("loss", "pce") + (("crf",) if hp.crf_weight else ()) + (("tree",) if hp.tree_weight else ()) + (
      ("lc",) if hp.lc_weight else ())
  # the engine averages step metrics over all local steps: scale each phase's metrics so that the average is
  # the mean over that phase's steps (the phases have static lengths)
  train_scale = hp.local_steps / (hp.head_steps + hp.body_steps)
  ala_scale = hp.local_steps / hp.ala_steps if hp.ala_steps else 0.0

  def step(local, batch, rng, phase: int):
    """One local step of ``phase`` (static): 0 = ALA, 1 = head only, 2 = body (every parameter if ``joint``)."""
    onehot = jax.nn.one_hot(batch["client_index"][0], hp.num_sites)
    local = {**local, "site": onehot}
    if phase == 0:
      new, pce = ala_step(local, batch, onehot, rng)
      return new, {"ala_pce": pce * ala_scale, **{k: jnp.zeros(()) for k in train_keys}}
    new, metrics = train_step(local, batch, onehot, rng, head_phase=phase == 1)
    return new, {"ala_pce": jnp.zeros(()), **{k: metrics[k] * train_scale for k in train_keys}}

  def finish(server_state: ServerState, client_state, local):
    variables = local["variables"]
    delta = jax.tree.map(jnp.subtract, variables, server_state.params)
    new_state = {"local": flat_select(variables, adaptive_mask), "ala": local["ala"],
                 "site": local["site"], "trained": jnp.ones(())}
    metrics = {"ala_weight": jnp.mean(jnp.concatenate([w.ravel() for w in jax.tree.leaves(local["ala"])]))}
    return new_state, {"delta": delta}, metrics

  def init(variables, rng) -> ServerState:
    return initial_server_state(variables, rng, server_tx)

  def eval_variables(server_state: ServerState, client_state):
    if client_state is None:
      return server_state.params
    global_flat = flat_select(server_state.params, adaptive_mask)
    personal = mix(global_flat, client_state["local"], client_state["ala"])
    trained = client_state["trained"] > 0
    personal = jax.tree.map(lambda p, g: jnp.where(trained, p, g), personal, global_flat)
    return with_site(merge(server_state.params, personal), client_state["site"])

  def global_with_site(server_state: ServerState, client_state):
    """The official test's model: the global weights with the site's own embedding."""
    return with_site(server_state.params, client_state["site"])

  return FederatedAlgorithm(init, {"clients": CohortSpec(client_init, start, step, finish, phases=hp.phases)},
                            averaging_server_update(server_tx), eval_variables,
                            eval_variants={"global": global_with_site})
