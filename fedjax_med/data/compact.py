"""Adapters for the team's compact npz files (the ``FEDJAX_MED_DATA`` folder): already-prepared copies.

``load_compact(name, path)`` turns ``ham10000_64.npz``, ``drive.npz``,
``acdc_slices_128.npz`` or ``pneumoniamnist_28.npz`` into a PreparedDataset in
memory. Users with the original downloads run ``python -m fedjax_med.data.prepare``.
"""

from __future__ import annotations

import numpy as np

from fedjax_med.data.format import DatasetError, PreparedDataset

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
ACDC_TEST_FRACTION = 0.2


def _load(path: str, keys: list[str]) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in keys if k not in data.files]
      if missing:
        raise DatasetError(f"{path} lacks keys {missing}; is it the right file?")
      return {k: data[k] for k in keys}
  except (OSError, ValueError) as e:
    raise DatasetError(f"{path} cannot be read as npz ({e})") from e


def ham10000(path: str) -> PreparedDataset:
  d = _load(path, ["images", "labels", "masks", "split", "lesion_id", "localization"])
  arrays = {"images": d["images"], "labels": d["labels"].astype(np.int32), "masks": d["masks"],
            "group": d["lesion_id"].astype(str), "site": d["localization"].astype(str), "split": d["split"].astype(str)}
  meta = {"name": "ham10000", "num_classes": 7, "class_names": HAM_CLASSES, "num_mask_classes": 2,
          "mask_names": ["background", "lesion"], "ignore_index": None, "source": path}
  return PreparedDataset(arrays, meta)


def drive(path: str) -> PreparedDataset:
  d = _load(path, ["images", "vessel", "fov", "split", "image_id", "vessel_2nd_test"])
  split = np.where(d["split"].astype(str) == "training", "train", "test")
  second = np.full(d["vessel"].shape, 255, np.uint8)
  second[split == "test"] = d["vessel_2nd_test"]  # stored in the order of the test rows
  arrays = {"images": d["images"], "masks": d["vessel"], "fov": d["fov"], "masks_2nd": second,
            "group": np.char.add("drive", d["image_id"].astype(str)), "site": np.full(len(split), "drive"),
            "split": split}
  meta = {"name": "drive", "num_classes": 0, "num_mask_classes": 2, "mask_names": ["background", "vessel"],
          "ignore_index": None, "source": path}
  return PreparedDataset(arrays, meta)


def acdc(path: str, seed: int = 0) -> PreparedDataset:
  """ACDC slices; patients split 80/20 train/test within each pathology group (seeded)."""
  d = _load(path, ["images", "labels", "scribbles", "patient_id", "frame", "slice_idx", "group"])
  patients = d["patient_id"].astype(int)
  split = np.full(len(patients), "train", dtype="<U5")
  rng = np.random.default_rng(seed)
  for pathology in np.unique(d["group"]):
    members = np.unique(patients[d["group"] == pathology])
    test = rng.permutation(members)[: int(round(ACDC_TEST_FRACTION * len(members)))]
    split[np.isin(patients, test)] = "test"
  arrays = {"images": d["images"][..., None], "masks": d["labels"], "scribbles": d["scribbles"],
            "group": np.char.mod("patient%03d", patients), "site": d["group"].astype(str), "split": split,
            "slice_idx": d["slice_idx"].astype(np.int32), "labels": np.full(len(patients), -1, np.int32)}
  meta = {"name": "acdc", "num_classes": 0, "num_mask_classes": 4, "mask_names": ["background", "RV", "Myo", "LV"],
          "ignore_index": 4, "frame": "rows of one volume share group (patient) and frame", "source": path}
  return PreparedDataset(arrays, meta)


def pneumoniamnist(path: str) -> PreparedDataset:
  parts = {s: _load(path, [f"{s}_images", f"{s}_labels"]) for s in ("train", "val", "test")}
  images = np.concatenate([parts[s][f"{s}_images"] for s in parts])[..., None]
  labels = np.concatenate([parts[s][f"{s}_labels"].reshape(-1) for s in parts]).astype(np.int32)
  split = np.concatenate([np.full(len(parts[s][f"{s}_labels"]), s) for s in parts])
  arrays = {"images": images, "labels": labels, "group": np.arange(len(labels)).astype(str),
            "site": np.full(len(labels), ""), "split": split}
  meta = {"name": "pneumoniamnist", "num_classes": 2, "class_names": ["normal", "pneumonia"], "num_mask_classes": 0,
          "ignore_index": None, "groups": "MedMNIST has no patient ids: one group per image", "source": path}
  return PreparedDataset(arrays, meta)


ADAPTERS = {"ham10000": ham10000, "drive": drive, "acdc": acdc, "pneumoniamnist": pneumoniamnist}


def load_compact(name: str, path: str) -> PreparedDataset:
  if name not in ADAPTERS:
    raise DatasetError(f"no compact-file adapter for dataset {name!r}; available: {sorted(ADAPTERS)}")
  return ADAPTERS[name](path)
