"""Supervised objectives that bind a model to a loss: classification and segmentation.

A task turns a flax model into ``loss_fn(params, model_state, batch, rng, train) ->
(loss, (model_state, metrics))`` used by the algorithms' local steps, and
``predict_fn(variables, images) -> probabilities`` used by evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import losses
from fedjax_med.algorithms.common import apply_train
from fedjax_med.engine.types import Batch, PyTree

TASKS = ("classification", "segmentation", "weak_segmentation", "representation", "multitask")


class Task(NamedTuple):
  name: str
  loss_fn: Callable[..., tuple[jax.Array, tuple[PyTree, dict]]]
  predict_fn: Callable[[PyTree, jax.Array], jax.Array]
  ignore_index: int = -1  # weak_segmentation: the label of unannotated pixels
  predict_seg_fn: Callable[[PyTree, jax.Array], jax.Array] | None = None  # multitask: the segmentation output
  # variable collections the loss carries from step to step (not parameters), added to the model's variables at
  # init; e.g. multitask's running mean for distribution alignment
  extra_variables: PyTree | None = None


def apply_model(model: nn.Module, params: PyTree, model_state: PyTree, images: jax.Array, rng: jax.Array,
                train: bool) -> tuple[dict, PyTree]:
  """Runs the model; returns (outputs dict, updated non-param collections such as batch_stats)."""
  if train:
    return apply_train(model, params, model_state, images, rng)
  return model.apply({"params": params, **model_state}, images, train=False, rngs={"dropout": rng}), model_state


def classification(model: nn.Module) -> Task:
  """Cross-entropy on ``batch['labels']`` (negative = unlabeled, weight 0)."""

  def loss_fn(params, model_state, batch: Batch, rng, train=True):
    outputs, model_state = apply_model(model, params, model_state, batch["images"], rng, train)
    per_example = losses.cross_entropy(outputs["logits"], batch["labels"])
    loss = losses.weighted_mean(per_example, (batch["labels"] >= 0).astype(jnp.float32))
    accuracy = jnp.mean(jnp.argmax(outputs["logits"], -1) == batch["labels"])
    return loss, (model_state, {"loss": loss, "accuracy": accuracy})

  def predict_fn(variables, images):
    return jax.nn.softmax(model.apply(variables, images, train=False)["logits"], axis=-1)

  return Task("classification", loss_fn, predict_fn)


def segmentation(model: nn.Module, dice_weight: float, ce_weight: float) -> Task:
  """``ce_weight`` x pixel cross-entropy + ``dice_weight`` x soft Dice on ``batch['masks']``.

  ``batch['weights']`` (e.g. the field of view) weights pixels in both terms.
  """

  def loss_fn(params, model_state, batch: Batch, rng, train=True):
    outputs, model_state = apply_model(model, params, model_state, batch["images"], rng, train)
    logits, masks, weights = outputs["logits"], batch["masks"], batch["weights"]
    ce = losses.weighted_mean(losses.cross_entropy(logits, masks, weights), weights * (masks >= 0))
    dice = jnp.mean(losses.soft_dice_loss(logits, masks, weights))
    loss = ce_weight * ce + dice_weight * dice
    return loss, (model_state, {"loss": loss, "ce": ce, "dice_loss": dice})

  def predict_fn(variables, images):
    return jax.nn.softmax(model.apply(variables, images, train=False)["logits"], axis=-1)

  return Task("segmentation", loss_fn, predict_fn)


def weak_segmentation(model: nn.Module, ignore_index: int, crf_weight: float, crf_radius: int, crf_sigma_xy: float,
                      crf_sigma_rgb: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Task:
  """Partial cross-entropy on ``batch['scribbles']`` (``ignore_index`` = unannotated) + ``crf_weight`` x the gated
  CRF loss on the softmax (the weakly-supervised baselines of FedICRA); prediction as :func:`segmentation`."""

  def loss_fn(params, model_state, batch: Batch, rng, train=True):
    outputs, model_state = apply_model(model, params, model_state, batch["images"], rng, train)
    image = batch["images"] * jnp.asarray(std) + jnp.asarray(mean)  # back to [0, 1] intensities
    loss, metrics = losses.partial_ce_crf(outputs["logits"], batch["scribbles"], image, ignore_index, crf_weight,
                                          crf_radius, crf_sigma_xy, crf_sigma_rgb)
    return loss, (model_state, {"loss": loss, **metrics})

  def predict_fn(variables, images):
    return jax.nn.softmax(model.apply(variables, images, train=False)["logits"], axis=-1)

  return Task("weak_segmentation", loss_fn, predict_fn, ignore_index)


MULTITASK_STREAMS = ("cls_images", "weak", "strong", "seg_images", "seg_u", "seg_u_photo")


def multitask(model: nn.Module, *, cls_weight: float, dice_weight: float, ssl_weight: float,
              consistency_weight: float, threshold: float, class_prior: Sequence[float] | None = None,
              alignment_momentum: float | None = None) -> Task:
  """MultiMix's objective (Haque et al., MELBA 2021) on the streams of ``data.batch_mode='multitask'``:

  ``cls_weight`` x CE on labeled images + ``dice_weight`` x soft Dice on labeled masks + ``ssl_weight`` x FixMatch
  on the weak / strong pair + ``consistency_weight`` x the unlabeled segmentation consistency
  (``losses.multitask``). A weight of 0 drops its streams from the forward pass. With ``model.use_saliency`` the
  saliency bridge of the segmentation streams is computed inside the step (eval-mode classifier, no
  second-order terms).

  ``class_prior`` (``[num_classes]``, the labeled class distribution; None = off, the official code) turns on
  ReMixMatch's distribution alignment of the pseudo-labels (Berthelot et al., ICLR 2020): each training step
  updates the running mean of the weak view's probabilities (``alignment_momentum``; kept in the variables'
  ``distribution_alignment`` collection, starting at the prior, so nothing is corrected before the model's
  predictions drift from it), then aligns that batch's probabilities with the updated mean before the argmax and
  the threshold (``losses.multitask.align_distribution``).
  """
  from fedjax_med.losses import multitask as mt
  from fedjax_med.models.multimix import saliency

  used = {"cls_images": cls_weight > 0, "weak": ssl_weight > 0, "strong": ssl_weight > 0,
          "seg_images": dice_weight > 0, "seg_u": consistency_weight > 0, "seg_u_photo": consistency_weight > 0}
  streams = [name for name in MULTITASK_STREAMS if used[name]]
  seg_streams = {"seg_images", "seg_u", "seg_u_photo"}
  if not streams:
    raise ValueError("config.task: every multitask loss weight is 0")
  extra_variables = alignment_variables(class_prior, alignment_momentum, ssl_weight)
  prior = None if class_prior is None else jnp.asarray(class_prior, jnp.float32)

  def bridge(variables, images_by_stream):
    if not getattr(model, "use_saliency", False):
      return None
    return jnp.concatenate([saliency(model, variables, x) if name in seg_streams else jnp.zeros(x.shape[:3] + (1,))
                            for name, x in images_by_stream.items()])

  def pseudo_label_loss(outputs_weak, outputs_strong, state, train):
    """FixMatch's term and its metrics; with alignment, the state with the updated running mean."""
    if prior is None:
      loss, kept = mt.fixmatch_loss(outputs_weak, outputs_strong, threshold)
      return loss, {"kept_fraction": kept}, state
    if mt.ALIGNMENT_COLLECTION not in state:
      raise ValueError(f"distribution alignment needs the {mt.ALIGNMENT_COLLECTION!r} variables of "
                       "Task.extra_variables among the model's variables")
    mean = mt.update_unlabeled_mean(state[mt.ALIGNMENT_COLLECTION]["unlabeled_mean"], outputs_weak,
                                    alignment_momentum)
    loss, kept = mt.fixmatch_loss(outputs_weak, outputs_strong, threshold, prior, mean)
    if train:
      state = {**state, mt.ALIGNMENT_COLLECTION: {"unlabeled_mean": mean}}
    return loss, {"kept_fraction": kept, "unlabeled_mean_max": jnp.max(mean)}, state

  def loss_fn(params, model_state, batch: Batch, rng, train=True):
    images = {name: batch[name] for name in streams}
    x = jnp.concatenate(list(images.values()))
    net_state = {k: v for k, v in model_state.items() if k != mt.ALIGNMENT_COLLECTION}
    variables = {"params": params, **net_state}
    sal = bridge(variables, images)
    if train:
      outputs, net_state = apply_train(model, params, net_state, x, rng, saliency=sal)
    else:
      outputs = model.apply(variables, x, train=False, saliency=sal, rngs={"dropout": rng})
    model_state = {**model_state, **net_state}
    sizes = [images[name].shape[0] for name in streams]
    offsets = dict(zip(streams, [sum(sizes[:i]) for i in range(len(sizes))]))
    part = lambda key, name: outputs[key][offsets[name]:offsets[name] + images[name].shape[0]]
    metrics, loss = {}, jnp.zeros(())
    if cls_weight:
      per = losses.cross_entropy(part("logits", "cls_images"), batch["cls_labels"], batch["cls_weight"])
      metrics["cls"] = losses.weighted_mean(per, batch["cls_weight"] * (batch["cls_labels"] >= 0))
      loss = loss + cls_weight * metrics["cls"]
    if dice_weight:
      per = losses.soft_dice_loss(part("seg_logits", "seg_images"), batch["seg_masks"])
      metrics["dice_loss"] = losses.weighted_mean(per * batch["seg_weight"], batch["seg_weight"])
      loss = loss + dice_weight * metrics["dice_loss"]
    if ssl_weight:
      metrics["ssl"], ssl_metrics, model_state = pseudo_label_loss(part("logits", "weak"), part("logits", "strong"),
                                                                   model_state, train)
      metrics.update(ssl_metrics)
      loss = loss + ssl_weight * metrics["ssl"]
    if consistency_weight:
      metrics["seg_consistency"] = mt.segmentation_consistency(part("seg_logits", "seg_u"),
                                                               part("seg_logits", "seg_u_photo"))
      loss = loss + consistency_weight * metrics["seg_consistency"]
    return loss, (model_state, {"loss": loss, **metrics})

  def predict_fn(variables, images):
    return jax.nn.softmax(model.apply(variables, images, train=False)["logits"], axis=-1)

  def predict_seg_fn(variables, images):
    sal = saliency(model, variables, images) if getattr(model, "use_saliency", False) else None
    return jax.nn.softmax(model.apply(variables, images, train=False, saliency=sal)["seg_logits"], axis=-1)

  return Task("multitask", loss_fn, predict_fn, predict_seg_fn=predict_seg_fn, extra_variables=extra_variables)


