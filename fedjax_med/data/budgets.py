"""Label budgets of semi-supervised multi-task learning (MultiMix): how many training images keep their class
label and how many keep their mask.

``class_budget`` / ``mask_budget`` rows of the training split (``-1`` = all) are drawn at random with ``seed``,
independently for the two tasks (as the official code's two ``random_split`` calls over two datasets). Hidden
class labels become ``-1``; the per-row flags ``cls_labeled``, ``seg_labeled`` and ``seg_unlabeled`` (uint8) say
what a row keeps.
The draw happens before the clients are formed, so a federated run holds the same labels as the centralised one.

MultiMix's paper takes the two tasks from two datasets (pneumonia diagnosis from one chest X-ray set, lung masks
from another): :func:`with_classification_stream` stacks a second dataset's rows under the first, flagged
``cls_pool`` (the classification streams draw only there; the segmentation streams never do).
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


def _class_rows(labels: np.ndarray, class_budget: int, rng: np.random.Generator) -> np.ndarray:
  """Boolean [N]: the ``class_budget`` rows (among those with a label) that keep their class label."""
  labeled = labels >= 0
  keep = np.zeros(len(labels), bool)
  keep[np.flatnonzero(labeled)[_chosen(int(labeled.sum()), class_budget, rng, "class_budget")]] = True
  return keep


def apply_budgets(train: PreparedDataset, class_budget: int, mask_budget: int, seed: int) -> PreparedDataset:
  """``train`` with labels hidden outside the class budget and ``cls_labeled`` / ``seg_labeled`` flags."""
  for key in ("labels", "masks"):
    if not train.has(key):
      raise DatasetError(f"multi-task budgets need '{key}' in the training data; it has {sorted(train.arrays)}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 2021]))
  cls = _class_rows(train.arrays["labels"], class_budget, rng)
  seg = _chosen(len(train), mask_budget, rng, "mask_budget")
  arrays = dict(train.arrays)
  arrays["labels"] = np.where(cls, arrays["labels"], -1).astype(np.int32)
  arrays["cls_labeled"] = cls.astype(np.uint8)
  arrays["seg_labeled"] = seg.astype(np.uint8)
  arrays["seg_unlabeled"] = (~seg).astype(np.uint8)  # separate flag: zero-padded rows must have neither
  return PreparedDataset(arrays, train.meta)


def with_classification_stream(seg_train: PreparedDataset, cls_train: PreparedDataset, class_budget: int,
                               mask_budget: int, seed: int) -> PreparedDataset:
  """Rows of ``seg_train`` (masks, ``mask_budget`` of them kept) followed by those of ``cls_train`` (class labels,
  ``class_budget`` of them kept; all-zero masks, flagged neither ``seg_labeled`` nor ``seg_unlabeled``).

  Images must have the same size and channels (resize first). ``cls_pool`` is 1 on the classification rows.
  Groups are prefixed ``cls:`` so that the two datasets' patient ids never merge.
  """
  if not seg_train.has("masks"):
    raise DatasetError(f"the segmentation dataset has no 'masks'; it has {sorted(seg_train.arrays)}")
  if not cls_train.has("labels"):
    raise DatasetError(f"the classification dataset has no 'labels'; it has {sorted(cls_train.arrays)}")
  seg_shape, cls_shape = seg_train.arrays["images"].shape[1:], cls_train.arrays["images"].shape[1:]
  if seg_shape != cls_shape:
    raise DatasetError(f"the two datasets' images differ in shape: segmentation {seg_shape}, classification "
                       f"{cls_shape}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 2021]))
  seg = _chosen(len(seg_train), mask_budget, rng, "mask_budget")
  cls = _class_rows(cls_train.arrays["labels"], class_budget, rng)
  n_seg, n_cls = len(seg_train), len(cls_train)
  zeros = lambda n: np.zeros(n, np.uint8)
  a, b = seg_train.arrays, cls_train.arrays
  arrays = {
      "images": np.concatenate([a["images"], b["images"]]),
      "masks": np.concatenate([a["masks"], np.zeros((n_cls, *a["masks"].shape[1:]), a["masks"].dtype)]),
      "labels": np.concatenate([np.full(n_seg, -1, np.int32), np.where(cls, b["labels"], -1).astype(np.int32)]),
      "group": np.concatenate([a["group"].astype(str), np.char.add("cls:", b["group"].astype(str))]),
      "site": np.concatenate([a["site"].astype(str), b["site"].astype(str)]),
      "split": np.concatenate([a["split"].astype(str), b["split"].astype(str)]),
      "cls_labeled": np.concatenate([zeros(n_seg), cls.astype(np.uint8)]),
      "seg_labeled": np.concatenate([seg.astype(np.uint8), zeros(n_cls)]),
      "seg_unlabeled": np.concatenate([(~seg).astype(np.uint8), zeros(n_cls)]),
      "cls_pool": np.concatenate([zeros(n_seg), np.ones(n_cls, np.uint8)]),
  }
  meta = dict(seg_train.meta, num_classes=cls_train.meta["num_classes"],
              class_names=cls_train.meta.get("class_names"), cls_source=cls_train.meta.get("name"))
  return PreparedDataset(arrays, meta)


def labeled_class_prior(train: PreparedDataset, num_classes: int) -> np.ndarray:
  """The class distribution ``[num_classes]`` (float64, sums to 1) of the training rows that keep their class label
  (``cls_labeled``, or every row with a label >= 0 when the flag is absent): the labeled prior of distribution
  alignment."""
  labels = train.arrays["labels"]
  keep = train.arrays["cls_labeled"].astype(bool) if train.has("cls_labeled") else labels >= 0
  counts = np.bincount(labels[keep & (labels >= 0)], minlength=num_classes).astype(np.float64)
  if len(counts) != num_classes or counts.sum() == 0:
    raise DatasetError(f"the labeled training rows give no class distribution over {num_classes} classes "
                       f"(counts {counts.tolist()})")
  return counts / counts.sum()
