"""Device-resident client data and the batch functions that sample it inside the jitted round.

Each cohort's training data is stacked as ``[num_clients, max_count, ...]`` (padded
per client, uint8 to keep it small) and lives on the device; batch functions turn
per-step indices into a float batch, augmenting on device from PRNG keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.data import augment, volumes
from fedjax_med.data.format import PreparedDataset
from fedjax_med.engine.execution import CohortData, LocalPlan
from fedjax_med.engine.sampling import num_epochs_needed
from fedjax_med.registry import Registry

TRAIN_KEYS = ("images", "labels", "masks", "fov", "scribbles", "partition_counts", "client_index", "cls_labeled",
              "seg_labeled", "seg_unlabeled", "cls_pool")
# data.batch_mode -> (mean, std, flips, patch_size, views) -> batch_fn; filled below, at import
BATCH_MODES = Registry("batch mode")


def stack_clients(datasets: Sequence[PreparedDataset], keys: Sequence[str] = TRAIN_KEYS) -> dict[str, np.ndarray]:
  """Stacks the clients' arrays along a new axis 0, zero-padded to the largest client."""
  present = [k for k in keys if all(d.has(k) for d in datasets)]
  max_count = max(len(d) for d in datasets)
  stacked = {}
  for key in present:
    first = datasets[0].arrays[key]
    out = np.zeros((len(datasets), max_count) + first.shape[1:], first.dtype)
    for i, d in enumerate(datasets):
      out[i, : len(d)] = d.arrays[key]
    stacked[key] = out
  return stacked


def cohort_data(datasets: Sequence[PreparedDataset], client_ids: Sequence[int], batch_size: int,
                local_steps: int, local_epochs: float) -> tuple[CohortData, LocalPlan]:
  """Builds a cohort's device data and its static local plan.

  Exactly one of ``local_steps`` (> 0) and ``local_epochs`` (> 0) is used: with
  epochs, client i takes ``ceil(local_epochs * count_i / batch_size)`` steps.
  """
  counts = np.array([len(d) for d in datasets], np.int32)
  if counts.min() == 0:
    raise ValueError(f"clients {[client_ids[i] for i in np.flatnonzero(counts == 0)]} hold no training data")
  if local_epochs > 0:
    steps = np.array([math.ceil(local_epochs * c / batch_size) for c in counts], np.int32)
  else:
    steps = np.full(len(counts), local_steps, np.int32)
  num_steps = int(steps.max())
  plan = LocalPlan(num_steps=num_steps, batch_size=batch_size,
                   num_epochs=num_epochs_needed(num_steps, batch_size, int(counts.min())),
                   max_count=int(counts.max()), ragged=bool((steps != num_steps).any()))
  arrays = {k: jnp.asarray(v) for k, v in stack_clients(datasets).items()}
  data = CohortData(arrays, jnp.asarray(counts), jnp.asarray(np.asarray(client_ids, np.int32)), jnp.asarray(steps))
  return data, plan


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 ``[..., C]`` -> float32 ``(x / 255 - mean) / std`` per channel."""
  return normalize_unit(images.astype(jnp.float32) / 255.0, mean, std)


def normalize_unit(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """float ``[..., C]`` in [0, 1] -> ``(x - mean) / std`` per channel."""
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _targets(arrays: Mapping[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
  batch = {}
  if "labels" in arrays:
    batch["labels"] = arrays["labels"][idx].astype(jnp.int32)
  if "masks" in arrays:
    batch["masks"] = arrays["masks"][idx].astype(jnp.int32)
  if "scribbles" in arrays:
    batch["scribbles"] = arrays["scribbles"][idx].astype(jnp.int32)
  if "client_index" in arrays:  # which client (site) a row belongs to, e.g. for a site embedding
    batch["client_index"] = arrays["client_index"][idx]
  return batch


def random_flips(key: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Flips each example horizontally and vertically with probability 1/2; masks move with images."""
  batch_size = batch["images"].shape[0]
  flips = jax.random.bernoulli(key, 0.5, (2, batch_size))

  def flip(x, axis, which):
    shape = (batch_size,) + (1,) * (x.ndim - 1)
    return jnp.where(which.reshape(shape), jnp.flip(x, axis=axis), x)

  out = {}
  for name, x in batch.items():
    if x.ndim >= 3:  # [B, H, W, ...]
      x = flip(flip(x, 1, flips[0]), 2, flips[1])
    out[name] = x
  return out


