"""The one prepared-dataset format every source is converted into.

A prepared dataset is a directory holding two files:

* ``arrays.npz`` - one row per 2-D image (a volume is stored as its slices):

  ==============  ==================  ===============================================
  key             dtype / shape       meaning
  ==============  ==================  ===============================================
  ``images``      uint8 [N, H, W, C]  required; C is 1 (grey) or 3 (RGB)
  ``group``       str [N]             required; patient / lesion / volume id. Every
                                      split and partition keeps a group together.
  ``site``        str [N]             required; acquiring site ("" when unknown)
  ``split``       str [N]             required; ``train`` / ``val`` / ``test``
  ``labels``      int32 [N]           optional class label, -1 = none
  ``masks``       uint8 [N, H, W]     optional segmentation, 0 = background
  ``scribbles``   uint8 [N, H, W]     optional weak label, ``meta.ignore_index`` =
                                      unannotated
  ``fov``         uint8 [N, H, W]     optional region where metrics are computed
  ``masks_2nd``   uint8 [N, H, W]     optional second human observer's masks, 255 =
                                      not available (DRIVE test images)
  ``slice_idx``   int32 [N]           optional position of the slice in its volume
  ``spacing``     float32 [N, 3]      optional (row, col, slice) spacing in mm
  ==============  ==================  ===============================================

* ``meta.json`` - ``{"format_version", "name", "num_classes", "class_names",
  "num_mask_classes", "mask_names", "ignore_index", "source", ...}``.

The directory is written to a temporary sibling and renamed into place, so a
failed conversion never leaves a half-written dataset behind. It gets the permissions
the user's umask gives a new folder (0755 under umask 022), not a temporary folder's 0700.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from typing import Any

import numpy as np

FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"
REQUIRED_KEYS = ("images", "group", "site", "split")
OPTIONAL_KEYS = ("labels", "masks", "scribbles", "fov", "masks_2nd", "slice_idx", "spacing")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
  """A prepared dataset is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  """A prepared dataset in memory: ``arrays`` as in the module docstring."""

  arrays: dict[str, np.ndarray]
  meta: dict[str, Any]

  def __len__(self) -> int:
    return int(self.arrays["images"].shape[0])

  def has(self, key: str) -> bool:
    return key in self.arrays

  def select(self, rows: np.ndarray) -> PreparedDataset:
    """Returns the rows ``rows`` (indices or a boolean mask) of every array."""
    return PreparedDataset({k: v[rows] for k, v in self.arrays.items()}, self.meta)

  def with_column(self, key: str, values: np.ndarray) -> PreparedDataset:
    """A copy with ``arrays[key] = values`` (one value per row)."""
    if len(values) != len(self):
      raise ValueError(f"column {key!r} has {len(values)} values for {len(self)} rows")
    return PreparedDataset({**self.arrays, key: values}, self.meta)

  def split(self, name: str) -> PreparedDataset:
    return self.select(self.arrays["split"] == name)


def validate(arrays: dict[str, np.ndarray], where: str = "arrays") -> None:
  """Raises DatasetError naming the first key that breaks the format."""
  for key in REQUIRED_KEYS:
    if key not in arrays:
      raise DatasetError(f"{where}: required key {key!r} is missing; present: {sorted(arrays)}")
  unknown = set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
  if unknown:
    raise DatasetError(f"{where}: unknown keys {sorted(unknown)}; allowed: {REQUIRED_KEYS + OPTIONAL_KEYS}")
  images = arrays["images"]
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
    raise DatasetError(f"{where}: 'images' must be uint8 [N, H, W, 1|3]; got {images.dtype} {images.shape}")
  n, h, w = images.shape[:3]
  for key, value in arrays.items():
    if value.shape[0] != n:
      raise DatasetError(f"{where}: {key!r} has {value.shape[0]} rows, 'images' has {n}")
    if key in ("masks", "scribbles", "fov", "masks_2nd") and value.shape != (n, h, w):
      raise DatasetError(f"{where}: {key!r} must be [N, H, W] = {(n, h, w)}; got {value.shape}")
  bad_splits = set(np.unique(arrays["split"]).tolist()) - set(SPLITS)
  if bad_splits:
    raise DatasetError(f"{where}: split values {sorted(bad_splits)} not in {SPLITS}")


def save_prepared(arrays: dict[str, np.ndarray], meta: dict[str, Any], out_dir: str) -> str:
  """Validates and writes a prepared dataset atomically; returns ``out_dir``.

  Raises:
    DatasetError: the arrays break the format, or ``out_dir`` exists already.
  """
  validate(arrays)
  arrays = {k: _canonical(k, v) for k, v in arrays.items()}
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise DatasetError(f"output directory {out_dir} exists already; remove it or choose another --out")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = _make_sibling_dir(parent)
  try:
    np.savez_compressed(os.path.join(tmp, ARRAYS_FILE), **arrays)
    full_meta = {"format_version": FORMAT_VERSION, **meta}
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(full_meta, f, indent=1, sort_keys=True)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _make_sibling_dir(parent: str) -> str:
  """A new, uniquely named hidden folder in ``parent`` with the umask's permissions (``tempfile.mkdtemp``
  would make it owner-only, and the rename would keep that)."""
  while True:
    path = os.path.join(parent, f".prepare-{secrets.token_hex(6)}")
    try:
      os.mkdir(path)  # mode 0o777 minus the umask, like any folder the user creates
      return path
    except FileExistsError:
      continue


def _canonical(key: str, value: np.ndarray) -> np.ndarray:
  if key in ("group", "site", "split"):
    return np.asarray(value).astype(str)
  if key in ("labels", "slice_idx"):
    return np.asarray(value, dtype=np.int32)
  if key == "spacing":
    return np.asarray(value, dtype=np.float32)
  return np.asarray(value, dtype=np.uint8)


def load_prepared(root: str, prepare_hint: str = "") -> PreparedDataset:
  """Loads a prepared dataset directory.

  Raises:
    DatasetError: naming the path and the command that prepares it when the
      directory, one of its files or a required key is missing.
  """
  hint = prepare_hint or "python -m fedjax_med.data.prepare NAME --raw RAW_DIR --out " + str(root)
  if not os.path.isdir(root):
    raise DatasetError(f"dataset directory {root} does not exist; prepare it with: {hint}")
  for name in (ARRAYS_FILE, META_FILE):
    if not os.path.isfile(os.path.join(root, name)):
      raise DatasetError(f"{os.path.join(root, name)} is missing (half-prepared dataset?); prepare it with: {hint}")
  with open(os.path.join(root, META_FILE)) as f:
    meta = json.load(f)
  try:
    with np.load(os.path.join(root, ARRAYS_FILE), allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise DatasetError(f"{os.path.join(root, ARRAYS_FILE)} cannot be read ({e}); prepare it again with: {hint}") from e
  validate(arrays, where=root)
  return PreparedDataset(arrays, meta)
