"""Where a run's dataset comes from: the embedded synthetic set, a prepared directory, or a compact npz."""

from __future__ import annotations

import os

from fedjax_med.data import synthetic
from fedjax_med.data.format import DatasetError, PreparedDataset, load_prepared

COMPACT_NAMES = ("ham10000", "drive", "acdc", "pneumoniamnist")


def load_dataset(name: str, root: str, synthetic_kwargs: dict | None = None) -> PreparedDataset:
  """Loads the dataset a config names.

  Args:
    name: ``synthetic`` (embedded, no files), or a dataset name (``drive``, ``ham10000``...).
    root: for real data, a directory made by ``python -m fedjax_med.data.prepare`` or one of the
      compact ``.npz`` files of the team's data folder (``FEDJAX_MED_DATA``).

  Raises:
    DatasetError: naming the path and the prepare command when the data is missing.
  """
  if name == "synthetic":
    return synthetic.make_synthetic(**(synthetic_kwargs or {}))
  hint = f"python -m fedjax_med.data.prepare {name} --raw RAW_DOWNLOAD_DIR --out {root or 'OUT_DIR'}"
  if not root:
    raise DatasetError(f"data.root is empty for dataset {name!r}; prepare the data with: {hint} "
                       f"and pass --config.data.root=OUT_DIR")
  root = os.path.expanduser(root)
  if root.endswith(".npz"):
    if not os.path.isfile(root):
      raise DatasetError(f"{root} does not exist; prepare the data with: {hint}")
    from fedjax_med.data.compact import load_compact
    return load_compact(name, root)
  return load_prepared(root, prepare_hint=hint)
