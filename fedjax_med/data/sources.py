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
  if not root:
    raise DatasetError(f"data.root is empty for dataset {name!r}; prepare the data with: {prepare_command(name)} "
                       f"and pass --config.data.root=prepared/{name}")
  root = os.path.expanduser(root)
  if root.endswith(".npz") and not os.path.isdir(root):  # a folder so named is a prepared dataset
    if not os.path.isfile(root):
      raise DatasetError(missing_compact_message(name, root))
    from fedjax_med.data.compact import load_compact
    return load_compact(name, root)
  return load_prepared(root, prepare_hint=prepare_command(name, root))


def prepare_command(name: str, out: str = "") -> str:
  """The command that prepares dataset ``name`` from its original download into the folder ``out``."""
  return f"python -m fedjax_med.data.prepare {name} --raw RAW_DOWNLOAD_DIR --out {out or 'prepared/' + name}"


def missing_compact_message(name: str, path: str) -> str:
  """What to do when ``data.root`` names a compact ``.npz`` that is not there.

  The prepare command writes a folder, never an ``.npz``: the message points ``--out`` at a folder and
  ``data.root`` at it, instead of at the missing file's path (which ``prepare`` would turn into a folder
  named ``*.npz``).
  """
  compact = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
  return (f"{path} does not exist. It is one of the team's compact files: set FEDJAX_MED_DATA to the folder "
          f"holding {compact}, or prepare the original download with: {prepare_command(name)} and pass "
          f"--config.data.root=prepared/{name}")