def image_batch_fn(mean: Sequence[float], std: Sequence[float], flips: bool, views: Sequence[str] = ()) -> Callable:
  """Whole examples: ``batch = {images [B,H,W,C] float, labels?, masks?, weights [B,H,W]}``.

  With ``views`` (classification), every view is an independent augmentation of the same
  rows (``augment.view_fn``): ``images`` is the first, ``images_2``, ``images_3``... the others.
  """
  view_fns = [augment.view_fn(v) for v in views]

  def batch_fn(arrays, idx, key):
    images = arrays["images"][idx]
    batch = {"images": images, **_targets(arrays, idx)}
    batch["weights"] = (arrays["fov"][idx] if "fov" in arrays else jnp.ones(images.shape[:3], jnp.uint8))
    if view_fns:
      raw = images.astype(jnp.float32) / 255.0
      for i, (fn, k) in enumerate(zip(view_fns, jax.random.split(key, len(view_fns)))):
        batch["images" if i == 0 else f"images_{i + 1}"] = normalize_unit(fn(k, raw), mean, std)
      batch["weights"] = batch["weights"].astype(jnp.float32)
      return batch
    if flips:
      batch = random_flips(key, batch)
    batch["images"] = normalize(batch["images"], mean, std)
    batch["weights"] = batch["weights"].astype(jnp.float32)
    return batch

  return batch_fn


def patch_batch_fn(patch_size: int, mean: Sequence[float], std: Sequence[float], flips: bool) -> Callable:
  """Random ``patch_size`` crops of random images (e.g. DRIVE vessels); fov crops become pixel weights."""

  def batch_fn(arrays, idx, key):
    key_crop, key_flip = jax.random.split(key)
    height, width = arrays["images"].shape[1:3]
    corners = jax.random.randint(key_crop, (idx.shape[0], 2), 0,
                                 jnp.array([height - patch_size + 1, width - patch_size + 1]))

    def crop(x, i, corner):
      start = (i, corner[0], corner[1]) + (0,) * (x.ndim - 3)
      size = (1, patch_size, patch_size) + x.shape[3:]
      return jax.lax.dynamic_slice(x, start, size)[0]

    batch = {}
    for name in ("images", "labels", "masks", "fov", "scribbles"):
      if name not in arrays:
        continue
      if name == "labels":
        batch[name] = arrays[name][idx].astype(jnp.int32)
      else:
        batch[name] = jax.vmap(crop, in_axes=(None, 0, 0))(arrays[name], idx, corners)
    batch["weights"] = batch.pop("fov") if "fov" in batch else jnp.ones(batch["images"].shape[:3], jnp.uint8)
    if flips:
      batch = random_flips(key_flip, batch)
    for name in ("masks", "scribbles"):
      if name in batch:
        batch[name] = batch[name].astype(jnp.int32)
    batch["images"] = normalize(batch["images"], mean, std)
    batch["weights"] = batch["weights"].astype(jnp.float32)
    return batch

  return batch_fn


def volume_partition_batch_fn(mean: Sequence[float], std: Sequence[float], views: Sequence[str]) -> Callable:
  """Volumes in the layout of ``data.volumes.to_volumes``: each sampled volume gives one random slice per
  partition. ``batch = {images, images_2, ... [B * S, H, W, C], partition int32 [B * S]}``, one view per name
  in ``views`` (at least one)."""
  if not views:
    raise ValueError("data.batch_mode='volume_partitions' needs data.views (e.g. ('spatial', 'spatial'))")
  view_fns = [augment.view_fn(v) for v in views]

  def batch_fn(arrays, idx, key):
    k_slices, k_views = jax.random.split(key)
    slices, partition = volumes.sample_partition_slices(k_slices, arrays["images"][idx],
                                                        arrays["partition_counts"][idx])
    raw = slices.astype(jnp.float32) / 255.0
    batch = {"partition": partition}
    for i, (fn, k) in enumerate(zip(view_fns, jax.random.split(k_views, len(view_fns)))):
      batch["images" if i == 0 else f"images_{i + 1}"] = normalize_unit(fn(k, raw), mean, std)
    return batch

  return batch_fn


