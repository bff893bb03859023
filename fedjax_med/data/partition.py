"""Partitioners: which client holds which rows, always keeping a group (patient, lesion) together.

Every partitioner returns ``client_of_row``: int32 ``[N]`` with the client of each
row, -1 for rows no client holds. Assignment happens at the level of groups, so a
patient or lesion never appears in two clients.
"""

from __future__ import annotations

import numpy as np

PARTITIONERS = ("iid", "dirichlet", "column", "pooled")


def _groups(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unique groups (in first-appearance order made stable by sorting) and each row's group index."""
  unique, inverse = np.unique(group, return_inverse=True)
  return unique, inverse


def iid(group: np.ndarray, num_clients: int, seed: int) -> np.ndarray:
  """Groups shuffled and dealt to clients so that row counts are as even as possible."""
  _check_clients(num_clients, group)
  unique, inverse = _groups(group)
  sizes = np.bincount(inverse, minlength=len(unique))
  order = np.random.default_rng(seed).permutation(len(unique))
  load, client_of_group = np.zeros(num_clients, np.int64), np.empty(len(unique), np.int32)
  for g in order:  # greedy: the next group goes to the least loaded client
    c = int(np.argmin(load))
    client_of_group[g], load[c] = c, load[c] + sizes[g]
  return client_of_group[inverse]


def dirichlet(labels: np.ndarray, group: np.ndarray, num_clients: int, alpha: float, seed: int,
              min_groups_per_client: int = 2, max_tries: int = 100) -> np.ndarray:
  """Label skew: each class's groups are spread over clients with Dirichlet(alpha) proportions.

  A group's class is its rows' most frequent label. Draws are repeated (up to
  ``max_tries``) until every client has ``min_groups_per_client`` groups
  (the usual rule of Hsu et al. 2019 / Wang et al. 2020 implementations).
  """
  _check_clients(num_clients, group)
  if alpha <= 0:
    raise ValueError(f"dirichlet alpha must be > 0; got {alpha=}")
  unique, inverse = _groups(group)
  group_label = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(unique))])
  rng = np.random.default_rng(seed)
  for _ in range(max_tries):
    client_of_group = np.empty(len(unique), np.int32)
    for c in np.unique(group_label):
      members = rng.permutation(np.flatnonzero(group_label == c))
      cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(members)).astype(int)[:-1]
      for client, part in enumerate(np.split(members, cuts)):
        client_of_group[part] = client
    if np.bincount(client_of_group, minlength=num_clients).min() >= min_groups_per_client:
      return client_of_group[inverse]
  raise ValueError(f"dirichlet partition with {alpha=} left a client with fewer than {min_groups_per_client} groups "
                   f"after {max_tries} draws; use a larger alpha or fewer clients ({num_clients=})")


def by_column(values: np.ndarray, group: np.ndarray, clients: tuple[str, ...] = ()) -> np.ndarray:
  """Natural split: one client per value of a metadata column (e.g. site).

  ``clients`` optionally fixes the order (and subset) of values; rows with other
  values get -1, unless one entry is ``"*"``: that client takes every value not listed.
  Raises if a group spans two values.
  """
  names = tuple(clients) if clients else tuple(np.unique(values).tolist())
  client_of_row = np.full(len(values), -1, np.int32)
  for i, name in enumerate(names):
    if name == "*":
      client_of_row[~np.isin(values, [n for n in names if n != "*"])] = i
    else:
      client_of_row[values == name] = i
  unique, inverse = _groups(group)
  for g in range(len(unique)):
    owners = np.unique(client_of_row[inverse == g])
    if len(owners) > 1:
      raise ValueError(f"group {str(unique[g])!r} spans several clients {owners.tolist()} of the column split")
  return client_of_row


def pooled(num_rows: int) -> np.ndarray:
  """Everything in one client (centralised training)."""
  return np.zeros(num_rows, np.int32)


def first_groups(group: np.ndarray, count: int, seed: int) -> np.ndarray:
  """Bool ``[N]``: the rows of ``count`` groups drawn at random (seeded) from the unique ``group`` values."""
  unique = np.unique(group)
  if count > len(unique):
    raise ValueError(f"partition.groups_per_client={count} but a client holds only {len(unique)} groups")
  chosen = np.random.default_rng(seed).choice(unique, count, replace=False)
  return np.isin(group, chosen)


def labeled_mask(client_of_row: np.ndarray, group: np.ndarray, labeled_clients: tuple[int, ...] = (),
                 labeled_fraction: float = 1.0, seed: int = 0) -> np.ndarray:
  """Which rows keep their labels: bool ``[N]``.

  Either whole clients are labeled (``labeled_clients``, e.g. FedIRM's 2 of 10),
  or, when ``labeled_clients`` is empty, each client keeps labels for
  ``labeled_fraction`` of its groups.
  """
  if not 0.0 <= labeled_fraction <= 1.0:
    raise ValueError(f"labeled_fraction must be in [0, 1]; got {labeled_fraction=}")
  num_clients = int(client_of_row.max()) + 1
  bad = [c for c in labeled_clients if not 0 <= c < num_clients]
  if bad:
    raise ValueError(f"labeled_clients {bad} out of range for {num_clients} clients")
  if labeled_clients:
    return np.isin(client_of_row, labeled_clients)
  rng = np.random.default_rng(seed)
  keep = np.zeros(len(group), bool)
  for c in range(num_clients):
    groups = np.unique(group[client_of_row == c])
    chosen = rng.permutation(groups)[: int(round(labeled_fraction * len(groups)))]
    keep |= (client_of_row == c) & np.isin(group, chosen)
  return keep


def _check_clients(num_clients: int, group: np.ndarray) -> None:
  num_groups = len(np.unique(group))
  if not 1 <= num_clients <= num_groups:
    raise ValueError(f"num_clients must be in [1, number of groups = {num_groups}]; got {num_clients=}")
