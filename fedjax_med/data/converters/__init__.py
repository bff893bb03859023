"""Converters from each dataset's original download to the prepared format (see ``format.py``).

Registry: name -> ``converter(raw_dir, options) -> (arrays, meta)``. A converter reads
only; ``fedjax_med.data.prepare`` validates and writes atomically.
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
  return CONVERTERS.get(name, what="dataset")


from fedjax_med.data.converters import acdc, drive, ham10000, medmnist, stare  # noqa: E402,F401
