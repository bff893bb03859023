"""HAM10000 / ISIC 2018 task 3 from the original download (names ``ham10000`` and ``isic2018``).

Layout, searched recursively under the raw directory:

* images ``ISIC_*.jpg`` (``HAM10000_images_part_1/``, ``HAM10000_images_part_2/`` or
  ``ISIC2018_Task3_Training_Input/``);
* labels from EITHER ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type, age, sex,
  localization[, dataset]) OR ``ISIC2018_Task3_Training_GroundTruth.csv`` (image, MEL, NV, BCC,
  AKIEC, BKL, DF, VASC one-hot). The ISIC file has no lesion ids: they come from
  ``ISIC2018_Task3_Training_LesionGroupings.csv`` (image, lesion_id, ...) when present, else every
  image is its own group. Only the images listed in the CSV are converted;
* optional lesion masks ``ISIC_*_segmentation.png`` (HAM10000_segmentations_lesion_tschandl),
  found anywhere under the raw directory or in the folder given by option ``mask_dir``. Once
  masks are present, every image needs one: a missing mask is an error naming the file.

Classes in DermaMNIST order: 0 akiec, 1 bcc, 2 bkl, 3 df, 4 mel, 5 nv, 6 vasc.
Options: ``size`` (default 64; images bicubic, masks nearest, the aspect ratio squashed as in
MedMNIST; ``0`` keeps the native size), ``seed`` (default 0) of the 70/10/20 train/val/test split,
which keeps a lesion's images together and is stratified by class. Site = the ``localization``
column (``""`` without it).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
ISIC_COLUMNS = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}
MASK_SUFFIX = "_segmentation.png"
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _read_csv(path: str, columns: set[str]) -> list[dict[str, str]]:
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      header = set(reader.fieldnames or [])
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DatasetError(f"cannot read {path}: {e}") from e
  missing = columns - header
  if missing:
    raise DatasetError(f"{path} lacks the columns {sorted(missing)}; its header is {sorted(header)}")
  return rows


def _records(raw: str) -> tuple[list[dict[str, str]], str]:
  """One dict per image (image_id, dx, lesion_id, localization) and the CSV it came from."""
  metadata = common.find(raw, "HAM10000_metadata*.csv")
  if metadata:
    rows = _read_csv(metadata[0], {"lesion_id", "image_id", "dx"})
    return [{"image_id": r["image_id"].strip(), "dx": r["dx"].strip(), "lesion_id": r["lesion_id"].strip(),
             "localization": (r.get("localization") or "").strip()} for r in rows], metadata[0]
  truth = common.find(raw, "ISIC2018_Task3_*GroundTruth*.csv")
  if not truth:
    raise DatasetError(f"{raw} holds no HAM10000_metadata.csv and no ISIC2018_Task3_Training_GroundTruth.csv; "
                       "expected one of them (the label file of the download)")
  groupings = common.find(raw, "ISIC2018_Task3_*LesionGroupings*.csv")
  lesion = {}
  if groupings:
    lesion = {r["image"].strip(): r["lesion_id"].strip() for r in _read_csv(groupings[0], {"image", "lesion_id"})}
  records = []
  for row in _read_csv(truth[0], {"image", *ISIC_COLUMNS}):
    try:
      hot = [name for column, name in ISIC_COLUMNS.items() if float(row[column]) > 0.5]
    except (TypeError, ValueError) as e:
      raise DatasetError(f"{truth[0]}: image {row['image']} has a non-numeric class column ({e})") from e
    if len(hot) != 1:
      raise DatasetError(f"{truth[0]}: image {row['image']} has {len(hot)} positive classes, expected exactly 1")
    image_id = row["image"].strip()
    records.append({"image_id": image_id, "dx": hot[0], "lesion_id": lesion.get(image_id) or image_id,
                    "localization": ""})
  return records, truth[0]


def _mask_paths(raw: str, options: dict[str, Any]) -> dict[str, str]:
  mask_dir = options.get("mask_dir")
  if mask_dir:
    common.require_dir(mask_dir, f"the lesion masks ISIC_*{MASK_SUFFIX} (option mask_dir)")
    paths = common.find(mask_dir, f"ISIC_*{MASK_SUFFIX}")
    if not paths:
      raise DatasetError(f"{mask_dir} holds no ISIC_*{MASK_SUFFIX} files; expected the lesion masks")
  else:
    paths = common.find(raw, f"ISIC_*{MASK_SUFFIX}")
  return {os.path.basename(p)[: -len(MASK_SUFFIX)]: p for p in paths}


@register("ham10000", "isic2018")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts a HAM10000 or ISIC 2018 task 3 download; see the module docstring."""
  common.require_dir(raw, "the HAM10000 / ISIC 2018 download (ISIC_*.jpg images and a label CSV)")
  size = common.parse_size(options.get("size", 64))
  records, label_file = _records(raw)
  if not records:
    raise DatasetError(f"{label_file} lists no images")
  image_paths = {os.path.splitext(os.path.basename(p))[0]: p for p in common.find(raw, "ISIC_*.jpg", "ISIC_*.JPG")}
  if not image_paths:
    raise DatasetError(f"{raw} holds no ISIC_*.jpg images; expected the image folders of the download")
  mask_paths = _mask_paths(raw, options)
  images, masks, labels, groups, sites = [], [], [], [], []
  for record in records:
    image_id = record["image_id"]
    if image_id not in image_paths:
      raise DatasetError(f"image {image_id}.jpg, listed in {label_file}, is missing under {raw}")
    if record["dx"] not in CLASSES:
      raise DatasetError(f"{label_file}: image {image_id} has the unknown diagnosis {record['dx']!r}; "
                         f"expected one of {list(CLASSES)}")
    images.append(common.resize(common.read_image(image_paths[image_id], "RGB"), size, nearest=False))
    if mask_paths:
      if image_id not in mask_paths:
        where = options.get("mask_dir") or raw
        raise DatasetError(f"mask {image_id}{MASK_SUFFIX} of image {image_id}.jpg is missing under {where} "
                           "(other images have masks)")
      masks.append(common.resize(common.binary(common.read_image(mask_paths[image_id], "L")), size, nearest=True))
    labels.append(CLASSES.index(record["dx"]))
    groups.append(record["lesion_id"])
    sites.append(record["localization"])
  label_array, group = np.array(labels, np.int32), np.array(groups)
  arrays = {"images": common.stack(images, "images", raw), "labels": label_array, "group": group,
            "site": np.array(sites), "split": common.grouped_split(group, label_array, FRACTIONS,
                                                                   int(options.get("seed", 0)))}
  if masks:
    arrays["masks"] = common.stack(masks, "masks", raw)
    if arrays["masks"].shape[:3] != arrays["images"].shape[:3]:
      raise DatasetError(f"the masks under {raw} are not the size of their images; pass --size N to resize both")
  meta = {"name": "ham10000", "num_classes": len(CLASSES), "class_names": list(CLASSES),
          "num_mask_classes": 2 if masks else 0, "mask_names": ["background", "lesion"] if masks else [],
          "ignore_index": None, "source": f"HAM10000 / ISIC 2018 task 3 original download ({label_file})",
          "size": list(size) if size else None, "seed": int(options.get("seed", 0)),
          "groups": "lesion_id (ISIC 2018 without lesion groupings: one group per image)",
          "sites": "localization column" if any(sites) else "none", "split_fractions": FRACTIONS}
  return arrays, meta
