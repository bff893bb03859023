"""Classification metrics on the host (numpy), computed once per evaluation.

Conventions: one-vs-rest AUROC, sensitivity and specificity are averaged over the
classes present in ``labels`` (a class with no positives has no sensitivity or AUROC);
macro F1 averages over the classes present in ``labels`` or predictions (sklearn's
``f1_score(average='macro')`` over the union of labels), a class with no
prediction and no true sample being left out.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts, rows = true class, columns = predicted class."""
  return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def binary_auroc(scores: np.ndarray, targets: np.ndarray) -> float:
  """Area under the ROC curve by the Mann-Whitney U statistic with midranks for ties.

  ``scores`` ``[N]`` float, ``targets`` ``[N]`` in {0, 1}. NaN when one class is absent.
  O(N log N); fine for millions of pixels.
  """
  scores, targets = np.ravel(scores), np.ravel(targets).astype(bool)
  positives, negatives = int(targets.sum()), int((~targets).sum())
  if positives == 0 or negatives == 0:
    return float("nan")
  ranks = rankdata(scores)
  return float((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """Accuracy, balanced accuracy, macro AUROC / F1 / sensitivity / specificity, and per-class lists.

  Args:
    probs: ``[N, C]`` class probabilities (or scores).
    labels: ``[N]`` int in ``[0, C)``.
  """
  probs, labels = np.asarray(probs), np.asarray(labels).astype(np.int64)
  if probs.ndim != 2 or probs.shape != (len(labels), num_classes):
    raise ValueError(f"probs must be [N, num_classes] = {(len(labels), num_classes)}; got {probs.shape}")
  preds = probs.argmax(-1)
  cm = confusion_matrix(preds, labels, num_classes).astype(np.float64)
  tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
  tn = cm.sum() - support - predicted + tp
  present = support > 0
  with np.errstate(invalid="ignore", divide="ignore"):
    sensitivity = np.where(present, tp / support, np.nan)
    specificity = np.where(cm.sum() - support > 0, tn / (cm.sum() - support), np.nan)
    f1 = np.where(present | (predicted > 0), 2 * tp / (support + predicted), np.nan)
  auroc = np.array([binary_auroc(probs[:, c], labels == c) for c in range(num_classes)])
  nanmean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
  return {
      "accuracy": float(tp.sum() / max(len(labels), 1)),
      "balanced_accuracy": nanmean(sensitivity),
      "macro_auroc": nanmean(auroc),
      "macro_f1": nanmean(f1),
      "macro_sensitivity": nanmean(sensitivity),
      "macro_specificity": nanmean(specificity[present]),
      "sensitivity_per_class": sensitivity.tolist(),
      "specificity_per_class": specificity.tolist(),
      "auroc_per_class": auroc.tolist(),
  }
