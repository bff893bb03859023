"""Segmentation metrics per image (or volume) and per foreground class, on the host.

Conventions (like MONAI's ``ignore_empty``): an entry is *valid* when its ground
truth for that class is non-empty; reductions average valid entries only. For an
empty ground truth, Dice and IoU are 1 when the prediction is empty too and 0
otherwise (reported, not averaged). HD95 of two empty masks is 0 and of exactly
one empty mask NaN (excluded by ``nanmean``).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

REDUCTIONS = ("mean", "mean_per_class", "none")


def dice_iou(pred: np.ndarray, target: np.ndarray, num_classes: int,
             region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Dice and IoU of foreground classes 1..C-1 per item.

  Args:
    pred, target: int ``[B, H, W(, D)]`` label maps.
    region: optional bool of the same shape: only these pixels count (e.g. DRIVE's FOV).

  Returns:
    ``(dice [B, C-1], iou [B, C-1], valid [B, C-1])``.
  """
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  inside = np.ones(pred.shape, bool) if region is None else np.asarray(region, bool)
  axes = tuple(range(1, pred.ndim))
  dice, iou, valid = [], [], []
  for c in range(1, num_classes):
    p, t = (pred == c) & inside, (target == c) & inside
    inter, p_sum, t_sum = (p & t).sum(axes), p.sum(axes), t.sum(axes)
    union = p_sum + t_sum - inter
    empty = (p_sum + t_sum) == 0
    dice.append(np.where(empty, 1.0, 2 * inter / np.maximum(p_sum + t_sum, 1)))
    iou.append(np.where(empty, 1.0, inter / np.maximum(union, 1)))
    valid.append(t_sum > 0)
  return np.stack(dice, -1), np.stack(iou, -1), np.stack(valid, -1)


def reduce_metric(values: np.ndarray, valid: np.ndarray, mode: str = "mean"):
  """``mean`` over valid entries, ``mean_per_class`` ``[C]``, or ``none`` (NaN where invalid)."""
  if mode not in REDUCTIONS:
    raise ValueError(f"unknown reduction {mode!r}; available: {REDUCTIONS}")
  masked = np.where(valid, values, np.nan)
  if mode == "none":
    return masked
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class never present) give NaN
    return np.nanmean(masked) if mode == "mean" else np.nanmean(masked, axis=0)


def _surface(mask: np.ndarray) -> np.ndarray:
  """Boundary voxels: the mask minus its erosion with full connectivity."""
  structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
  return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred_mask: np.ndarray, target_mask: np.ndarray, spacing=None) -> float:
  """95th-percentile symmetric Hausdorff distance between mask surfaces.

  The maximum of the two directed 95th percentiles of surface-to-surface distances
  (the convention of MONAI's ``compute_hausdorff_distance(percentile=95)``), in
  pixels, or in mm when ``spacing`` (one value per axis) is given.
  """
  pred_mask, target_mask = np.asarray(pred_mask, bool), np.asarray(target_mask, bool)
  if not pred_mask.any() and not target_mask.any():
    return 0.0
  if not pred_mask.any() or not target_mask.any():
    return float("nan")
  sp, st = _surface(pred_mask), _surface(target_mask)
  to_target = ndimage.distance_transform_edt(~st, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
  return float(max(np.percentile(to_target[sp], 95), np.percentile(to_pred[st], 95)))


def hd95_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, spacing=None) -> np.ndarray:
  """``[B, C-1]`` HD95 of each foreground class of each item."""
  return np.array([[hd95(p == c, t == c, spacing) for c in range(1, num_classes)] for p, t in zip(pred, target)])


def volume_dice(pred: np.ndarray, target: np.ndarray, volume: np.ndarray, num_classes: int) -> np.ndarray:
  """3-D Dice per volume and foreground class, ``[V, num_classes - 1]``, from slice rows.

  Args:
    pred, target: int ``[N, H, W]`` label maps of N slices; volume: int ``[N]`` volume index 0..V-1.
  Returns:
    ``2 |P & G| / (|P| + |G|)`` over each volume's voxels; NaN where the class is absent from the volume's
    ground truth (left out of means, as the ACDC challenge does for absent structures).
  """
  num_volumes = int(volume.max()) + 1
  out = np.full((num_volumes, num_classes - 1), np.nan)
  for c in range(1, num_classes):
    p, g = (pred == c).reshape(len(pred), -1), (target == c).reshape(len(target), -1)
    inter = np.bincount(volume, (p & g).sum(1), num_volumes)
    size_p, size_g = np.bincount(volume, p.sum(1), num_volumes), np.bincount(volume, g.sum(1), num_volumes)
    present = size_g > 0
    out[present, c - 1] = 2 * inter[present] / (size_p[present] + size_g[present])
  return out
