"""DRIVE retinal vessels from the original download.

Layout under the raw directory (the unpacked ``DRIVE/`` folder)::

  training/images/21_training.tif ...      test/images/01_test.tif ...
  training/1st_manual/21_manual1.gif ...   test/1st_manual/01_manual1.gif ...
  training/mask/21_training_mask.gif ...   test/mask/01_test_mask.gif ...
                                           test/2nd_manual/01_manual2.gif ... (optional)

Output: ``masks`` = the 1st observer's vessels {0, 1}; ``fov`` = the field-of-view masks {0, 1};
``masks_2nd`` = the 2nd observer {0, 1} where it exists and 255 elsewhere (training images), left
out when no 2nd_manual file exists; split training -> train, test -> test; group = ``drive_NN``
(the image number); site = ``drive``. Option ``size`` (H W; default: the native 584 x 565)
resizes everything (images bicubic, masks nearest), e.g. to federate DRIVE with STARE.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

FOLDERS = {"training": "train", "test": "test"}


@register("drive")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts the DRIVE download; see the module docstring."""
  common.require_dir(raw, "the DRIVE download with training/ and test/ folders")
  size = common.parse_size(options.get("size"))
  rows: dict[str, list] = {k: [] for k in ("images", "masks", "fov", "masks_2nd", "group", "split")}
  any_second = False
  for folder, split in FOLDERS.items():
    base = os.path.join(raw, folder)
    image_dir = common.require_dir(os.path.join(base, "images"), f"the DRIVE {folder} images (NN_{folder}.tif)")
    paths = sorted(glob.glob(os.path.join(image_dir, "*.tif")) + glob.glob(os.path.join(image_dir, "*.tiff")))
    if not paths:
      raise DatasetError(f"{image_dir} holds no *.tif images; expected the DRIVE {folder} images")
    common.require_dir(os.path.join(base, "1st_manual"), f"the 1st-observer vessel maps NN_manual1.gif of {folder}")
    common.require_dir(os.path.join(base, "mask"), f"the field-of-view masks NN_{folder}_mask.gif of {folder}")
    for path in paths:
      number = os.path.basename(path).split("_")[0].split(".")[0]
      manual = common.require_file(os.path.join(base, "1st_manual", f"{number}_manual1.gif"),
                                   f"the 1st-observer vessel map of {os.path.basename(path)}")
      fov = common.require_file(os.path.join(base, "mask", f"{number}_{folder}_mask.gif"),
                                f"the field-of-view mask of {os.path.basename(path)}")
      image = common.read_image(path, "RGB")
      vessels = common.binary(common.read_image(manual, "L"))
      fov_mask = common.binary(common.read_image(fov, "L"))
      for what, label_path, label in (("vessel map", manual, vessels), ("field-of-view mask", fov, fov_mask)):
        if label.shape != image.shape[:2]:
          raise DatasetError(f"the {what} {label_path} is {label.shape}, its image {path} is {image.shape[:2]}")
      second_path = os.path.join(base, "2nd_manual", f"{number}_manual2.gif")
      if os.path.isfile(second_path):
        second = common.resize(common.binary(common.read_image(second_path, "L")), size, nearest=True)
        any_second = True
      else:
        second = None
      rows["images"].append(common.resize(image, size, nearest=False))
      rows["masks"].append(common.resize(vessels, size, nearest=True))
      rows["fov"].append(common.resize(fov_mask, size, nearest=True))
      rows["masks_2nd"].append(second)
      rows["group"].append(f"drive_{int(number):02d}" if number.isdigit() else f"drive_{number}")
      rows["split"].append(split)
  arrays = {k: common.stack(rows[k], k, raw) for k in ("images", "masks", "fov")}
  if any_second:
    arrays["masks_2nd"] = np.stack([np.full(m.shape, 255, np.uint8) if s is None else s
                                    for s, m in zip(rows["masks_2nd"], rows["masks"])])
  arrays.update(group=np.array(rows["group"]), split=np.array(rows["split"]),
                site=np.full(len(rows["group"]), "drive"))
  meta = {"name": "drive", "num_classes": 0, "class_names": [], "num_mask_classes": 2,
          "mask_names": ["background", "vessel"], "ignore_index": None,
          "source": "DRIVE original download (Staal et al. 2004)", "size": list(size) if size else None,
          "groups": "one group per image (drive_NN)"}
  return arrays, meta
