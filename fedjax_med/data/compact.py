"""Adapters for the team's compact npz files (the ``FEDJAX_MED_DATA`` folder), already-prepared copies.

``load_compact(name, path)`` turns one of these files into a ``PreparedDataset`` in memory,
reading only the keys it needs (HAM10000's file is 100 MB):

==================  =========================  ===========================================
name                file                       mapping
==================  =========================  ===========================================
``ham10000``        ``ham10000_64.npz``        images, labels, masks, split as stored;
                                               lesion_id -> group, localization -> site
``drive``           ``drive.npz``              images; vessel -> masks; fov; split
                                               training -> train, test -> test;
                                               vessel_2nd_test -> masks_2nd (255 on the
                                               training rows); group = ``drive_NN`` from
                                               image_id; site ``drive``
``acdc``            ``acdc_slices_128.npz``    images -> [N, 128, 128, 1]; labels -> masks;
                                               scribbles (4 = unannotated = meta
                                               ignore_index); group = ``patient%03d``;
                                               site = the pathology group column;
                                               slice_idx; labels = -1
``pneumoniamnist``  ``pneumoniamnist_28.npz``  the MedMNIST converter's logic
==================  =========================  ===========================================

ACDC's file has no split: the patients of each pathology group are shuffled with ``seed``
(default 0) and 20% of them (4 of 20) go to ``test``, the rest to ``train`` - the same rule
as the ACDC converter's default (``converters.common.grouped_split``). Users with the original
downloads run ``python -m fedjax_med.data.prepare NAME --raw DIR --out DIR`` instead.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

import numpy as np

from fedjax_med.data.converters import acdc as acdc_converter
from fedjax_med.data.converters import common, medmnist
from fedjax_med.data.converters.ham10000 import CLASSES as HAM_CLASSES
from fedjax_med.data.format import DatasetError, PreparedDataset

ACDC_TEST_FRACTION = 0.2


def _require(path: str) -> str:
  if not os.path.isfile(path):
    raise DatasetError(f"{path} does not exist; expected a compact npz of the team's data folder (FEDJAX_MED_DATA)")
  return path


def _load(path: str, keys: list[str]) -> dict[str, np.ndarray]:
  """Only ``keys`` of the npz at ``path``; DatasetError naming the file when it is missing, broken or lacks a key."""
  _require(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in keys if k not in data.files]
      if missing:
        raise DatasetError(f"{path} lacks the keys {missing}; its keys are {sorted(data.files)}; wrong file?")
      return {k: data[k] for k in keys}
  except DatasetError:
    raise
  except Exception as e:  # zipfile.BadZipFile, OSError, ValueError for a broken file
    raise DatasetError(f"{path} cannot be read as npz: {type(e).__name__}: {e}") from e


def per_group_mode(values: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, int]:
  """Each row's value replaced by its group's most frequent one (ties: the smallest), so that a group never
  spans two values; and the number of groups that had more than one value."""
  out = values.copy()
  _, inverse = np.unique(group, return_inverse=True)
  conflicts = 0
  for g in np.flatnonzero(np.bincount(inverse) > 1):
    rows = inverse == g
    names, counts = np.unique(values[rows], return_counts=True)
    if len(names) > 1:
      conflicts += 1
      out[rows] = names[np.argmax(counts)]
  return out, conflicts


def ham10000(path: str, seed: int = 0) -> PreparedDataset:
  """``ham10000_64.npz``: its lesion-grouped 70/10/20 split is kept (``seed`` is unused)."""
  del seed
  d = _load(path, ["images", "labels", "masks", "split", "lesion_id", "localization"])
  group = d["lesion_id"].astype(str)
  site, conflicts = per_group_mode(d["localization"].astype(str), group)
  arrays = {"images": d["images"], "labels": d["labels"].astype(np.int32), "masks": d["masks"],
            "group": group, "site": site, "split": d["split"].astype(str)}
  meta = {"name": "ham10000", "num_classes": len(HAM_CLASSES), "class_names": list(HAM_CLASSES),
          "num_mask_classes": 2, "mask_names": ["background", "lesion"], "ignore_index": None, "source": path,
          "groups": "lesion_id",
          "sites": f"localization column, per lesion its most frequent value ({conflicts} lesions had images "
                   "recorded at different locations)"}
  return PreparedDataset(arrays, meta)


def drive(path: str, seed: int = 0) -> PreparedDataset:
  """``drive.npz``: 20 training + 20 test images; the 2nd observer exists for the test images only."""
  del seed
  d = _load(path, ["images", "vessel", "fov", "split", "image_id", "vessel_2nd_test"])
  stored = d["split"].astype(str)
  unknown = set(stored.tolist()) - {"training", "test"}
  if unknown:
    raise DatasetError(f"{path}: split values {sorted(unknown)}; expected 'training' / 'test'")
  split = np.where(stored == "training", "train", "test")
  test_rows = np.flatnonzero(split == "test")
  if len(d["vessel_2nd_test"]) != len(test_rows):
    raise DatasetError(f"{path}: vessel_2nd_test has {len(d['vessel_2nd_test'])} rows for {len(test_rows)} test images")
  second = np.full(d["vessel"].shape, 255, np.uint8)
  second[test_rows] = d["vessel_2nd_test"]  # stored in the order of the test rows
  arrays = {"images": d["images"], "masks": d["vessel"], "fov": d["fov"], "masks_2nd": second,
            "group": np.array([f"drive_{int(i):02d}" for i in d["image_id"]]), "site": np.full(len(split), "drive"),
            "split": split}
  meta = {"name": "drive", "num_classes": 0, "class_names": [], "num_mask_classes": 2,
          "mask_names": ["background", "vessel"], "ignore_index": None, "source": path,
          "groups": "one group per image (drive_NN)"}
  return PreparedDataset(arrays, meta)


def acdc(path: str, seed: int = 0) -> PreparedDataset:
  """``acdc_slices_128.npz``: patients split 80/20 train/test within each pathology group (seeded)."""
  d = _load(path, ["images", "labels", "scribbles", "patient_id", "slice_idx", "group"])
  group = np.char.mod("patient%03d", d["patient_id"].astype(np.int64))
  site = d["group"].astype(str)
  split = common.grouped_split(group, site, {"train": 1 - ACDC_TEST_FRACTION, "test": ACDC_TEST_FRACTION}, seed)
  arrays = {"images": d["images"][..., None], "masks": d["labels"], "scribbles": d["scribbles"], "group": group,
            "site": site, "split": split, "slice_idx": d["slice_idx"].astype(np.int32),
            "labels": np.full(len(group), -1, np.int32)}
  meta = {"name": "acdc", "num_classes": 0, "class_names": [], "num_mask_classes": len(acdc_converter.MASK_NAMES),
          "mask_names": acdc_converter.MASK_NAMES, "ignore_index": acdc_converter.UNANNOTATED, "source": path,
          "seed": seed, "test_fraction": ACDC_TEST_FRACTION, "scribbles": True,
          "volumes": "a volume = consecutive rows of one group (patient) with slice_idx 0..S-1, frames in order",
          "groups": "patient", "sites": "pathology group"}
  return PreparedDataset(arrays, meta)


def pneumoniamnist(path: str, seed: int = 0) -> PreparedDataset:
  """``pneumoniamnist_28.npz`` through the MedMNIST converter (official split sizes 4708/524/624)."""
  del seed
  arrays, meta = medmnist.from_parts(medmnist.read_parts(_require(path)), "pneumoniamnist", path, num_classes=2)
  return PreparedDataset(arrays, meta)


ADAPTERS: dict[str, Callable[..., PreparedDataset]] = {
    "ham10000": ham10000, "drive": drive, "acdc": acdc, "pneumoniamnist": pneumoniamnist}


def load_compact(name: str, path: str, seed: int = 0) -> PreparedDataset:
  """The team's compact npz ``path`` of dataset ``name`` as a PreparedDataset in memory.

  Args:
    name: ``ham10000``, ``drive``, ``acdc`` or ``pneumoniamnist``.
    path: the ``.npz`` file.
    seed: seed of the derived split where the file has none (ACDC).

  Raises:
    DatasetError: an unknown name (listing the known ones), or a missing, broken or wrong file.
  """
  if name not in ADAPTERS:
    close = difflib.get_close_matches(name, ADAPTERS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DatasetError(f"no compact-file adapter for dataset {name!r}; available: {sorted(ADAPTERS)}.{hint}")
  return ADAPTERS[name](path, seed=seed)
