"""HAM10000 / ISIC 2018 task 3 from the original download.

Layout (searched recursively under the raw directory):
  ``ISIC_*.jpg`` images (HAM10000_images_part_1/2 or ISIC2018_Task3_Training_Input);
  labels from ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, ..., localization) or from
  ``ISIC2018_Task3_Training_GroundTruth.csv`` (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC one-hot;
  lesion ids then come from ``ISIC2018_Task3_Training_LesionGroupings.csv`` if present, else each
  image is its own group); optional lesion masks ``ISIC_*_segmentation.png``.
Classes in DermaMNIST order: 0 akiec 1 bcc 2 bkl 3 df 4 mel 5 nv 6 vasc.
Options: ``size`` (default 64: bicubic images, nearest masks, aspect ratio squashed as in
MedMNIST), ``seed`` (default 0) of the 70/10/20 train/val/test split grouped by lesion and
stratified by class. Site = the ``localization`` column when present.
"""

from __future__ import annotations

import csv
import glob
import os

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
ISIC_COLUMNS = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}


def _find(raw: str, pattern: str) -> list[str]:
  return sorted(glob.glob(os.path.join(raw, "**", pattern), recursive=True))


def _read_csv(path: str) -> list[dict[str, str]]:
  try:
    with open(path, newline="") as f:
      return list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DatasetError(f"cannot read {path}: {e}") from e


def _records(raw: str) -> list[dict[str, str]]:
  """One dict per image: image_id, dx, lesion_id, localization."""
  metadata = _find(raw, "HAM10000_metadata*.csv")
  if metadata:
    rows = _read_csv(metadata[0])
    missing = {"image_id", "dx", "lesion_id"} - set(rows[0] if rows else {})
    if missing:
      raise DatasetError(f"{metadata[0]} lacks columns {sorted(missing)}")
    return rows
  truth = _find(raw, "ISIC2018_Task3_*GroundTruth*.csv")
  if not truth:
    raise DatasetError(f"no HAM10000_metadata.csv or ISIC2018_Task3_*GroundTruth*.csv under {raw}")
  groupings = _find(raw, "ISIC2018_Task3_*LesionGroupings*.csv")
  lesion = {r["image"]: r["lesion_id"] for r in _read_csv(groupings[0])} if groupings else {}
  records = []
  for row in _read_csv(truth[0]):
    hot = [ISIC_COLUMNS[c] for c in ISIC_COLUMNS if float(row[c]) > 0.5]
    if len(hot) != 1:
      raise DatasetError(f"{truth[0]}: image {row['image']} has {len(hot)} positive classes, expected 1")
    records.append({"image_id": row["image"], "dx": hot[0], "lesion_id": lesion.get(row["image"], row["image"]),
                    "localization": ""})
  return records


@register("ham10000", "isic2018")
def convert(raw: str, options: dict) -> tuple[dict[str, np.ndarray], dict]:
  common.require_dir(raw, "the HAM10000 / ISIC 2018 download (ISIC_*.jpg and a label CSV)")
  size = common.parse_size(options.get("size", 64))
  records = _records(raw)
  images_by_id = {os.path.splitext(os.path.basename(p))[0]: p for p in _find(raw, "ISIC_*.jpg")}
  masks_by_id = {os.path.basename(p)[: -len("_segmentation.png")]: p for p in _find(raw, "ISIC_*_segmentation.png")}
  images, masks, labels, groups, sites = [], [], [], [], []
  for record in records:
    image_id = record["image_id"]
    if image_id not in images_by_id:
      raise DatasetError(f"image {image_id}.jpg listed in the label CSV is missing under {raw}")
    if record["dx"] not in CLASSES:
      raise DatasetError(f"image {image_id}: unknown diagnosis {record['dx']!r}; expected one of {CLASSES}")
    images.append(common.resize(common.read_image(images_by_id[image_id], "RGB"), size, nearest=False))
    if masks_by_id:
      if image_id not in masks_by_id:
        raise DatasetError(f"mask {image_id}_segmentation.png is missing (other images have masks) under {raw}")
      mask = common.read_image(masks_by_id[image_id], "L") > 127
      masks.append(common.resize(mask.astype(np.uint8), size, nearest=True))
    labels.append(CLASSES.index(record["dx"]))
    groups.append(record["lesion_id"])
    sites.append(record.get("localization", ""))
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DatasetError(f"images under {raw} have different sizes {sorted(shapes)[:3]}...; pass --size")
  labels_arr, group = np.array(labels, np.int32), np.array(groups)
  arrays = {"images": np.stack(images), "labels": labels_arr, "group": group, "site": np.array(sites),
            "split": common.grouped_split(group, labels_arr, {"train": 0.7, "val": 0.1, "test": 0.2},
                                          int(options.get("seed", 0)))}
  if masks:
    arrays["masks"] = np.stack(masks)
  meta = {"name": "ham10000", "num_classes": len(CLASSES), "class_names": list(CLASSES),
          "num_mask_classes": 2 if masks else 0, "mask_names": ["background", "lesion"], "ignore_index": None,
          "source": "HAM10000 / ISIC 2018 task 3 original download", "size": size}
  return arrays, meta
