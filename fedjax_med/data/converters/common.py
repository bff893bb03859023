"""Reading original files with errors that name the file, resizing, grouped stratified splits."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fedjax_med.data.format import DatasetError


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise DatasetError(f"{path} does not exist or is not a directory; expected {what}")
  return path


def require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise DatasetError(f"{path} does not exist; expected {what}")
  return path


def read_image(path: str, mode: str) -> np.ndarray:
  """Reads an image file as uint8 in PIL ``mode`` ('RGB', 'L'); a corrupt file raises DatasetError naming it."""
  try:
    with Image.open(path) as image:
      image.load()
      return np.asarray(image.convert(mode))
  except (OSError, ValueError, SyntaxError) as e:
    raise DatasetError(f"cannot read image {path}: {e}") from e


def resize(array: np.ndarray, size: tuple[int, int] | None, nearest: bool) -> np.ndarray:
  """Resizes ``[H, W]`` or ``[H, W, C]`` uint8 to ``size`` = (H, W): bicubic for images, nearest for labels."""
  if size is None or tuple(array.shape[:2]) == tuple(size):
    return array
  resample = Image.NEAREST if nearest else Image.BICUBIC
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample=resample))


def parse_size(value) -> tuple[int, int] | None:
  """``None``, ``64``, ``(584, 565)`` or ``"584,565"`` -> (H, W) or None."""
  if value in (None, "", 0):
    return None
  if isinstance(value, str):
    value = [int(v) for v in value.replace("x", ",").split(",")]
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  return value * 2 if len(value) == 1 else value


def grouped_split(group: np.ndarray, strata: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
  """Assigns whole groups to splits with the given fractions, stratified by each group's first stratum.

  Within a stratum of n groups, every split after the first gets ``round(fraction * n)`` groups,
  at least one when n is at least the number of splits; the first split takes the rest.
  """
  unique, first = np.unique(group, return_index=True)
  group_stratum = strata[first]
  rng = np.random.default_rng(seed)
  split_of_group = np.empty(len(unique), dtype="<U5")
  names = list(fractions)
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
