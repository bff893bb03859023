"""Registry of federated algorithms: name -> builder ``(config, task, variables, model) -> (algorithm, roles)``.

``roles(num_clients)`` names the cohort of every client. A new method is one module
here plus one config (and its losses); its builder, in ``registered.py``, declares the ``config.algorithm`` keys it
reads, and ``check_config`` refuses any other.
"""

from __future__ import annotations

from collections.abc import Callable

from fedjax_med.registry import Registry

ALGORITHMS = Registry("algorithm")
register = ALGORITHMS.register


def get_algorithm(name: str) -> Callable:
  return ALGORITHMS.get(name, what="config.algorithm.name")


from fedjax_med.algorithms import registered  # noqa: E402,F401  (fills the registry)
from fedjax_med.algorithms.registered import check_config  # noqa: E402,F401
