"""Converters from each dataset's original download to the prepared format (see ``format.py``).

Registry: name -> ``converter(raw_dir, options) -> (arrays, meta)``. A converter reads
only; ``fedjax_med.data.prepare`` validates and writes atomically.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np

Converter = Callable[[str, dict[str, Any]], tuple[dict[str, np.ndarray], dict[str, Any]]]
CONVERTERS: dict[str, Converter] = {}


def register(*names: str) -> Callable[[Converter], Converter]:
  def decorator(fn: Converter) -> Converter:
    for name in names:
      if name in CONVERTERS:
        raise KeyError(f"The converter name {name!r} was already registered.")
      CONVERTERS[name] = fn
    return fn

  return decorator


def get_converter(name: str) -> Converter:
  if name not in CONVERTERS:
    close = difflib.get_close_matches(name, CONVERTERS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}; available converters: {sorted(CONVERTERS)}.{hint}")
  return CONVERTERS[name]


from fedjax_med.data.converters import acdc, drive, ham10000, medmnist, stare  # noqa: E402,F401
