"""MedMNIST ``.npz`` files (e.g. pneumoniamnist.npz) as distributed on zenodo.

Keys ``{train,val,test}_images`` ``[N, 28, 28]`` or ``[N, 28, 28, 3]`` and ``{train,val,test}_labels``
``[N, 1]``. MedMNIST has no patient ids, so each image is its own group (the meta says so).
Option ``num_classes`` (default: max label + 1); ``file`` names the npz inside the raw directory
(default: the only ``*.npz`` there); ``name`` the dataset name (default: the file stem).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

SPLITS = ("train", "val", "test")


def _npz_path(raw: str, options: dict) -> str:
  if os.path.isfile(raw):
    return raw
  common.require_dir(raw, "a folder holding a MedMNIST .npz file")
  if options.get("file"):
    return common.require_file(os.path.join(raw, options["file"]), "the MedMNIST .npz named by --option file=")
  found = sorted(glob.glob(os.path.join(raw, "*.npz")))
  if len(found) != 1:
    raise DatasetError(f"expected exactly one .npz in {raw} (or --option file=NAME); found {found}")
  return found[0]


@register("medmnist", "pneumoniamnist")
def convert(raw: str, options: dict) -> tuple[dict[str, np.ndarray], dict]:
  path = _npz_path(raw, options)
  try:
    with np.load(path, allow_pickle=False) as data:
      parts = {s: (data[f"{s}_images"], data[f"{s}_labels"].reshape(-1)) for s in SPLITS}
  except KeyError as e:
    raise DatasetError(f"{path} lacks the MedMNIST key {e}") from e
  except (OSError, ValueError) as e:
    raise DatasetError(f"cannot read {path}: {e}") from e
  images = np.concatenate([parts[s][0] for s in SPLITS]).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.concatenate([parts[s][1] for s in SPLITS]).astype(np.int32)
  split = np.concatenate([np.full(len(parts[s][1]), s) for s in SPLITS])
  name = options.get("name") or os.path.splitext(os.path.basename(path))[0]
  arrays = {"images": images, "labels": labels, "group": np.char.add(f"{name}_", np.arange(len(labels)).astype(str)),
            "site": np.full(len(labels), ""), "split": split}
  meta = {"name": name, "num_classes": int(options.get("num_classes", labels.max() + 1)), "num_mask_classes": 0,
          "ignore_index": None, "groups": "MedMNIST has no patient ids: one group per image", "source": path}
  return arrays, meta
