"""MedMNIST ``.npz`` files (e.g. ``pneumoniamnist.npz``) as distributed on zenodo / medmnist.com.

Keys ``{train,val,test}_images`` ``[N, 28, 28]`` (grey) or ``[N, 28, 28, 3]`` (RGB) - the larger
MedMNIST+ sizes work too - and ``{train,val,test}_labels`` ``[N, 1]``. The official split is kept.
MedMNIST has no patient ids, so every image is its own group (``meta.groups`` says so: a
patient's images may sit in different splits and clients). Site = ``""``. Multi-label sets
(ChestMNIST's ``[N, 14]`` labels) are refused.

``--raw`` is the ``.npz`` file or a folder holding exactly one (option ``file`` picks one).
Options: ``num_classes`` (default: the largest label + 1), ``name`` (default: the file stem,
e.g. ``pneumoniamnist``).
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

SPLITS = ("train", "val", "test")
CLASS_NAMES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
    "dermamnist": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
}


def npz_path(raw: str, options: dict[str, Any]) -> str:
  """The MedMNIST file: ``raw`` itself, ``raw/<option file>``, or the only ``*.npz`` in ``raw``."""
  if os.path.isfile(raw):
    return raw
  common.require_dir(raw, "a MedMNIST .npz file or a folder holding one")
  if options.get("file"):
    return common.require_file(os.path.join(raw, options["file"]), "the MedMNIST .npz named by --option file=")
  found = sorted(glob.glob(os.path.join(raw, "*.npz")))
  if len(found) != 1:
    raise DatasetError(f"{raw} holds {len(found)} .npz files {[os.path.basename(p) for p in found]}; expected "
                       "exactly one MedMNIST file (or pick one with --option file=NAME.npz)")
  return found[0]


def read_parts(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{split: (images, labels)}`` of a MedMNIST npz, reading only those six keys."""
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data.files]
      if missing:
        raise DatasetError(f"{path} lacks the MedMNIST keys {missing}; its keys are {sorted(data.files)}")
      return {s: (data[f"{s}_images"], data[f"{s}_labels"]) for s in SPLITS}
  except DatasetError:
    raise
  except Exception as e:  # zipfile.BadZipFile, OSError, ValueError, pickle errors for a broken file
    raise DatasetError(f"cannot read {path} as a MedMNIST npz: {type(e).__name__}: {e}") from e


def from_parts(parts: dict[str, tuple[np.ndarray, np.ndarray]], name: str, source: str,
               num_classes: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Prepared arrays and meta from ``{split: (images, labels)}``; shared with the compact adapter."""
  for split, (images, labels) in parts.items():
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
      raise DatasetError(f"{source}: {split}_images has shape {images.shape}; expected [N, H, W] or [N, H, W, 3]")
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
      raise DatasetError(f"{source}: {split}_labels has shape {labels.shape}; expected [N, 1] (multi-label "
                         "MedMNIST sets are not supported)")
    if len(labels) != len(images):
      raise DatasetError(f"{source}: {split}_labels has {len(labels)} rows, {split}_images {len(images)}")
  images = np.concatenate([parts[s][0] for s in SPLITS])
  if images.dtype != np.uint8:
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.concatenate([parts[s][1].reshape(-1) for s in SPLITS]).astype(np.int32)
  split = np.concatenate([np.full(len(parts[s][1]), s) for s in SPLITS])
  found = int(labels.max()) + 1 if len(labels) else 0
  num_classes = found if num_classes is None else int(num_classes)
  if labels.min(initial=0) < 0 or found > num_classes:
    raise DatasetError(f"{source}: labels span {labels.min()}..{labels.max()}, more than num_classes={num_classes}")
  names = CLASS_NAMES.get(name.split("_")[0], [])
  arrays = {"images": images, "labels": labels, "split": split, "site": np.full(len(labels), ""),
            "group": np.char.add(f"{name}_", np.arange(len(labels)).astype(str))}
  meta = {"name": name, "num_classes": num_classes,
          "class_names": names if len(names) == num_classes else [str(i) for i in range(num_classes)],
          "num_mask_classes": 0, "mask_names": [], "ignore_index": None, "source": source,
          "groups": "MedMNIST has no patient ids: one group per image"}
  return arrays, meta


@register("medmnist", "pneumoniamnist")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts a MedMNIST npz; see the module docstring."""
  path = npz_path(raw, options)
  name = options.get("name") or os.path.splitext(os.path.basename(path))[0]
  num_classes = options.get("num_classes")
  return from_parts(read_parts(path), name, path, None if num_classes in (None, "") else int(num_classes))
