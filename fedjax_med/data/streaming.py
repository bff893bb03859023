"""The grain path, for client data that does not fit on the device.

Each client reads from a random-access source (a prepared dataset's rows, or a
TFDS ``data_source``) through a ``grain.MapDataset`` that shuffles every epoch from
a seed of (run seed, client id) and repeats. For round r the host reads batches
``r*K .. r*K+K-1`` of every client - a pure function of the round, so a resumed run
reads the same batches - and stacks them as ``[num_clients, K, batch, ...]``; the
engine reads them flattened to ``[num_clients, K * batch, ...]`` in step order
(``LocalPlan.streamed``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax.numpy as jnp
import numpy as np

from fedjax_med.data.format import PreparedDataset
from fedjax_med.engine.execution import CohortData, LocalPlan


class RowSource:
  """Random access to the rows of a prepared dataset: ``source[i] -> {key: array}``."""

  def __init__(self, dataset: PreparedDataset, keys: Sequence[str]):
    self.arrays = {k: dataset.arrays[k] for k in keys if dataset.has(k)}
    self.length = len(dataset)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self.arrays.items()}


def client_stream(source: Any, batch_size: int, seed: int, client_id: int) -> grain.MapDataset:
  """Shuffled (every epoch), repeated, batched stream of one client's examples."""
  client_seed = int(np.random.SeedSequence([seed, client_id]).generate_state(1)[0])
  return grain.MapDataset.source(source).shuffle(seed=client_seed).repeat(None).batch(batch_size, drop_remainder=True)


def round_batches(streams: Sequence[grain.MapDataset], round_num: int, num_steps: int) -> dict[str, np.ndarray]:
  """This round's batches of every client, stacked: ``{key: [num_clients, num_steps, batch, ...]}``."""
  per_client = []
  for stream in streams:
    batches = [stream[round_num * num_steps + s] for s in range(num_steps)]
    per_client.append({k: np.stack([b[k] for b in batches]) for k in batches[0]})
  return {k: np.stack([c[k] for c in per_client]) for k in per_client[0]}


class StreamedCohort:
  """A cohort whose data is read per round through grain instead of living on the device."""

  def __init__(self, sources: Sequence[Any], client_ids: Sequence[int], batch_size: int, num_steps: int, seed: int):
    if num_steps <= 0:
      raise ValueError(f"the grain path needs client.local_steps > 0 (local epochs need counts); got {num_steps=}")
    self.streams = [client_stream(s, batch_size, seed, c) for s, c in zip(sources, client_ids)]
    self.client_ids = np.asarray(client_ids, np.int32)
    self.counts = np.array([len(s) for s in sources], np.int32)
    self.plan = LocalPlan(num_steps=num_steps, batch_size=batch_size, num_epochs=1,
                          max_count=num_steps * batch_size, ragged=False, streamed=True)

  def data_for_round(self, round_num: int) -> CohortData:
    stacked: Mapping[str, np.ndarray] = round_batches(self.streams, round_num, self.plan.num_steps)
    arrays = {k: v.reshape((v.shape[0], -1) + v.shape[3:]) for k, v in stacked.items()}
    steps = np.full(len(self.client_ids), self.plan.num_steps, np.int32)
    # counts stay the clients' real sizes: they are the FedAvg weights
    return CohortData({k: jnp.asarray(v) for k, v in arrays.items()}, jnp.asarray(self.counts),
                      jnp.asarray(self.client_ids), jnp.asarray(steps))
