"""The tasks: objectives that bind a model to a loss, and how a model is scored on them.

A task turns a flax model into ``loss_fn(params, model_state, batch, rng, train) ->
(loss, (model_state, metrics))`` used by the algorithms' local steps, and
``predict_fn(variables, images) -> probabilities`` used by evaluation.

Every task registers, under its ``config.task.name`` in :data:`TASKS`, a :class:`TaskKind`: its config-facing
builder (the only place that reads ``config.task``) and its evaluation report. A new task is one builder here
with ``@register(name, report=...)``; ``experiment.build`` and ``train.report_of`` look it up by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_med import evaluation, losses
from fedjax_med.algorithms.common import apply_train
from fedjax_med.data import budgets
from fedjax_med.data.format import PreparedDataset
from fedjax_med.engine.types import Batch, PyTree
from fedjax_med.registry import Registry


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


# -- the registry: config-facing builders and evaluation reports ------------------------------------------------------
class TaskData(NamedTuple):
  """What a task's builder may read of the run besides the config and the model."""

  meta: dict  # the dataset's meta
  train: PreparedDataset | None  # the training rows before the partition (None: read lazily, e.g. TFDS)
  num_classes: int  # the model's number of outputs (meta[TaskKind.num_classes_key])
  ignore_index: int  # the label of unannotated pixels in the weak labels


class LabelsPresent(NamedTuple):
  """Which labels a dataset has (``experiment.check_data_fits``)."""

  labels: bool  # class labels
  masks: bool  # segmentation masks
  weak: bool  # scribbles or segmentation masks


def needs_nothing(config: ml_collections.ConfigDict, present: LabelsPresent) -> str:
  del config, present
  return ""


@dataclasses.dataclass(frozen=True)
class TaskKind:
  """What a task registers under its name.

  Attributes:
    build: ``(config, model, data: TaskData) -> Task``.
    report: ``(exp, variables, dataset) -> {metric: value}``: ``variables`` scored on ``dataset`` with the
      experiment's jitted predictions (``exp.predict``, and ``exp.predict_seg`` for a task with ``predict_seg_fn``).
    num_classes_key: the dataset meta entry that gives the model's number of outputs.
    model_meta: dataset meta entries passed to the model as keyword arguments unless the config sets them.
    needs: ``(config, LabelsPresent) -> ""``, or what the task needs of the data that it lacks (e.g.
      ``"class labels"``), for the error.
  """

  build: Callable[[ml_collections.ConfigDict, nn.Module, TaskData], Task]
  report: Callable[[Any, PyTree, PreparedDataset], dict]
  num_classes_key: str = "num_classes"
  model_meta: tuple[str, ...] = ()
  needs: Callable[[ml_collections.ConfigDict, LabelsPresent], str] = needs_nothing


TASKS = Registry("task")


def register(name: str, *, report: Callable, num_classes_key: str = "num_classes", model_meta: tuple[str, ...] = (),
             needs: Callable[[ml_collections.ConfigDict, LabelsPresent], str] = needs_nothing) -> Callable:
  """Registers a config-facing task builder under ``name`` with its evaluation ``report`` (see :class:`TaskKind`)."""

  def decorator(build):
    TASKS.add(name, TaskKind(build, report, num_classes_key, model_meta, needs))
    return build

  return decorator


def get_task(name: str) -> TaskKind:
  return TASKS.get(name, what="config.task.name")


def predict_rows(exp, predict: Callable, variables: PyTree, dataset: PreparedDataset) -> np.ndarray:
  """``predict`` on every image of ``dataset``, in batches of ``config.eval.batch_size``."""
  return evaluation.predict_all(predict, variables, dataset.arrays["images"], exp.config.eval.batch_size)


def classification_report(exp, variables: PyTree, dataset: PreparedDataset) -> dict:
  probs = predict_rows(exp, exp.predict, variables, dataset)
  return evaluation.classification_report(probs, dataset, exp.meta["num_classes"])


