"""DRIVE retinal vessels from the original download.

Layout: ``{training,test}/images/*.tif``, ``{training,test}/1st_manual/*_manual1.gif``,
``{training,test}/mask/*_mask.gif`` (field of view), optionally ``test/2nd_manual/*_manual2.gif``.
masks = 1st-observer vessels {0, 1}; fov {0, 1}; ``masks_2nd`` = the 2nd observer where it exists
(255 elsewhere); split training -> train, test -> test; group = the image number.
Option ``size`` (H W) resizes everything (e.g. to federate DRIVE with STARE at one size).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

SPLITS = {"training": "train", "test": "test"}


def _number(path: str) -> str:
  return os.path.basename(path).split("_")[0]


@register("drive")
def convert(raw: str, options: dict) -> tuple[dict[str, np.ndarray], dict]:
  common.require_dir(raw, "the DRIVE download with training/ and test/ folders")
  size = common.parse_size(options.get("size"))
  rows: dict[str, list] = {k: [] for k in ("images", "masks", "fov", "masks_2nd", "group", "split")}
  for folder, split in SPLITS.items():
    base = common.require_dir(os.path.join(raw, folder, "images"), f"DRIVE {folder} images (*.tif)")
    paths = sorted(glob.glob(os.path.join(base, "*.tif")))
    if not paths:
      raise DatasetError(f"no *.tif images in {base}")
    for path in paths:
      number = _number(path)
      manual = common.require_file(os.path.join(raw, folder, "1st_manual", f"{number}_manual1.gif"),
                                   f"the 1st-observer vessel map of image {number}")
      fov = common.require_file(os.path.join(raw, folder, "mask", f"{number}_{folder}_mask.gif"),
                                f"the field-of-view mask of image {number}")
      second = os.path.join(raw, folder, "2nd_manual", f"{number}_manual2.gif")
      rows["images"].append(common.resize(common.read_image(path, "RGB"), size, nearest=False))
      rows["masks"].append(common.resize((common.read_image(manual, "L") > 127).astype(np.uint8), size, True))
      rows["fov"].append(common.resize((common.read_image(fov, "L") > 127).astype(np.uint8), size, True))
      if os.path.isfile(second):
        rows["masks_2nd"].append(common.resize((common.read_image(second, "L") > 127).astype(np.uint8), size, True))
      else:
        rows["masks_2nd"].append(np.full(rows["masks"][-1].shape, 255, np.uint8))
      rows["group"].append(f"drive{number}")
      rows["split"].append(split)
  arrays = {k: np.stack(v) if k not in ("group", "split") else np.array(v) for k, v in rows.items()}
  arrays["site"] = np.full(len(arrays["group"]), "drive")
  meta = {"name": "drive", "num_classes": 0, "num_mask_classes": 2, "mask_names": ["background", "vessel"],
          "ignore_index": None, "source": "DRIVE original download (Staal et al. 2004)", "size": size}
  return arrays, meta
