"""Label budgets of semi-supervised multi-task learning (MultiMix): how many training images keep their class
label and how many keep their mask.

``class_budget`` / ``mask_budget`` rows of the training split (``-1`` = all) are drawn at random with ``seed``,
independently for the two tasks (as the official code's two ``random_split`` calls over two datasets). Hidden
class labels become ``-1``; the per-row flags ``cls_labeled``, ``seg_labeled`` and ``seg_unlabeled`` (uint8) say
what a row keeps.
The draw happens before the clients are formed, so a federated run holds the same labels as the centralised one.
"""

from __future__ import annotations

import numpy as np

from fedjax_med.data.format import DatasetError, PreparedDataset


def _chosen(count: int, budget: int, rng: np.random.Generator, what: str) -> np.ndarray:
  if budget < 0 or budget >= count:
    return np.ones(count, bool)
  if budget == 0:
    raise DatasetError(f"config.data.{what} = 0 leaves no labeled row; use -1 for all or a positive count")
  keep = np.zeros(count, bool)
  keep[rng.choice(count, budget, replace=False)] = True
  return keep


def apply_budgets(train: PreparedDataset, class_budget: int, mask_budget: int, seed: int) -> PreparedDataset:
  """``train`` with labels hidden outside the class budget and ``cls_labeled`` / ``seg_labeled`` flags."""
  for key in ("labels", "masks"):
    if not train.has(key):
      raise DatasetError(f"multi-task budgets need '{key}' in the training data; it has {sorted(train.arrays)}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 2021]))
  labeled = train.arrays["labels"] >= 0
  cls = np.zeros(len(train), bool)
  cls[np.flatnonzero(labeled)[_chosen(int(labeled.sum()), class_budget, rng, "class_budget")]] = True
  seg = _chosen(len(train), mask_budget, rng, "mask_budget")
  arrays = dict(train.arrays)
  arrays["labels"] = np.where(cls, arrays["labels"], -1).astype(np.int32)
  arrays["cls_labeled"] = cls.astype(np.uint8)
  arrays["seg_labeled"] = seg.astype(np.uint8)
  arrays["seg_unlabeled"] = (~seg).astype(np.uint8)  # separate flag: zero-padded rows must have neither
  return PreparedDataset(arrays, train.meta)
