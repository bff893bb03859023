"""ACDC cardiac cine-MRI from the original download (NIfTI, read with nibabel).

Layout: ``training/patientXXX/`` (and optionally ``testing/patientXXX/``; patient folders are
found at any depth) each holding ``Info.cfg`` (lines ``ED: 1``, ``ES: 12``, ``Group: DCM`` ...),
``patientXXX_frameYY.nii.gz`` and ``patientXXX_frameYY_gt.nii.gz`` (0 background, 1 RV,
2 myocardium, 3 LV). Only frames with a ``_gt`` file are converted (ED and ES); the 4-D
``patientXXX_4d.nii.gz`` is ignored. Optional scribbles ``patientXXX_frameYY_scribble.nii.gz``
(0-3 the classes, 4 = unannotated) become ``scribbles`` with ``meta.ignore_index`` = 4; once one
volume has scribbles, all need them.

Volumes are ``[H, W, S]``. Intensities are normalised per volume: clipped to [min, 99th
percentile] and min-max scaled to 0..255 (uint8). Each slice is resized to ``size`` (option;
default 128, or ``H W``): bilinear for the image (``scipy.ndimage.zoom`` order 1), nearest for the
labels. One row per slice: group = ``patientXXX``, slice_idx = the slice's index in its volume,
spacing = (row, col, slice) mm from the header zooms with the in-plane spacing scaled by the
resize, site = the pathology group of Info.cfg (DCM, HCM, MINF, NOR, RV; an Info.cfg without
``Group:`` is an error), labels = -1,
masks = the ground truth. A volume is a run of consecutive rows of one group with slice_idx
0..S-1 (frames in increasing order; ``meta.phases`` gives each patient's ED/ES frame numbers).

Split by patient: a fraction ``test_fraction`` (option, default 0.2) of the patients of each
pathology group goes to ``test`` (a group with fewer than two patients stays in train), shuffled
with ``seed`` (default 0); the rest is ``train``.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import numpy as np
from scipy import ndimage

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

MASK_NAMES = ["background", "RV", "Myo", "LV"]
UNANNOTATED = 4


def read_info(path: str) -> dict[str, str]:
  """``Info.cfg`` as a dict: ``{"ED": "1", "ES": "12", "Group": "DCM", ...}``."""
  info = {}
  try:
    with open(path) as f:
      for line in f:
        if ":" in line:
          key, value = line.split(":", 1)
          info[key.strip()] = value.strip()
  except (OSError, UnicodeDecodeError) as e:
    raise DatasetError(f"cannot read {path}: {e}") from e
  return info


def read_volume(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
  """A 3-D NIfTI volume as float32 ``[H, W, S]`` and its voxel size (from the header zooms)."""
  import nibabel as nib

  try:
    image = nib.load(path)
    volume = np.asarray(image.get_fdata(dtype=np.float32))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
  except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib / gzip errors for broken files
    raise DatasetError(f"cannot read NIfTI volume {path}: {type(e).__name__}: {e}") from e
  if volume.ndim == 4 and volume.shape[3] == 1:
    volume = volume[..., 0]
  if volume.ndim != 3:
    raise DatasetError(f"{path} has shape {volume.shape}; expected a 3-D volume [H, W, S]")
  return volume, (zooms + (1.0, 1.0, 1.0))[:3]


def normalise(volume: np.ndarray) -> np.ndarray:
  """Clips to [min, 99th percentile] and scales to 0..255 as float32 (rounded later)."""
  low, high = float(volume.min()), float(np.percentile(volume, 99))
  if high <= low:
    return np.zeros(volume.shape, np.float32)
  return (np.clip(volume, low, high) - low) / (high - low) * 255.0


def resize_slice(array: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
  """``scipy.ndimage.zoom`` of one slice to exactly ``size`` (order 1 bilinear, 0 nearest)."""
  if array.shape == tuple(size):
    return array
  out = ndimage.zoom(array, (size[0] / array.shape[0], size[1] / array.shape[1]), order=order)
  out = out[: size[0], : size[1]]
  return np.pad(out, ((0, size[0] - out.shape[0]), (0, size[1] - out.shape[1])), mode="edge")


def _labels(volume: np.ndarray, path: str, top: int) -> np.ndarray:
  rounded = np.rint(volume)
  if rounded.min() < 0 or rounded.max() > top:
    raise DatasetError(f"{path} has values {rounded.min():g}..{rounded.max():g}; expected 0..{top}")
  return rounded.astype(np.uint8)


def _patients(raw: str) -> list[str]:
  found = glob.glob(os.path.join(raw, "**", "patient[0-9][0-9][0-9]"), recursive=True)
  return sorted((p for p in found if os.path.isdir(p)), key=os.path.basename)


@register("acdc")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts the ACDC download; see the module docstring."""
  common.require_dir(raw, "the ACDC download with training/patientXXX folders")
  size = common.parse_size(options.get("size", 128))
  if size is None:
    raise DatasetError("ACDC volumes differ in size: option size must be N or H W (default 128)")
  test_fraction = float(options.get("test_fraction", 0.2))
  if not 0 <= test_fraction < 1:
    raise DatasetError(f"option test_fraction={test_fraction} must be in [0, 1)")
  seed = int(options.get("seed", 0))
  patients = _patients(raw)
  if not patients:
    raise DatasetError(f"{os.path.join(raw, 'training')} holds no patientXXX folders; expected the ACDC download "
                       "(training/patient001/patient001_frame01.nii.gz ...)")
  keys = ("images", "masks", "scribbles", "group", "site", "slice_idx", "spacing")
  rows: dict[str, list] = {k: [] for k in keys}
  phases: dict[str, dict[str, int]] = {}
  with_scribbles, without_scribbles = [], []
  for folder in patients:
    patient = os.path.basename(folder)
    info_path = common.require_file(os.path.join(folder, "Info.cfg"), f"the Info.cfg of {patient}")
    info = read_info(info_path)
    if not info.get("Group"):  # the site of every row: an empty one would silently become a site named ""
      raise DatasetError(f"{info_path} has no 'Group:' line (the pathology group that becomes the patient's site); "
                         f"add one (Group: DCM, HCM, MINF, NOR or RV) or move {folder} out of the download "
                         "(early releases of testing/ have no groups)")
    phases[patient] = {k: int(info[k]) for k in ("ED", "ES") if re.fullmatch(r"\d+", info.get(k, ""))}
    gt_paths = sorted(glob.glob(os.path.join(folder, f"{patient}_frame[0-9][0-9]_gt.nii.gz")))
    if not gt_paths:
      raise DatasetError(f"{folder} holds no {patient}_frameYY_gt.nii.gz; expected the ground truth of ED and ES")
    for gt_path in gt_paths:
      image_path = common.require_file(gt_path.replace("_gt.nii.gz", ".nii.gz"), f"the image volume of {gt_path}")
      volume, zooms = read_volume(image_path)
      labels = _labels(read_volume(gt_path)[0], gt_path, 3)
      if labels.shape != volume.shape:
        raise DatasetError(f"{gt_path} has shape {labels.shape}, its image {image_path} {volume.shape}")
      scribble_path = gt_path.replace("_gt.nii.gz", "_scribble.nii.gz")
      scribbles = None
      if os.path.isfile(scribble_path):
        scribbles = _labels(read_volume(scribble_path)[0], scribble_path, UNANNOTATED)
        if scribbles.shape != volume.shape:
          raise DatasetError(f"{scribble_path} has shape {scribbles.shape}, its image {image_path} {volume.shape}")
        with_scribbles.append(scribble_path)
      else:
        without_scribbles.append(scribble_path)
      volume = normalise(volume)
      spacing = (zooms[0] * volume.shape[0] / size[0], zooms[1] * volume.shape[1] / size[1], zooms[2])
      for s in range(volume.shape[2]):
        image = resize_slice(volume[..., s], size, order=1)
        rows["images"].append(np.clip(np.rint(image), 0, 255).astype(np.uint8)[..., None])
        rows["masks"].append(resize_slice(labels[..., s], size, order=0))
        if scribbles is not None:
          rows["scribbles"].append(resize_slice(scribbles[..., s], size, order=0))
        rows["group"].append(patient)
        rows["site"].append(info["Group"])
        rows["slice_idx"].append(s)
        rows["spacing"].append(spacing)
  if with_scribbles and without_scribbles:
    raise DatasetError(f"{without_scribbles[0]} does not exist; expected a scribble volume for every frame "
                       f"since {with_scribbles[0]} exists")
  group, site = np.array(rows["group"]), np.array(rows["site"])
  split = common.grouped_split(group, site, {"train": 1 - test_fraction, "test": test_fraction}, seed)
  arrays = {"images": np.stack(rows["images"]), "masks": np.stack(rows["masks"]), "group": group, "site": site,
            "split": split, "slice_idx": np.array(rows["slice_idx"], np.int32),
            "spacing": np.array(rows["spacing"], np.float32), "labels": np.full(len(group), -1, np.int32)}
  if with_scribbles:
    arrays["scribbles"] = np.stack(rows["scribbles"])
  meta = {"name": "acdc", "num_classes": 0, "class_names": [], "num_mask_classes": len(MASK_NAMES),
          "mask_names": MASK_NAMES, "ignore_index": UNANNOTATED,
          "source": "ACDC original download (Bernard et al. 2018)", "size": list(size), "seed": seed,
          "test_fraction": test_fraction, "phases": phases, "scribbles": bool(with_scribbles),
          "normalisation": "per volume: clip to [min, 99th percentile], min-max to 0..255",
          "volumes": "a volume = consecutive rows of one group (patient) with slice_idx 0..S-1, frames in order",
          "groups": "patient", "sites": "pathology group (Info.cfg Group)"}
  return arrays, meta