def alignment_variables(class_prior: Sequence[float] | None, momentum: float | None, ssl_weight: float) -> dict | None:
  """The initial ``distribution_alignment`` collection (the running mean, starting at ``class_prior``), or None
  when alignment is off; ValueError for a prior or momentum that cannot work."""
  from fedjax_med.losses import multitask as mt

  if class_prior is None:
    return None
  prior = np.asarray(class_prior, np.float64)
  if prior.ndim != 1 or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
    raise ValueError(f"distribution alignment: the class prior must be a distribution over the classes; got {prior}")
  if momentum is None or not 0.0 <= momentum < 1.0:
    raise ValueError(f"config.task.alignment_momentum must be in [0, 1); got {momentum}")
  if not ssl_weight:
    raise ValueError("config.task.distribution_alignment aligns FixMatch's pseudo-labels: it needs "
                     "config.task.ssl_weight > 0 (modes encssl, multimix)")
  return {mt.ALIGNMENT_COLLECTION: {"unlabeled_mean": jnp.asarray(prior, jnp.float32)}}


def representation(model: nn.Module) -> Task:
  """Self-supervised pre-training: the algorithm owns the loss; prediction = L2-normalised projection [B, D]."""

  def loss_fn(params, model_state, batch: Batch, rng, train=True):
    raise NotImplementedError("the 'representation' task has no supervised loss: use an algorithm that defines "
                              "its own (e.g. algorithm.name='fcl')")

  def predict_fn(variables, images):
    projection = model.apply(variables, images, train=False)["projection"]
    return projection / jnp.maximum(jnp.linalg.norm(projection, axis=-1, keepdims=True), 1e-8)

  return Task("representation", loss_fn, predict_fn)
