"""Integer downsampling of a prepared dataset's pixel arrays (a CPU-budget protocol knob, ``data.downsample``).

Images are averaged over each ``f x f`` block (rounded back to uint8). Label maps take the label of the block's
centre pixel (nearest neighbour, as label-map resizing does), except sparse annotations (``scribbles``): a block
takes the annotated label most frequent inside it, so that thin strokes survive; blocks with no annotated pixel
stay unannotated (``ignore_index``). The pixel spacing, when present, grows by ``f``.
"""

from __future__ import annotations

import numpy as np

from fedjax_med.data.format import DatasetError, PreparedDataset

DENSE_LABEL_KEYS = ("masks", "masks_2nd", "fov")
SPARSE_LABEL_KEYS = ("scribbles",)


def _blocks(x: np.ndarray, f: int) -> np.ndarray:
  """[N, H, W, ...] -> [N, H/f, W/f, f*f, ...]."""
  n, h, w = x.shape[:3]
  rest = x.shape[3:]
  b = x.reshape(n, h // f, f, w // f, f, *rest)
  b = np.moveaxis(b, 2, 3)  # [N, H/f, W/f, f, f, ...]
  return b.reshape(n, h // f, w // f, f * f, *rest)


def mean_pool(images: np.ndarray, f: int) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, H/f, W/f, C], block means rounded to nearest."""
  return np.rint(_blocks(images.astype(np.float32), f).mean(axis=3)).astype(np.uint8)


def centre_pixel(labels: np.ndarray, f: int) -> np.ndarray:
  """[N, H, W] -> [N, H/f, W/f]: the pixel at offset (f//2, f//2) of each block."""
  return labels[:, f // 2::f, f // 2::f]


def sparse_mode(labels: np.ndarray, f: int, ignore_index: int) -> np.ndarray:
  """[N, H, W] -> [N, H/f, W/f]: the most frequent non-ignored label of each block (ties -> lower label)."""
  blocks = _blocks(labels, f)
  num_labels = int(max(labels.max(initial=0), ignore_index)) + 1
  counts = np.stack([(blocks == k).sum(axis=-1) for k in range(num_labels)], axis=-1)
  counts[..., ignore_index] = 0
  out = counts.argmax(axis=-1).astype(labels.dtype)
  return np.where(counts.max(axis=-1) > 0, out, np.asarray(ignore_index, labels.dtype))


def downsample(dataset: PreparedDataset, factor: int) -> PreparedDataset:
  """The dataset with every pixel array ``factor`` times smaller per side; ``factor`` 1 returns it unchanged.

  Raises:
    DatasetError: when the image size is not divisible by ``factor`` (naming both).
  """
  if factor == 1:
    return dataset
  if factor < 1:
    raise DatasetError(f"config.data.downsample must be a positive integer; got {factor}")
  h, w = dataset.arrays["images"].shape[1:3]
  if h % factor or w % factor:
    raise DatasetError(f"config.data.downsample={factor} does not divide the image size {h}x{w}")
  arrays = dict(dataset.arrays)
  arrays["images"] = mean_pool(arrays["images"], factor)
  for key in DENSE_LABEL_KEYS:
    if key in arrays:
      arrays[key] = centre_pixel(arrays[key], factor)
  ignore = dataset.meta.get("ignore_index")  # datasets without sparse labels may store None
  ignore_index = 255 if ignore is None else int(ignore)
  for key in SPARSE_LABEL_KEYS:
    if key in arrays:
      arrays[key] = sparse_mode(arrays[key], factor, ignore_index)
  if "spacing" in arrays:
    spacing = arrays["spacing"].astype(np.float32).copy()
    spacing[:, :2] *= factor  # (row, col, slice) mm: the in-plane spacing grows
    arrays["spacing"] = spacing
  meta = dict(dataset.meta, downsample=factor)
  return PreparedDataset(arrays, meta)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [N, h, w, C] -> uint8 [N, H, W, C] by bilinear interpolation (half-pixel centres, as
  ``jax.image.resize``), rounded to nearest; for bringing a second dataset to the first one's image size."""
  import jax.image

  n, _, _, c = images.shape
  out = jax.image.resize(images.astype(np.float32), (n, *size, c), method="linear", antialias=True)
  return np.clip(np.rint(np.asarray(out)), 0, 255).astype(np.uint8)
