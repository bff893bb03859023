"""STARE retinal vessels from the original download.

Layout: ``im0001.ppm`` ... images (searched recursively, ``.ppm`` or ``.ppm.gz`` unpacked first) and
``labels-ah/im0001.ah.ppm`` vessel labels by A. Hoover (vessel = bright). Only labelled images are kept.
STARE ships no field-of-view masks: the FOV is the set of pixels whose red channel exceeds
``fov_threshold`` (default 20 of 255), a dark-background rule, followed by filling holes.
Option ``test_ids`` (comma-separated image names such as ``im0001,im0002``) puts those images in
the test split; the rest are train. Option ``size`` (H W) resizes to federate with DRIVE.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from scipy import ndimage

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError


@register("stare")
def convert(raw: str, options: dict) -> tuple[dict[str, np.ndarray], dict]:
  common.require_dir(raw, "the STARE download (im*.ppm and labels-ah/)")
  labels_dir = common.require_dir(os.path.join(raw, "labels-ah"), "STARE vessel labels labels-ah/im*.ah.ppm")
  size = common.parse_size(options.get("size"))
  threshold = int(options.get("fov_threshold", 20))
  test_ids = {t for t in str(options.get("test_ids", "")).split(",") if t}
  label_paths = sorted(glob.glob(os.path.join(labels_dir, "im*.ah.ppm")))
  if not label_paths:
    raise DatasetError(f"no im*.ah.ppm label files in {labels_dir}")
  rows: dict[str, list] = {k: [] for k in ("images", "masks", "fov", "group", "split")}
  for label_path in label_paths:
    name = os.path.basename(label_path).split(".")[0]
    image_path = common.require_file(os.path.join(raw, f"{name}.ppm"), f"the image of label {label_path}")
    image = common.read_image(image_path, "RGB")
    fov = ndimage.binary_fill_holes(image[..., 0] > threshold).astype(np.uint8)
    vessels = (common.read_image(label_path, "L") > 127).astype(np.uint8)
    rows["images"].append(common.resize(image, size, nearest=False))
    rows["masks"].append(common.resize(vessels, size, nearest=True))
    rows["fov"].append(common.resize(fov, size, nearest=True))
    rows["group"].append(f"stare_{name}")
    rows["split"].append("test" if name in test_ids else "train")
  arrays = {k: np.stack(v) if k not in ("group", "split") else np.array(v) for k, v in rows.items()}
  arrays["site"] = np.full(len(arrays["group"]), "stare")
  meta = {"name": "stare", "num_classes": 0, "num_mask_classes": 2, "mask_names": ["background", "vessel"],
          "ignore_index": None, "fov_rule": f"red channel > {threshold}, holes filled",
          "source": "STARE original download (Hoover et al. 2000), labels-ah", "size": size}
  return arrays, meta
