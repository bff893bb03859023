"""TFDS as a source: a TFDS dataset available locally feeds a cohort through grain.

Uses ``tfds.data_source`` (array_record, no TensorFlow needed) with ``download=False``:
nothing is fetched at run time. Needs the ``tfds`` extra (``pip install -e .[tfds]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedjax_med.data.format import DatasetError, PreparedDataset


class TfdsSource:
  """Random access to a TFDS split with this project's keys (``images`` uint8 [H,W,C], ``labels``, ``masks``)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image",
               label_key: str = "label", mask_key: str = ""):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise DatasetError("TFDS sources need the tfds extra: pip install -e '.[tfds]'") from e
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises several types for a missing dataset
      raise DatasetError(f"TFDS dataset {name!r} split {split!r} is not available locally in "
                         f"{data_dir or 'the default TFDS data_dir'} ({e}); build it there first") from e
    self.keys = {"images": image_key, "labels": label_key, "masks": mask_key}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self.source[int(index)]
    out = {"images": np.asarray(record[self.keys["images"]], np.uint8)}
    if out["images"].ndim == 2:
      out["images"] = out["images"][..., None]
    if self.keys["labels"]:
      out["labels"] = np.asarray(record[self.keys["labels"]], np.int32)
    if self.keys["masks"]:
      out["masks"] = np.asarray(record[self.keys["masks"]], np.uint8).squeeze()
    return out


class Subset:
  """The rows ``rows`` of a random-access source."""

  def __init__(self, source, rows: Sequence[int]):
    self.source, self.rows = source, np.asarray(rows)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int):
    return self.source[int(self.rows[index])]


def materialize(source, split: str, name: str) -> PreparedDataset:
  """Reads a (small) source into memory, e.g. the evaluation split; each row is its own group."""
  records = [source[i] for i in range(len(source))]
  arrays = {k: np.stack([r[k] for r in records]) for k in records[0]}
  n = len(records)
  arrays.update(group=np.arange(n).astype(str), site=np.full(n, ""), split=np.full(n, split))
  return PreparedDataset(arrays, {"name": name, "source": f"tfds:{name}"})