def stream_rows(key: jax.Array, flags: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """``count`` rows drawn with replacement among those whose flag is 1, and their flags (all 0 when no row has
  the flag: then the rows are arbitrary and the loss weights them out). Static shapes, no host sync."""
  weights = flags.astype(jnp.float32)
  fallback = jnp.ones_like(weights) / weights.shape[0]
  p = jnp.where(jnp.sum(weights) > 0, weights / jnp.maximum(jnp.sum(weights), 1.0), fallback)
  rows = jax.random.choice(key, weights.shape[0], (count,), p=p)
  return rows, weights[rows]


def multitask_batch_fn(mean: Sequence[float], std: Sequence[float]) -> Callable:
  """MultiMix's four streams from one client's rows (``batch_size`` each):

  * ``cls_*``: rows with a class label (``cls_labeled``), weak view; ``cls_weight`` 0 if the client has none;
  * ``weak`` / ``strong``: the engine's rows (all rows, labeled or not, as the unlabeled stream), two views of the
    same images (FixMatch pairing); when the rows carry ``cls_pool`` (a second, classification-only dataset,
    ``budgets.with_classification_stream``), rows drawn among the flagged ones instead;
  * ``seg_*``: rows with a mask (``seg_labeled``), weak geometry applied to image and mask alike;
  * ``seg_u`` / ``seg_u_photo``: rows without a mask (``seg_unlabeled``), weak view and a pixel-aligned photometric
    view of it.
  Padding rows (clients are zero-padded to the largest) have every flag 0 and are never drawn.
  """

  def batch_fn(arrays, idx, key):
    count = idx.shape[0]
    k_cls, k_seg, k_unl, k_v1, k_v2, k_v3, k_v4, k_v5, k_v6 = jax.random.split(key, 9)
    k_unl_cls = jax.random.fold_in(k_unl, 1)
    unit = lambda rows: arrays["images"][rows].astype(jnp.float32) / 255.0
    norm = lambda x: normalize_unit(x, mean, std)
    cls_rows, cls_weight = stream_rows(k_cls, arrays["cls_labeled"], count)
    seg_rows, seg_weight = stream_rows(k_seg, arrays["seg_labeled"], count)
    unl_rows, _ = stream_rows(k_unl, arrays["seg_unlabeled"], count)
    unl_rows = jnp.where(jnp.sum(arrays["seg_unlabeled"]) > 0, unl_rows, idx)  # every row has a mask: use any
    if "cls_pool" in arrays:  # the classification images come from their own dataset
      cls_unl_rows, _ = stream_rows(k_unl_cls, arrays["cls_pool"], count)
      raw = unit(cls_unl_rows)
    else:
      raw = unit(idx)
    seg_images, seg_masks = augment.weak_view_with_labels(k_v3, unit(seg_rows), arrays["masks"][seg_rows])
    seg_u = augment.weak_view(k_v4, unit(unl_rows))
    return {
        "cls_images": norm(augment.weak_view(k_v1, unit(cls_rows))),
        "cls_labels": arrays["labels"][cls_rows].astype(jnp.int32), "cls_weight": cls_weight,
        "weak": norm(augment.weak_view(k_v2, raw)), "strong": norm(augment.strong_view(k_v6, raw)),
        "seg_images": norm(seg_images), "seg_masks": seg_masks.astype(jnp.int32), "seg_weight": seg_weight,
        "seg_u": norm(seg_u), "seg_u_photo": norm(augment.photometric_view(k_v5, seg_u)),
    }

  return batch_fn


@BATCH_MODES.register("images")
def _images(mean: Sequence[float], std: Sequence[float], flips: bool, patch_size: int, views: Sequence[str]):
  del patch_size
  return image_batch_fn(mean, std, flips, views)


@BATCH_MODES.register("patches")
def _patches(mean: Sequence[float], std: Sequence[float], flips: bool, patch_size: int, views: Sequence[str]):
  if views:
    raise ValueError(f"data.views={tuple(views)} needs data.batch_mode='images'; got 'patches'")
  if patch_size <= 0:
    raise ValueError(f"data.batch_mode='patches' needs data.patch_size > 0; got {patch_size=}")
  return patch_batch_fn(patch_size, mean, std, flips)


@BATCH_MODES.register("volume_partitions")
def _volume_partitions(mean: Sequence[float], std: Sequence[float], flips: bool, patch_size: int,
                       views: Sequence[str]):
  del flips, patch_size
  return volume_partition_batch_fn(mean, std, views)


@BATCH_MODES.register("multitask")
def _multitask(mean: Sequence[float], std: Sequence[float], flips: bool, patch_size: int, views: Sequence[str]):
  del flips, patch_size, views
  return multitask_batch_fn(mean, std)


def make_batch_fn(mode: str, *, mean: Sequence[float], std: Sequence[float], flips: bool, patch_size: int = 0,
                  views: Sequence[str] = ()) -> Callable:
  """The batch function of ``data.batch_mode`` ``mode`` (registered in :data:`BATCH_MODES`)."""
  return BATCH_MODES.get(mode, what="data.batch_mode")(mean, std, flips, patch_size, views)
