"""Converters from each dataset's original download to the prepared format (see ``format.py``).

``CONVERTERS`` maps a name to ``converter(raw_dir, options) -> (arrays, meta)``; the modules below
fill it with the ``register(name, ...)`` decorator (a duplicate name is a KeyError). A converter
only reads: ``python -m fedjax_med.data.prepare`` validates its output and writes it atomically.
Every converter raises ``DatasetError`` naming the file for an unreadable image or volume and the
path plus what was expected there for a missing folder or file.

Options come from the command line as strings (``--option key=value``) or from Python as values;
``size`` and ``seed`` are common to most converters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedjax_med.registry import Registry

Converter = Callable[[str, dict[str, Any]], tuple[dict[str, np.ndarray], dict[str, Any]]]
CONVERTERS = Registry("converter")
register = CONVERTERS.register


def get_converter(name: str) -> Converter:
  """The converter registered as ``name``.

  Raises:
    ValueError: for an unknown name, listing the available names and the closest match.
  """
  return CONVERTERS.get(name, what="dataset")


def available() -> list[str]:
  """The registered converter names, sorted."""
  return sorted(CONVERTERS)


from fedjax_med.data.converters import acdc, drive, ham10000, medmnist, rsna_ich, stare  # noqa: E402,F401
