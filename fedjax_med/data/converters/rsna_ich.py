"""RSNA intracranial hemorrhage (ICH) CT slices from the Kaggle download (name ``rsna_ich``).

Layout under the raw directory (Kaggle's rsna-intracranial-hemorrhage-detection):

* DICOM slices ``ID_<image>.dcm``, searched recursively (e.g. ``stage_2_train/``);
* the label CSV (``stage_2_train.csv``, or the file given by option ``csv``) with the header
  ``ID,Label`` and six rows per slice, ``ID_<image>_<subtype>,<0|1>``, for the subtypes epidural,
  intraparenchymal, intraventricular, subarachnoid, subdural and ``any``.

Pixels: the stored values times ``RescaleSlope`` plus ``RescaleIntercept`` give Hounsfield units,
windowed into one uint8 channel per window ``center/width`` (option ``windows``, default
``40/80,80/200,600/2800``: brain, subdural, bone), then resized (option ``size``, default 64).

Labels follow the official FedIRM code's 5-class convention (one-hot columns in the order above,
trained with a softmax over 5 classes, the class read by argmax):

* a slice with no hemorrhage (``any`` = 0 and no subtype) belongs to none of the 5 classes and is
  left out;
* a slice with several subtypes gets the first positive one in the order above - what argmax of
  its one-hot row gives in the official code - or, with option ``multi=drop``, is left out.

Groups are the DICOM ``PatientID`` (so a patient's slices stay in one split; the image id when the
tag is missing); the split is 70/10/20 train/val/test by patient, stratified by class (option
``seed``, default 0). Needs pydicom (``pip install fedjax_med[dicom]``).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
DEFAULT_WINDOWS = "40/80,80/200,600/2800"
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
MULTI = ("first", "drop")


def parse_windows(value: Any) -> list[tuple[float, float]]:
  """``"40/80,80/200"`` -> [(40, 80), (80, 200)] (center, width in HU)."""
  windows = []
  for item in common.option_list(value or DEFAULT_WINDOWS):
    try:
      center, width = (float(v) for v in item.split("/"))
    except ValueError as e:
      raise DatasetError(f"window {item!r} is not CENTER/WIDTH in Hounsfield units (e.g. 40/80)") from e
    if width <= 0:
      raise DatasetError(f"window {item!r} has a non-positive width")
    windows.append((center, width))
  return windows


def window(hu: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
  """Hounsfield units ``[H, W]`` -> uint8 ``[H, W, len(windows)]``, each window mapped linearly to 0..255."""
  channels = [np.clip((hu - (center - width / 2)) / width, 0.0, 1.0) for center, width in windows]
  return np.round(np.stack(channels, -1) * 255).astype(np.uint8)


def read_labels(path: str) -> dict[str, dict[str, int]]:
  """image id -> {subtype: 0/1} from Kaggle's ``ID,Label`` CSV."""
  labels: dict[str, dict[str, int]] = {}
  try:
    with open(path, newline="") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if not header or [h.strip() for h in header[:2]] != ["ID", "Label"]:
        raise DatasetError(f"{path} must start with the header ID,Label; got {header}")
      for line, row in enumerate(reader, start=2):
        if not row:
          continue
        image, _, subtype = row[0].strip().rpartition("_")
        if not image.startswith("ID_") or subtype not in (*SUBTYPES, "any") or len(row) < 2:
          raise DatasetError(f"{path} line {line}: {','.join(row)!r} is not ID_<image>_<subtype>,<0|1>")
        try:
          labels.setdefault(image, {})[subtype] = int(float(row[1]))
        except ValueError as e:
          raise DatasetError(f"{path} line {line}: label {row[1]!r} is not 0 or 1") from e
  except OSError as e:
    raise DatasetError(f"cannot read {path}: {e}") from e
  return labels


def class_of(subtypes: dict[str, int], multi: str) -> int | None:
  """The 5-class label of a slice, or None when it is left out (no hemorrhage, or several with multi=drop)."""
  positive = [i for i, name in enumerate(SUBTYPES) if subtypes.get(name, 0) == 1]
  if not positive or (len(positive) > 1 and multi == "drop"):
    return None
  return positive[0]


def read_slice(path: str) -> tuple[np.ndarray, str]:
  """(Hounsfield units ``[H, W]`` float32, PatientID) of one DICOM file; DatasetError naming a broken file."""
  import pydicom  # the ``dicom`` extra

  try:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
  except Exception as e:  # pydicom raises InvalidDicomError, AttributeError, ValueError, RuntimeError...
    raise DatasetError(f"cannot read DICOM slice {path}: {type(e).__name__}: {e}") from e
  if pixels.ndim != 2:
    raise DatasetError(f"DICOM slice {path} has pixel data of shape {pixels.shape}; expected one 2-D slice")
  slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
  return pixels * slope + intercept, str(ds.get("PatientID", "") or "")


@register("rsna_ich")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts the RSNA ICH download; see the module docstring."""
  try:
    import pydicom  # noqa: F401
  except ImportError as e:
    raise DatasetError("reading DICOM needs pydicom: pip install 'fedjax_med[dicom]'") from e
  common.require_dir(raw, "the RSNA ICH download (ID_*.dcm slices and stage_2_train.csv)")
  multi = str(options.get("multi", "first"))
  if multi not in MULTI:
    raise DatasetError(f"option multi={multi!r} is not allowed; allowed: {list(MULTI)}")
  csv_path = options.get("csv") or next(iter(common.find(raw, "stage_2_train.csv", "stage_1_train.csv")), "")
  common.require_file(csv_path or os.path.join(raw, "stage_2_train.csv"), "the label CSV ID,Label (or option csv)")
  labels = read_labels(csv_path)
  slices = {os.path.splitext(os.path.basename(p))[0]: p for p in common.find(raw, "ID_*.dcm")}
  if not slices:
    raise DatasetError(f"{raw} holds no ID_*.dcm slices; expected the DICOM folder of the download")
  size, windows = common.parse_size(options.get("size", 64)), parse_windows(options.get("windows"))
  images, classes, groups, left_out = [], [], [], {"no hemorrhage": 0, "several subtypes": 0}
  for image_id in sorted(labels):
    label = class_of(labels[image_id], multi)
    if label is None:
      positives = sum(labels[image_id].get(name, 0) for name in SUBTYPES)
      left_out["no hemorrhage" if positives == 0 else "several subtypes"] += 1
      continue
    if image_id not in slices:
      raise DatasetError(f"slice {image_id}.dcm, labeled in {csv_path}, is missing under {raw}")
    hu, patient = read_slice(slices[image_id])
    images.append(common.resize(window(hu, windows), size, nearest=False))
    classes.append(label)
    groups.append(patient or image_id)
  if not images:
    raise DatasetError(f"{csv_path} labels no hemorrhage slice present under {raw} (left out: {left_out})")
  label_array, group = np.array(classes, np.int32), np.array(groups)
  arrays = {"images": common.stack(images, "images", raw), "labels": label_array, "group": group,
            "site": np.full(len(group), ""),
            "split": common.grouped_split(group, label_array, FRACTIONS, int(options.get("seed", 0)))}
  meta = {"name": "rsna_ich", "num_classes": len(SUBTYPES), "class_names": list(SUBTYPES), "num_mask_classes": 0,
          "mask_names": [], "ignore_index": None, "source": f"RSNA ICH Kaggle download ({csv_path})",
          "windows": [list(w) for w in windows], "size": list(size) if size else None, "multi": multi,
          "left_out": left_out, "seed": int(options.get("seed", 0)), "groups": "DICOM PatientID",
          "split_fractions": FRACTIONS}
  return arrays, meta
