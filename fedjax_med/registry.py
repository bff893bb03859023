"""Name -> object registries: a duplicate name is a KeyError, an unknown one a ValueError with the closest match."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
  """Filled at import time by ``register``; read afterwards with ``get``."""

  def __init__(self, kind: str):
    self.kind, self._items = kind, {}

  def register(self, *names: str) -> Callable[[Any], Any]:
    def decorator(item):
      for name in names:
        self.add(name, item)
      return item

    return decorator

  def add(self, name: str, item: Any) -> None:
    if name in self._items:
      raise KeyError(f"The {self.kind} name {name!r} was already registered.")
    self._items[name] = item

  def get(self, name: str, what: str = "") -> Any:
    """The item named ``name``; ``what`` names the setting in the error (e.g. ``config.model.name``)."""
    if name not in self._items:
      close = difflib.get_close_matches(name, self._items, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"{what or 'unknown ' + self.kind} {name!r} is not known; available: {sorted(self)}.{hint}")
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)
