"""Helpers shared by the converters: errors that name the file, image reading, resizing, grouped splits."""

from __future__ import annotations

import glob
import gzip
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from fedjax_med.data.format import DatasetError


def require_dir(path: str, what: str) -> str:
  """Returns ``path`` if it is a directory, else raises DatasetError naming it and ``what`` was expected there."""
  if not os.path.isdir(path):
    raise DatasetError(f"{path} does not exist or is not a directory; expected {what}")
  return path


def require_file(path: str, what: str) -> str:
  """Returns ``path`` if it is a file, else raises DatasetError naming it and what it should be."""
  if not os.path.isfile(path):
    raise DatasetError(f"{path} does not exist; expected {what}")
  return path


def find(root: str, *patterns: str) -> list[str]:
  """Files under ``root`` (recursively) whose names match any of ``patterns``, sorted."""
  found = set()
  for pattern in patterns:
    found.update(glob.glob(os.path.join(root, "**", pattern), recursive=True))
  return sorted(p for p in found if os.path.isfile(p))


def read_image(path: str, mode: str) -> np.ndarray:
  """Reads an image file (``.gz``-compressed too) as uint8 in PIL ``mode`` ('RGB' or 'L').

  Raises:
    DatasetError: naming ``path`` when the file is corrupt, truncated or not an image.
  """
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        source: Any = io.BytesIO(f.read())
    else:
      source = path
    with Image.open(source) as image:
      image.load()
      return np.asarray(image.convert(mode))
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
    raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def binary(array: np.ndarray) -> np.ndarray:
  """A 0/255 (or 0/1) label image as uint8 {0, 1}: pixels above half the maximum value are 1."""
  return (array > (127 if array.max() > 1 else 0)).astype(np.uint8)


def resize(array: np.ndarray, size: tuple[int, int] | None, nearest: bool) -> np.ndarray:
  """Resizes uint8 ``[H, W]`` or ``[H, W, C]`` to ``size`` = (H, W): bicubic for images, nearest for labels."""
  if size is None or tuple(array.shape[:2]) == tuple(size):
    return array
  resample = Image.NEAREST if nearest else Image.BICUBIC
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample=resample))


def parse_size(value: Any) -> tuple[int, int] | None:
  """``None``, ``64``, ``"64"``, ``(584, 565)``, ``"584,565"`` or ``"584x565"`` -> (H, W), or None.

  None, ``""``, ``0`` and ``"0"`` (``--option size=0``) mean no resize: None.

  Raises:
    DatasetError: for anything else (three numbers, a non-positive size, text).
  """
  if value is None or (isinstance(value, str) and value.strip() in ("", "0")) or (
      isinstance(value, int | np.integer) and value == 0):
    return None
  try:
    if isinstance(value, str):
      value = [int(v) for v in value.replace("x", ",").replace(" ", ",").split(",") if v]
    if isinstance(value, int | np.integer):
      value = [int(value)]
    size = tuple(int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise DatasetError(f"size {value!r} is not N or H,W") from e
  if len(size) == 1:
    size = size * 2
  if len(size) != 2 or min(size) <= 0:
    raise DatasetError(f"size {value!r} must be one positive number N or two H W")
  return size


def stack(items: Sequence[np.ndarray], what: str, where: str) -> np.ndarray:
  """``np.stack`` with an error naming ``where`` and suggesting ``--size`` when the shapes differ."""
  shapes = sorted({item.shape for item in items})
  if len(shapes) > 1:
    raise DatasetError(f"{what} under {where} have different sizes {shapes[:3]}; pass --size H W to resize them")
  if not items:
    raise DatasetError(f"no {what} found under {where}")
  return np.stack(items)


def grouped_split(group: np.ndarray, strata: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
  """Assigns whole groups to splits in the given fractions, stratified by each group's first stratum.

  Within a stratum of ``n`` groups (shuffled with ``seed``), every split after the first gets
  ``round(fraction * n)`` groups - at least one if its fraction is positive and ``n`` is at least
  the number of splits - and the first split takes the rest.

  Args:
    group: ``[N]`` group id of each row.
    strata: ``[N]`` stratum of each row (class, pathology group); a group takes its first row's.
    fractions: split name -> fraction, e.g. ``{"train": 0.7, "val": 0.1, "test": 0.2}``.
    seed: seed of the shuffle.

  Returns:
    ``[N]`` split name of each row.
  """
  unique, first = np.unique(group, return_index=True)
  group_stratum = np.asarray(strata)[first]
  rng = np.random.default_rng(seed)
  names = list(fractions)
  split_of_group = np.empty(len(unique), dtype=f"<U{max(len(n) for n in names)}")
  for stratum in np.unique(group_stratum):
    members = rng.permutation(np.flatnonzero(group_stratum == stratum))
    n = len(members)
    later = [int(round(fractions[name] * n)) for name in names[1:]]
    if n >= len(names):
      later = [max(1, c) if fractions[name] > 0 else c for c, name in zip(later, names[1:])]
    cuts = np.cumsum([n - sum(later), *later])[:-1]
    for name, part in zip(names, np.split(members, cuts)):
      split_of_group[part] = name
  return split_of_group[np.searchsorted(unique, group)]


def option_list(value: Any) -> list[str]:
  """``"a,b"``, ``["a", "b"]`` or None -> ``["a", "b"]``."""
  if value is None or value == "":
    return []
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]
