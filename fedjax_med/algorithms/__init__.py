"""Registry of federated algorithms: name -> builder ``(config, task, variables) -> (FederatedAlgorithm, roles)``.

``roles(num_clients, labeled_clients)`` names the cohort of every client. A new method
is one module here plus one config (and its losses).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

ALGORITHMS: dict[str, Callable] = {}


def register(name: str) -> Callable:
  def decorator(builder: Callable) -> Callable:
    if name in ALGORITHMS:
      raise KeyError(f"The algorithm name {name!r} was already registered.")
    ALGORITHMS[name] = builder
    return builder

  return decorator


def get_algorithm(name: str) -> Callable:
  if name not in ALGORITHMS:
    close = difflib.get_close_matches(name, ALGORITHMS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"config.algorithm.name={name!r} is not a known algorithm; available: {sorted(ALGORITHMS)}.{hint}")
  return ALGORITHMS[name]


from fedjax_med.algorithms import registered  # noqa: E402,F401  (fills the registry)
