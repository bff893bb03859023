"""STARE retinal vessels from the original download.

Layout under the raw directory, searched recursively (``.ppm`` or the distributed ``.ppm.gz``)::

  im0001.ppm, im0002.ppm, ...                       (stare-images.tar)
  labels-ah/im0001.ah.ppm, labels-ah/im0002.ah.ppm  (labels-ah.tar: A. Hoover's vessel labels)

Only the images that have a label are kept (20 in the original release). ``masks`` = vessels
{0, 1} (label value > 127). STARE ships no field-of-view masks, so the FOV is computed from the
image with this rule: pixels whose red channel is above ``fov_threshold`` (option, default 20 of
255; the background outside the fundus is near black, the fundus is bright in red), keeping only
the largest connected region and filling its holes. Split: every image is ``train`` unless option
``test_ids`` (``im0001,im0002``) names it. Group = ``stare_im0001``; site = ``stare``. Option
``size`` (H W) resizes (images bicubic, masks nearest), e.g. ``584 565`` to federate with DRIVE.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy import ndimage

from fedjax_med.data.converters import common, register
from fedjax_med.data.format import DatasetError

DEFAULT_FOV_THRESHOLD = 20


def _name(path: str) -> str:
  return os.path.basename(path).split(".")[0]


def field_of_view(image: np.ndarray, threshold: int = DEFAULT_FOV_THRESHOLD) -> np.ndarray:
  """The FOV rule: red channel > ``threshold``, the largest connected region, holes filled; uint8 {0, 1}."""
  bright = image[..., 0] > threshold
  regions, count = ndimage.label(bright)
  if count > 1:
    sizes = np.bincount(regions.ravel())[1:]
    bright = regions == 1 + int(np.argmax(sizes))
  return ndimage.binary_fill_holes(bright).astype(np.uint8)


@register("stare")
def convert(raw: str, options: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts the STARE download; see the module docstring."""
  common.require_dir(raw, "the STARE download (im*.ppm images and labels-ah/im*.ah.ppm)")
  size = common.parse_size(options.get("size"))
  threshold = int(options.get("fov_threshold", DEFAULT_FOV_THRESHOLD))
  test_ids = set(common.option_list(options.get("test_ids")))
  labels = {_name(p): p for p in common.find(raw, "im*.ah.ppm", "im*.ah.ppm.gz")}
  if not labels:
    raise DatasetError(f"{os.path.join(raw, 'labels-ah')} holds no im*.ah.ppm files; expected the STARE vessel "
                       "labels of A. Hoover (labels-ah.tar)")
  images = {_name(p): p for p in common.find(raw, "im*.ppm", "im*.ppm.gz") if ".ah." not in p and ".vk." not in p}
  unknown = test_ids - set(labels)
  if unknown:
    raise DatasetError(f"option test_ids names {sorted(unknown)}, which have no label; labelled: {sorted(labels)}")
  rows: dict[str, list] = {k: [] for k in ("images", "masks", "fov", "group", "split")}
  for name in sorted(labels):
    if name not in images:
      raise DatasetError(f"{os.path.join(raw, name + '.ppm')} does not exist; expected the image of the label "
                         f"{labels[name]}")
    image = common.read_image(images[name], "RGB")
    vessels = common.binary(common.read_image(labels[name], "L"))
    if vessels.shape != image.shape[:2]:
      raise DatasetError(f"the label {labels[name]} is {vessels.shape}, its image {images[name]} is {image.shape[:2]}")
    rows["images"].append(common.resize(image, size, nearest=False))
    rows["masks"].append(common.resize(vessels, size, nearest=True))
    rows["fov"].append(common.resize(field_of_view(image, threshold), size, nearest=True))
    rows["group"].append(f"stare_{name}")
    rows["split"].append("test" if name in test_ids else "train")
  arrays = {k: common.stack(rows[k], k, raw) for k in ("images", "masks", "fov")}
  arrays.update(group=np.array(rows["group"]), split=np.array(rows["split"]),
                site=np.full(len(rows["group"]), "stare"))
  meta = {"name": "stare", "num_classes": 0, "class_names": [], "num_mask_classes": 2,
          "mask_names": ["background", "vessel"], "ignore_index": None,
          "fov_rule": f"red channel > {threshold}, largest connected region, holes filled",
          "source": "STARE original download (Hoover et al. 2000), labels-ah", "size": list(size) if size else None,
          "groups": "one group per image (stare_imNNNN)"}
  return arrays, meta
