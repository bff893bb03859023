"""Evaluation of a model on a held-out split: batched jitted prediction, metrics on the host."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import metrics
from fedjax_med.data import volumes
from fedjax_med.data.format import PreparedDataset
from fedjax_med.data.pipeline import normalize


def make_predict(predict_fn: Callable, mean: Sequence[float], std: Sequence[float], pad_multiple: int) -> Callable:
  """jitted ``(variables, uint8 images [B,H,W,C]) -> probabilities``, padding H, W to ``pad_multiple``."""

  @jax.jit
  def predict(variables, images):
    height, width = images.shape[1:3]
    pad_h, pad_w = (-height) % pad_multiple, (-width) % pad_multiple
    x = normalize(images, mean, std)
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    probs = predict_fn(variables, x)
    return probs[:, :height, :width] if probs.ndim == 4 else probs

  return predict


def predict_all(predict: Callable, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Predictions for every row; the last batch is padded so that one program serves all batches."""
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    outputs.append(np.asarray(predict(variables, padded))[: len(chunk)])
  return np.concatenate(outputs)


def classification_report(probs: np.ndarray, dataset: PreparedDataset, num_classes: int) -> dict[str, float]:
  labels = dataset.arrays["labels"]
  return metrics.classification_metrics(probs, labels, num_classes)


def segmentation_report(probs: np.ndarray, dataset: PreparedDataset, hd95: bool = False) -> dict[str, float]:
  """Dice / IoU per foreground class (mean over images whose ground truth is non-empty), inside the FOV if any.

  For binary tasks also the pixel AUROC of the foreground probability inside the FOV.
  """
  num_classes = probs.shape[-1]
  masks = dataset.arrays["masks"].astype(np.int64)
  region = dataset.arrays["fov"].astype(bool) if dataset.has("fov") else None
  pred = probs.argmax(-1)
  dice, iou, valid = metrics.dice_iou(pred, masks, num_classes, region=region)
  report = {"dice": float(metrics.reduce_metric(dice, valid, "mean")),
            "iou": float(metrics.reduce_metric(iou, valid, "mean"))}
  if num_classes > 2:
    per_class = metrics.reduce_metric(dice, valid, "mean_per_class")
    report.update({f"dice_class{c + 1}": float(v) for c, v in enumerate(per_class)})
  if num_classes == 2:
    inside = region if region is not None else np.ones(masks.shape, bool)
    report["auroc"] = float(metrics.binary_auroc(probs[..., 1][inside], masks[inside]))
  if dataset.has("masks_2nd") and (dataset.arrays["masks_2nd"] != 255).all():
    human, _, human_valid = metrics.dice_iou(dataset.arrays["masks_2nd"].astype(np.int64), masks, num_classes,
                                             region=region)
    report["dice_2nd_observer"] = float(metrics.reduce_metric(human, human_valid, "mean"))
  if dataset.has("slice_idx"):  # volumes: 3-D Dice per structure, mean over volumes
    per_volume = metrics.volume_dice(pred, masks, volumes.volume_ids(dataset), num_classes)
    per_class = np.nanmean(per_volume, axis=0)
    report.update({f"dice3d_class{c + 1}": float(v) for c, v in enumerate(per_class)})
    report["dice3d"] = float(np.nanmean(per_class))
  if hd95:  # per image (2-D, pixels), as FedICRA's evaluation; a class absent from both masks counts 0
    distances = metrics.hd95_per_class(pred, masks, num_classes)
    report["hd95"] = float(np.nanmean(distances)) if np.isfinite(distances).any() else float("nan")
    # a class in only one of prediction / ground truth has no distance: left out of hd95, counted here
    report["hd95_undefined_fraction"] = float(np.isnan(distances).mean())
    if num_classes > 2:
      for c in range(num_classes - 1):
        column = distances[:, c]
        report[f"hd95_class{c + 1}"] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
  return report


def partition_retrieval_report(features: np.ndarray, dataset: PreparedDataset, num_partitions: int) -> dict:
  """How well features ``[N, D]`` (L2-normalised) of held-out slices encode their position: for every slice,
  its nearest neighbour (cosine) among the slices of OTHER patients (``group``; a patient's ED and ES
  volumes look alike slice by slice); ``partition_top1`` = fraction whose neighbour lies in the same
  partition (chance ~ 1 / num_partitions); ``partition_similarity`` [S, S] = mean cosine similarity between
  slices of partitions a and b of different patients (a good encoder: a bright diagonal)."""
  partition = volumes.slice_partitions(dataset, num_partitions)
  group = dataset.arrays["group"]
  sim = features @ features.T
  sim[group[:, None] == group[None, :]] = -np.inf
  neighbour = np.argmax(sim, axis=1)
  onehot = np.eye(num_partitions)[partition]  # [N, S]
  finite = np.where(np.isfinite(sim), sim, 0.0)
  pairs = onehot.T @ np.isfinite(sim) @ onehot
  similarity = (onehot.T @ finite @ onehot) / np.maximum(pairs, 1)
  return {"partition_top1": float(np.mean(partition[neighbour] == partition)),
          "partition_similarity": similarity.tolist()}
