"""ACDC cardiac cine-MRI from the original download (NIfTI, read with nibabel).

Layout: ``training/patientXXX/`` (and optionally ``testing/patientXXX/``) holding ``Info.cfg``
(``ED: 1``, ``ES: 12``, ``Group: DCM`` ...), ``patientXXX_frameYY.nii.gz`` and
``patientXXX_frameYY_gt.nii.gz`` (0 background, 1 RV, 2 myocardium, 3 LV); optional scribbles
``patientXXX_frameYY_scribble.nii.gz`` (0-3 classes, 4 = unannotated). Volumes are ``[H, W, S]``.
Each volume's intensities are clipped at its 99th percentile and min-max scaled to 0..255; each
slice is resized to ``size`` x ``size`` (default 128; bilinear image, nearest labels) and stored as
one row with group = patient, site = pathology group, slice_idx, and the in-plane spacing adjusted
for the resize. Split by patient: ``test_fraction`` (default 0.2) per pathology group, seeded.
Only frames that have a ``_gt`` file are kept.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from scipy import ndimage

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError


def _info(path: str) -> dict[str, str]:
  info = {}
  try:
    with open(path) as f:
      for line in f:
        if ":" in line:
          key, value = line.split(":", 1)
          info[key.strip()] = value.strip()
  except OSError as e:
    raise DatasetError(f"cannot read {path}: {e}") from e
  return info


def _load(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
  import nibabel as nib

  try:
    image = nib.load(path)
    return np.asarray(image.get_fdata(), np.float32), tuple(float(z) for z in image.header.get_zooms()[:3])
  except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors for broken files
    raise DatasetError(f"cannot read NIfTI volume {path}: {e}") from e


def _to_uint8(volume: np.ndarray) -> np.ndarray:
  top = np.percentile(volume, 99)
  volume = np.clip(volume, volume.min(), top)
  span = max(float(volume.max() - volume.min()), 1e-8)
  return np.round((volume - volume.min()) / span * 255).astype(np.uint8)


def _resize_slice(array: np.ndarray, size: int, order: int) -> np.ndarray:
  zoom = (size / array.shape[0], size / array.shape[1])
  out = ndimage.zoom(array, zoom, order=order)
  return out[:size, :size]


@register("acdc")
def convert(raw: str, options: dict) -> tuple[dict[str, np.ndarray], dict]:
  common.require_dir(raw, "the ACDC download with training/patientXXX folders")
  size = int(options.get("size", 128))
  patients = sorted(glob.glob(os.path.join(raw, "*", "patient[0-9][0-9][0-9]")))
  if not patients:
    raise DatasetError(f"no patientXXX folders under {raw}/training or {raw}/testing")
  rows: dict[str, list] = {k: [] for k in ("images", "masks", "scribbles", "group", "site", "slice_idx", "spacing")}
  has_scribbles = None
  for folder in patients:
    patient = os.path.basename(folder)
    info = _info(common.require_file(os.path.join(folder, "Info.cfg"), f"the Info.cfg of {patient}"))
    for gt_path in sorted(glob.glob(os.path.join(folder, f"{patient}_frame[0-9][0-9]_gt.nii.gz"))):
      frame_path = gt_path.replace("_gt.nii.gz", ".nii.gz")
      common.require_file(frame_path, f"the image volume of {gt_path}")
      volume, zooms = _load(frame_path)
      labels, _ = _load(gt_path)
      scribble_path = gt_path.replace("_gt.nii.gz", "_scribble.nii.gz")
      scribbles = _load(scribble_path)[0] if os.path.isfile(scribble_path) else None
      if has_scribbles is not None and has_scribbles != (scribbles is not None):
        raise DatasetError(f"{scribble_path}: scribbles exist for some volumes but not for others")
      has_scribbles = scribbles is not None
      if volume.shape != labels.shape:
        raise DatasetError(f"{gt_path} has shape {labels.shape}, its image {volume.shape}")
      volume = _to_uint8(volume)
      spacing = (zooms[0] * volume.shape[0] / size, zooms[1] * volume.shape[1] / size, zooms[2])
      for s in range(volume.shape[2]):
        rows["images"].append(_resize_slice(volume[..., s], size, order=1)[..., None])
        rows["masks"].append(_resize_slice(labels[..., s].astype(np.uint8), size, order=0))
        if scribbles is not None:
          rows["scribbles"].append(_resize_slice(scribbles[..., s].astype(np.uint8), size, order=0))
        rows["group"].append(patient)
        rows["site"].append(info.get("Group", ""))
        rows["slice_idx"].append(s)
        rows["spacing"].append(spacing)
  group, site = np.array(rows["group"]), np.array(rows["site"])
  test = float(options.get("test_fraction", 0.2))
  split = common.grouped_split(group, site, {"train": 1 - test, "test": test}, int(options.get("seed", 0)))
  arrays = {"images": np.stack(rows["images"]), "masks": np.stack(rows["masks"]), "group": group, "site": site,
            "split": split, "slice_idx": np.array(rows["slice_idx"], np.int32),
            "spacing": np.array(rows["spacing"], np.float32), "labels": np.full(len(group), -1, np.int32)}
  if has_scribbles:
    arrays["scribbles"] = np.stack(rows["scribbles"])
  meta = {"name": "acdc", "num_classes": 0, "num_mask_classes": 4, "mask_names": ["background", "RV", "Myo", "LV"],
          "ignore_index": 4, "source": "ACDC original download (Bernard et al. 2018)", "size": size,
          "volumes": "rows sharing group (patient) and frame form a volume, ordered by slice_idx"}
  return arrays, meta