def segmentation_report(exp, variables: PyTree, dataset: PreparedDataset) -> dict:
  probs = predict_rows(exp, exp.predict, variables, dataset)
  return evaluation.segmentation_report(probs, dataset, hd95=exp.config.eval.hd95)


def representation_report(exp, variables: PyTree, dataset: PreparedDataset) -> dict:
  features = predict_rows(exp, exp.predict, variables, dataset)
  return evaluation.partition_retrieval_report(features, dataset, exp.config.data.num_partitions)


def multitask_report(exp, variables: PyTree, dataset: PreparedDataset) -> dict:
  """The class metrics, and the segmentation metrics prefixed ``seg_``; the classes are scored on the
  experiment's ``cls_eval_dataset`` when it has one (``data.cls_source``)."""
  seg_probs = predict_rows(exp, exp.predict_seg, variables, dataset)
  seg = evaluation.segmentation_report(seg_probs, dataset, hd95=exp.config.eval.hd95)
  if exp.cls_eval_dataset is not None:
    dataset = exp.cls_eval_dataset
  probs = predict_rows(exp, exp.predict, variables, dataset)
  return {**evaluation.classification_report(probs, dataset, exp.meta["num_classes"]),
          **{f"seg_{k}": v for k, v in seg.items()}}


@register("classification", report=classification_report,
          needs=lambda config, present: "" if present.labels else "class labels")
def build_classification(config: ml_collections.ConfigDict, model: nn.Module, data: TaskData) -> Task:
  del config, data
  return classification(model)


@register("segmentation", report=segmentation_report, num_classes_key="num_mask_classes",
          needs=lambda config, present: "" if present.masks else "segmentation masks")
def build_segmentation(config: ml_collections.ConfigDict, model: nn.Module, data: TaskData) -> Task:
  del data
  return segmentation(model, dice_weight=config.task.dice_weight, ce_weight=config.task.ce_weight)


@register("weak_segmentation", report=segmentation_report, num_classes_key="num_mask_classes",
          needs=lambda config, present: "" if present.weak else "scribbles or segmentation masks")
def build_weak_segmentation(config: ml_collections.ConfigDict, model: nn.Module, data: TaskData) -> Task:
  t = config.task
  return weak_segmentation(model, data.ignore_index, t.crf_weight, t.crf_radius, t.crf_sigma_xy, t.crf_sigma_rgb,
                           tuple(config.data.mean), tuple(config.data.std))


@register("representation", report=representation_report, num_classes_key="num_mask_classes")
def build_representation(config: ml_collections.ConfigDict, model: nn.Module, data: TaskData) -> Task:
  del config, data
  return representation(model)


def multitask_needs(config: ml_collections.ConfigDict, present: LabelsPresent) -> str:
  """Masks; and class labels unless a second dataset gives them (``data.cls_source``)."""
  if not present.masks:
    return "segmentation masks"
  if not present.labels and not config.data.cls_source.name:
    return "class labels (or a config.data.cls_source)"
  return ""


@register("multitask", report=multitask_report, model_meta=("num_mask_classes",), needs=multitask_needs)
def build_multitask(config: ml_collections.ConfigDict, model: nn.Module, data: TaskData) -> Task:
  """MultiMix; ``task.distribution_alignment`` starts from the labeled class prior of ``data.train`` (pooled over
  the clients)."""
  t = config.task
  class_prior = None
  if t.get("distribution_alignment", False):
    if data.train is None:
      raise ValueError("config.task.distribution_alignment needs the labeled class prior of the training data")
    class_prior = tuple(budgets.labeled_class_prior(data.train, data.num_classes))
  return multitask(model, cls_weight=t.cls_weight, dice_weight=t.dice_weight, ssl_weight=t.ssl_weight,
                   consistency_weight=t.consistency_weight, threshold=t.threshold, class_prior=class_prior,
                   alignment_momentum=t.get("alignment_momentum") if class_prior is not None else None)
