"""Cheap annotations generated from full masks, for weakly-supervised segmentation (FedICRA, issue 5).

Every generator maps one full label map ``[H, W]`` (0 = background, 1..C-1 = structures) to a weak label
map of the same shape where ``ignore`` marks unannotated pixels, deterministically from a seed. What each
form marks (the FedICRA paper shows the forms as pictures; the official code ships pre-made PNGs and no
generator, so the rules below are ours):

* ``scribble``: for each structure present, the contour of the structure eroded to half its depth (at most
  ``max_depth`` pixels): a closed stroke inside it; for the background, the loop of background pixels at
  distance ``background_margin`` from the structures (as the ACDC scribbles of Valvano et al. circle the
  heart); everything else unknown.
* ``noisy_scribble``: the scribble of each class shifted by a random offset of up to ``shift`` pixels
  (per class), clipped to the image, then dilated by one pixel: a careless annotator, whose strokes can
  cross the boundary (those pixels carry the wrong class on purpose).
* ``point``: for each class present, ``points`` pixels drawn at random among the class's deepest
  interior (distance to its boundary >= half its maximum), each marked with a radius-1 disk of the class.
* ``box``: every pixel outside the union of the structures' bounding boxes (enlarged by ``margin``) is
  background; inside a box only a centred core (the box shrunk to ``core`` of its size, intersected with
  the structure) carries the class; the rest is unknown. A ring such as the myocardium, whose centre is
  another structure, gets few or no core pixels.
* ``block``: for each class present, one random ``block`` x ``block`` square placed where it lies fully
  inside that class (the largest square that fits if none does) is labeled with the true labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedjax_med.data.format import PreparedDataset

FORMS = ("full", "scribble", "noisy_scribble", "point", "box", "block")
REAL = "real_scribble"  # keep the dataset's own scribbles (ACDC: the expert scribbles of Valvano et al.)


def _distance(region: np.ndarray) -> np.ndarray:
  return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def _contour(region: np.ndarray) -> np.ndarray:
  return region & ~ndimage.binary_erosion(region)


def scribble(mask: np.ndarray, ignore: int, max_depth: int = 5, background_margin: int = 5) -> np.ndarray:
  out = np.full(mask.shape, ignore, mask.dtype)
  foreground = mask > 0
  for c in np.unique(mask):
    region = mask == c
    if c == 0 and foreground.any():  # a loop around the structures, in the background
      ring = _distance(~foreground) > 0
      dist_to_fg = ndimage.distance_transform_edt(~foreground)
      stroke = region & ring & (np.abs(dist_to_fg - background_margin) < 0.5)
    else:  # the contour of the region eroded to half its depth: a closed stroke inside the structure
      depth = int(min(max_depth, np.floor(_distance(region).max() / 2)))
      inner = ndimage.binary_erosion(region, iterations=depth) if depth > 0 else region
      stroke = _contour(inner) if inner.any() else region
    out[stroke] = c
  return out


def noisy_scribble(mask: np.ndarray, ignore: int, rng: np.random.Generator, shift: int = 3) -> np.ndarray:
  clean = scribble(mask, ignore)
  out = np.full(mask.shape, ignore, mask.dtype)
  for c in np.unique(mask):
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    moved = np.roll(clean == c, (dy, dx), axis=(0, 1))
    if dy > 0:
      moved[:dy] = False
    elif dy < 0:
      moved[dy:] = False
    if dx > 0:
      moved[:, :dx] = False
    elif dx < 0:
      moved[:, dx:] = False
    out[ndimage.binary_dilation(moved)] = c
  return out


def point(mask: np.ndarray, ignore: int, rng: np.random.Generator, points: int = 1) -> np.ndarray:
  out = np.full(mask.shape, ignore, mask.dtype)
  disk = ndimage.generate_binary_structure(2, 1)
  for c in np.unique(mask):
    dist = _distance(mask == c)
    candidates = np.argwhere(dist >= max(dist.max() / 2, 1))
    chosen = candidates[rng.choice(len(candidates), size=min(points, len(candidates)), replace=False)]
    marks = np.zeros(mask.shape, bool)
    marks[tuple(chosen.T)] = True
    out[ndimage.binary_dilation(marks, disk) & (mask == c)] = c
  return out


def box(mask: np.ndarray, ignore: int, margin: int = 2, core: float = 0.5) -> np.ndarray:
  out = np.zeros(mask.shape, mask.dtype)  # background outside every box
  height, width = mask.shape
  cores = []
  for c in np.unique(mask[mask > 0]):
    rows, cols = np.nonzero(mask == c)
    top, bottom = max(rows.min() - margin, 0), min(rows.max() + margin, height - 1)
    left, right = max(cols.min() - margin, 0), min(cols.max() + margin, width - 1)
    out[top:bottom + 1, left:right + 1] = ignore
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    hy, hx = (rows.max() - rows.min() + 1) * core / 2, (cols.max() - cols.min() + 1) * core / 2
    yy, xx = np.mgrid[:height, :width]
    cores.append((c, (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx) & (mask == c)))
  for c, region in cores:  # after every box is cleared, so an overlapping box cannot erase a core
    out[region] = c
  return out


def block(mask: np.ndarray, ignore: int, rng: np.random.Generator, size: int = 8) -> np.ndarray:
  out = np.full(mask.shape, ignore, mask.dtype)
  for c in np.unique(mask):
    dist = _distance(mask == c)
    side = int(min(size, max(1, 2 * np.floor(dist.max()) - 1)))
    # a side x side square whose every pixel is class c: windows where the box-filtered indicator is 1
    inside = ndimage.uniform_filter((mask == c).astype(float), size=side, mode="constant") > 1 - 1e-6
    centres = np.argwhere(inside)
    if len(centres) == 0:
      centres = np.argwhere(dist == dist.max())
      side = 1
    cy, cx = centres[rng.integers(len(centres))]
    top, left = cy - side // 2, cx - side // 2
    out[top:top + side, left:left + side] = mask[top:top + side, left:left + side]
  return out


def generate(mask: np.ndarray, form: str, ignore: int, seed: int) -> np.ndarray:
  """The weak label of one ``[H, W]`` mask in ``form`` (see the module docstring)."""
  if form not in FORMS:
    raise ValueError(f"unknown weak-label form {form!r}; allowed: {FORMS}")
  rng = np.random.default_rng(seed)
  if form == "full":
    return mask.copy()
  if form == "scribble":
    return scribble(mask, ignore)
  if form == "noisy_scribble":
    return noisy_scribble(mask, ignore, rng)
  if form == "point":
    return point(mask, ignore, rng)
  if form == "box":
    return box(mask, ignore)
  return block(mask, ignore, rng)


def generate_all(masks: np.ndarray, form: str, ignore: int, seed: int) -> np.ndarray:
  """``generate`` for each of ``masks [N, H, W]``; slice i uses seed ``(seed, i)``."""
  return np.stack([generate(m, form, ignore, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
                   for i, m in enumerate(masks)])


def with_weak_labels(dataset: PreparedDataset, form: str, ignore: int, seed: int) -> PreparedDataset:
  """``dataset`` whose ``scribbles`` are its masks in ``form`` (or its own scribbles for ``real_scribble``).

  Raises:
    ValueError: naming the form and what the dataset lacks.
  """
  if form == REAL:
    if not dataset.has("scribbles"):
      raise ValueError(f"weak-label form {REAL!r} needs a dataset with scribbles; it has {sorted(dataset.arrays)}")
    return dataset
  if form not in FORMS:
    raise ValueError(f"unknown weak-label form {form!r}; allowed: {(REAL, *FORMS)}")
  if not dataset.has("masks"):
    raise ValueError(f"weak-label form {form!r} is generated from masks; the dataset has {sorted(dataset.arrays)}")
  arrays = dict(dataset.arrays)
  arrays["scribbles"] = generate_all(arrays["masks"], form, ignore, seed).astype(np.uint8)
  return PreparedDataset(arrays, dataset.meta)


def coverage(weak: np.ndarray, masks: np.ndarray, ignore: int) -> dict[str, float]:
  """What weak labels ``[N, H, W]`` teach against the full ``masks`` they stand for (fractions in [0, 1]).

  ``labelled``: pixels that carry a label; ``background_share``: of those, labelled background;
  ``foreground_recall``: structure pixels of the masks that carry a structure label; ``wrong``: labelled pixels
  whose label differs from the mask. A form whose labels are almost all background (boxes: everything outside
  the boxes) pulls a model towards predicting background.
  """
  labelled = weak != ignore
  n_labelled = max(int(labelled.sum()), 1)
  foreground = masks > 0
  return {"labelled": float(labelled.mean()),
          "background_share": float((labelled & (weak == 0)).sum() / n_labelled),
          "foreground_recall": float((labelled & (weak > 0) & foreground).sum() / max(int(foreground.sum()), 1)),
          "wrong": float((labelled & (weak != masks)).sum() / n_labelled)}
