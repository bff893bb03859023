"""The embedded default dataset: synthetic, deterministic from a seed, learnable, multi-site.

Every "patient" is a small volume of ``slices_per_volume`` slices holding one
bright object whose shape is the patient's class (0 disk, 1 square, 2 ring,
3 diamond; ``num_classes`` <= 4) and whose size follows the slice position like
a sphere's cross-section, so that slices from the same position of different
volumes look alike (what FCL's partitions rely on). The segmentation mask is the
object. Sites differ by a domain shift: intensity gain and offset, noise level and
a background gradient. Nothing is downloaded; the run log says the data is synthetic.
"""

from __future__ import annotations

import numpy as np

from fedjax_med.data.format import PreparedDataset

SHAPES = ("disk", "square", "ring", "diamond")


def _object_mask(shape: str, size: int, center: np.ndarray, radius: float) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  dy, dx = yy - center[0], xx - center[1]
  if shape == "disk":
    return dy**2 + dx**2 <= radius**2
  if shape == "square":
    return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
  if shape == "ring":
    r2 = dy**2 + dx**2
    return (r2 <= radius**2) & (r2 >= (0.55 * radius) ** 2)
  return np.abs(dy) + np.abs(dx) <= radius * 1.2


def make_synthetic(num_sites: int = 4, patients_per_site: int = 24, slices_per_volume: int = 4,
                   image_size: int = 32, num_classes: int = 4, channels: int = 1, seed: int = 0) -> PreparedDataset:
  """Builds the dataset in memory (about 0.1 s for the defaults).

  Returns:
    a PreparedDataset with images uint8 ``[N, S, S, channels]``, labels (the
    patient's shape class), masks {0, 1}, group ``site{k}_p{j}``, site ``site{k}``,
    slice_idx, and a per-site 60/20/20 train/val/test split by patient.
  """
  if not 2 <= num_classes <= len(SHAPES):
    raise ValueError(f"num_classes must be in [2, {len(SHAPES)}]; got {num_classes=}")
  rng = np.random.default_rng(seed)
  rows: dict[str, list] = {k: [] for k in ("images", "labels", "masks", "group", "site", "split", "slice_idx")}
  for site in range(num_sites):
    gain, offset = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.25)
    noise, tilt = rng.uniform(0.03, 0.12), rng.uniform(-0.2, 0.2, size=2)
    splits = np.array(["train"] * patients_per_site)
    order = rng.permutation(patients_per_site)
    splits[order[: int(0.2 * patients_per_site)]] = "test"
    splits[order[int(0.2 * patients_per_site): int(0.4 * patients_per_site)]] = "val"
    for patient in range(patients_per_site):
      label = int(rng.integers(num_classes))
      center = rng.uniform(0.35, 0.65, size=2) * image_size
      max_radius = rng.uniform(0.22, 0.32) * image_size
      for s in range(slices_per_volume):
        radius = max_radius * (0.55 + 0.45 * np.sin(np.pi * (s + 0.5) / slices_per_volume))
        mask = _object_mask(SHAPES[label], image_size, center, radius)
        yy, xx = np.mgrid[:image_size, :image_size] / image_size
        background = offset + tilt[0] * yy + tilt[1] * xx
        image = background + gain * 0.6 * mask + rng.normal(0, noise, (image_size, image_size))
        image = np.repeat(np.clip(image, 0, 1)[..., None], channels, axis=-1)
        rows["images"].append(np.round(image * 255).astype(np.uint8))
        rows["labels"].append(label)
        rows["masks"].append(mask.astype(np.uint8))
        rows["group"].append(f"site{site}_p{patient}")
        rows["site"].append(f"site{site}")
        rows["split"].append(splits[patient])
        rows["slice_idx"].append(s)
  arrays = {k: np.asarray(v) for k, v in rows.items()}
  arrays["labels"] = arrays["labels"].astype(np.int32)
  arrays["slice_idx"] = arrays["slice_idx"].astype(np.int32)
  meta = {"name": "synthetic", "synthetic": True, "num_classes": num_classes, "class_names": list(SHAPES[:num_classes]),
          "num_mask_classes": 2, "mask_names": ["background", "object"], "ignore_index": None,
          "source": f"fedjax_med.data.synthetic.make_synthetic(seed={seed})"}
  return PreparedDataset(arrays, meta)
