"""Client selection and per-step batch indices, both pure functions of keys.

Client selection is a function of ``(seed, round)`` only, so a resumed run picks
the same clients; batch indices are derived inside the jitted round from the
client's key, so no host round-trip happens per step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def select_clients(seed: int, round_num: int, cohort_index: int, num_clients: int, num_selected: int) -> np.ndarray:
  """Returns the sorted indices (within a cohort) of the clients taking part in a round.

  Fixed-size sampling without replacement; ``num_selected >= num_clients`` selects all.
  """
  if num_selected >= num_clients:
    return np.arange(num_clients, dtype=np.int32)
  rng = np.random.default_rng([seed, round_num, cohort_index])
  return np.sort(rng.choice(num_clients, size=num_selected, replace=False)).astype(np.int32)


def num_epochs_needed(num_steps: int, batch_size: int, min_count: int) -> int:
  """How many permutations of the smallest client's data ``num_steps`` batches consume."""
  return max(1, math.ceil(num_steps * batch_size / max(min_count, 1)))


def sample_indices(
    key: jax.Array, count: jax.Array, max_count: int, num_steps: int, batch_size: int, num_epochs: int
) -> jax.Array:
  """Indices of the examples of each local step, epoch by epoch without replacement.

  Args:
    key: PRNG key of this client and round.
    count: int32 scalar, the client's number of examples (its rows ``[0, count)`` are real).
    max_count: static size of the client's (padded) example axis.
    num_steps, batch_size: static.
    num_epochs: static number of permutations to draw (see ``num_epochs_needed``).

  Returns:
    int32 ``[num_steps, batch_size]`` indices in ``[0, count)``.
  """
  keys = jax.random.split(key, num_epochs)
  scores = jax.vmap(lambda k: jax.random.uniform(k, (max_count,)))(keys)
  scores = jnp.where(jnp.arange(max_count) < count, scores, 2.0)  # padding rows sort last
  perms = jnp.argsort(scores, axis=-1)
  position = jnp.arange(num_steps * batch_size)
  count = jnp.maximum(count, 1)
  epoch = jnp.minimum(position // count, num_epochs - 1)
  indices = perms[epoch, position % count]
  return indices.reshape(num_steps, batch_size).astype(jnp.int32)
