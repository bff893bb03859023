"""Volumes rebuilt from slice rows, cut into positional partitions (FCL, Wu et al., MICCAI 2021).

A prepared dataset stores a 3-D volume as its slices (rows sharing ``group`` and ``frame`` when present,
ordered by ``slice_idx``). FCL cuts every volume into ``S`` partitions along the slice axis; slices from the
same partition of different volumes are positives. Partition rule: slice ``i`` of a volume with ``D``
slices belongs to ``floor(i * S / D)``, so the partitions are as equal as possible and none is empty when
``D >= S``. (The same group's PCL code uses ``clip(i // round_half_up(D / S), 0, S - 1)``, which leaves the last
partition empty for D = 6 and S = 4 -- ten of ACDC's 200 volumes -- and makes the last one 1 slice or 3.)

The volume layout (one row per volume) keeps every partition's slices padded to the largest partition:
``images [V, S, P, H, W, C]`` with ``partition_counts [V, S]`` real slices each. Sampling one slice per
partition is then a static-shape gather under jit (``sample_partition_slices``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data.format import PreparedDataset


def partition_of_slice(slice_idx: np.ndarray, depth: np.ndarray, num_partitions: int) -> np.ndarray:
  """Partition ``[N]`` int32 of slices at positions ``slice_idx`` in volumes of ``depth`` slices."""
  slice_idx, depth = np.asarray(slice_idx, np.int64), np.asarray(depth, np.int64)
  if np.any(depth < num_partitions):
    raise ValueError(f"a volume has {int(depth.min())} slices, fewer than the {num_partitions} partitions")
  if np.any((slice_idx < 0) | (slice_idx >= depth)):
    raise ValueError("slice_idx must lie in [0, depth) for every slice")
  return (slice_idx * num_partitions // depth).astype(np.int32)


def volume_ids(dataset: PreparedDataset) -> np.ndarray:
  """Per row, an int volume index: a volume is a run of consecutive rows of one ``group`` whose ``slice_idx``
  increases (the prepared format's convention; e.g. a patient's ED then ES volume)."""
  group, slice_idx = dataset.arrays["group"], dataset.arrays["slice_idx"]
  starts = np.ones(len(group), bool)
  starts[1:] = (group[1:] != group[:-1]) | (slice_idx[1:] <= slice_idx[:-1])
  return np.cumsum(starts) - 1


def slice_partitions(dataset: PreparedDataset, num_partitions: int) -> np.ndarray:
  """Partition ``[N]`` of every slice row (depth = number of rows of its volume)."""
  if not dataset.has("slice_idx"):
    raise ValueError(f"dataset {dataset.meta.get('name')!r} has no 'slice_idx': its rows are not volume slices")
  vol = volume_ids(dataset)
  depth = np.bincount(vol)
  starts = np.concatenate([[0], np.cumsum(depth)[:-1]])
  position = np.arange(len(vol)) - starts[vol]  # rank within the volume (robust to gaps in slice_idx)
  return partition_of_slice(position, depth[vol], num_partitions)


def to_volumes(dataset: PreparedDataset, num_partitions: int) -> PreparedDataset:
  """One row per volume: ``images [V, S, P, H, W, C]``, ``partition_counts [V, S]``, ``group``/``site``/``split``.

  ``P`` is the largest partition; unused slots are zeros and never sampled.
  """
  vol = volume_ids(dataset)
  partition = slice_partitions(dataset, num_partitions)
  num_volumes = int(vol.max()) + 1
  counts = np.zeros((num_volumes, num_partitions), np.int32)
  np.add.at(counts, (vol, partition), 1)
  images = dataset.arrays["images"]
  out = np.zeros((num_volumes, num_partitions, int(counts.max())) + images.shape[1:], images.dtype)
  filled = np.zeros_like(counts)
  for row in range(len(vol)):  # rows of a volume are consecutive and in slice order
    v, p = vol[row], partition[row]
    out[v, p, filled[v, p]] = images[row]
    filled[v, p] += 1
  first_rows = np.flatnonzero(np.diff(np.concatenate([[-1], vol])))
  arrays = {"images": out, "partition_counts": counts,
            **{k: dataset.arrays[k][first_rows] for k in ("group", "site", "split") if dataset.has(k)}}
  return PreparedDataset(arrays, {**dataset.meta, "layout": f"volumes x {num_partitions} partitions"})


def sample_partition_slices(key: jax.Array, images: jax.Array, counts: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One random slice per partition of each volume.

  Args:
    key: PRNG key.
    images: ``[B, S, P, H, W, C]`` volumes in the layout of ``to_volumes``.
    counts: int ``[B, S]`` real slices per partition (>= 1).
  Returns:
    (slices ``[B * S, H, W, C]`` ordered volume-major, partition ids int32 ``[B * S]``).
  """
  batch, parts = counts.shape
  u = jax.random.uniform(key, (batch, parts))
  pick = jnp.minimum(jnp.floor(u * counts).astype(jnp.int32), jnp.maximum(counts - 1, 0))
  slices = jnp.take_along_axis(images, pick[:, :, None, None, None, None], axis=2)[:, :, 0]
  return slices.reshape((batch * parts,) + images.shape[3:]), jnp.tile(jnp.arange(parts, dtype=jnp.int32), batch)
