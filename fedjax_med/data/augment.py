"""Image augmentations on device, per example, from PRNG keys (static shapes, jittable).

Images are float ``[B, H, W, C]`` in ``[0, 1]`` (before normalisation). Geometric
ops are one affine warp per example (bilinear, edge pixels repeated); photometric
ops are per-example selections among the pool computed for the whole batch, so a
batch never branches. Views are named: ``weak`` (flips, small rotation and
shift, as the FedIRM code's RandomAffine(10 deg, 2 %) + flip) and ``strong``
(weak, then ``strong_ops`` random ops of the RandAugment-style pool below at a
random magnitude, then a cutout square), as FixMatch (Sohn et al., NeurIPS 2020)
draws them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

VIEWS = ("weak", "strong", "spatial")
WEAK_DEGREES = 10.0
WEAK_TRANSLATE = 0.02  # fraction of the image size
STRONG_DEGREES = 30.0
STRONG_SHEAR = 0.3
STRONG_TRANSLATE = 0.3
STRONG_OPS = 2
EQUALIZE_BINS = 256  # as PIL
SPATIAL_DEGREES = 180.0  # the PCL / FCL pre-training pipeline: any rotation, scale 0.7-1.3, mirroring
SPATIAL_SCALE = (0.7, 1.3)
SPATIAL_TRANSLATE = 0.1
CUTOUT_FRACTION = 0.5  # side of the cutout square relative to the image side (FixMatch: up to 0.5)


def affine_matrices(key: jax.Array, batch: int, degrees: float, translate: float, shear: float = 0.0,
                    flips: bool = True, scale: tuple[float, float] = (1.0, 1.0)) -> jax.Array:
  """Per-example 2x3 maps from output to input coordinates (centred, in pixels/size units) ``[B, 2, 3]``.

  ``scale`` (zoom of the content) is drawn uniformly in the given range; the map divides by it.
  """
  k_rot, k_shift, k_shear, k_flip = jax.random.split(key, 4)
  zoom = jax.random.uniform(jax.random.fold_in(key, 1), (batch, 1, 1), minval=scale[0], maxval=scale[1])
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (batch,), minval=-degrees, maxval=degrees))
  shift = jax.random.uniform(k_shift, (batch, 2), minval=-translate, maxval=translate)
  sh = jax.random.uniform(k_shear, (batch,), minval=-shear, maxval=shear)
  flip = jnp.where(jax.random.bernoulli(k_flip, 0.5, (batch, 2)) & flips, -1.0, 1.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  shearing = jnp.stack([jnp.stack([jnp.ones_like(sh), sh], -1), jnp.stack([jnp.zeros_like(sh), jnp.ones_like(sh)], -1)],
                       -2)
  linear = rotation @ shearing * flip[:, None, :] / zoom
  return jnp.concatenate([linear, shift[..., None]], axis=-1)


def warp(images: jax.Array, matrices: jax.Array) -> jax.Array:
  """Bilinear resampling of ``images [B, H, W, C]`` by ``matrices [B, 2, 3]`` (coordinates in [-1, 1])."""
  _, height, width, _ = images.shape
  ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, height), jnp.linspace(-1, 1, width), indexing="ij")
  grid = jnp.stack([ys.ravel(), xs.ravel(), jnp.ones(height * width)], 0)  # [3, HW]

  def one(image, matrix):
    src = matrix @ grid  # [2, HW] in [-1, 1]
    rows = (src[0] + 1) * (height - 1) / 2
    cols = (src[1] + 1) * (width - 1) / 2
    sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [rows, cols], order=1, mode="nearest")
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image).reshape(image.shape)

  return jax.vmap(one)(images, matrices)


def _per_example(x: jax.Array, shape_from: jax.Array) -> jax.Array:
  return x.reshape((-1,) + (1,) * (shape_from.ndim - 1))


def _blend(a: jax.Array, b: jax.Array, factor: jax.Array) -> jax.Array:
  """``b + factor * (a - b)`` clipped to [0, 1] (PIL's ImageEnhance convention: factor 1 = a)."""
  return jnp.clip(b + _per_example(factor, a) * (a - b), 0.0, 1.0)


def _grey(images: jax.Array) -> jax.Array:
  if images.shape[-1] == 3:
    return jnp.sum(images * jnp.array([0.299, 0.587, 0.114]), -1, keepdims=True)
  return jnp.mean(images, -1, keepdims=True)


def _blur(images: jax.Array) -> jax.Array:
  """PIL's SMOOTH filter (centre 5, neighbours 1, /13) as shifted sums (depthwise convs are slow on CPU)."""
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  total = sum(padded[:, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))
  return (total + 4.0 * images) / 13.0


def _equalize(images: jax.Array, bins: int = EQUALIZE_BINS) -> jax.Array:
  """Histogram equalisation per example and channel: each pixel -> the CDF of its ``bins``-level bin."""
  batch, height, width, channels = images.shape
  flat = images.reshape(batch, height * width, channels)
  level = jnp.clip(jnp.floor(flat * bins), 0, bins - 1)
  # histogram by one scatter-add (comparisons against every bin cost ~40x more on CPU)
  slot = (jnp.arange(batch)[:, None, None] * channels + jnp.arange(channels)) * bins + level.astype(jnp.int32)
  hist = jax.ops.segment_sum(jnp.ones(slot.size, jnp.float32), slot.ravel(), batch * channels * bins)
  cdf = jnp.cumsum(hist.reshape(batch, channels, bins), axis=-1) / (height * width)  # [B, C, bins]
  low = jnp.min(jnp.where(cdf > 0, cdf, 1.0), axis=-1, keepdims=True)
  cdf = jnp.clip((cdf - low) / jnp.maximum(1.0 - low, 1e-6), 0.0, 1.0)
  mapped = jnp.take_along_axis(cdf, level.astype(jnp.int32).transpose(0, 2, 1), axis=2)  # [B, C, HW]
  return mapped.transpose(0, 2, 1).reshape(images.shape)


def _autocontrast(images: jax.Array) -> jax.Array:
  low = jnp.min(images, axis=(1, 2), keepdims=True)
  high = jnp.max(images, axis=(1, 2), keepdims=True)
  return jnp.where(high > low, (images - low) / jnp.maximum(high - low, 1e-6), images)


def photometric_pool(images: jax.Array, magnitude: jax.Array, sign: jax.Array) -> list[jax.Array]:
  """Every photometric op of the strong pool applied to the batch at per-example ``magnitude`` in [0, 1].

  ``sign`` (per example, +1 or -1) is the direction of the enhance ops (brightness, contrast, colour, sharpness):
  factor ``1 + 0.9 * sign * magnitude``, +1 strengthens and -1 weakens (RandAugment draws a random sign per image).
  """
  signed = magnitude * sign
  mean = jnp.mean(_grey(images), axis=(1, 2, 3), keepdims=True)
  bits = jnp.round(8 - 4 * magnitude)  # posterize to 8..4 bits
  levels = _per_example(2.0 ** bits, images)
  threshold = _per_example(1.0 - magnitude, images)
  return [
      _autocontrast(images),
      _blend(images, jnp.zeros_like(images), 1 + 0.9 * signed),            # brightness
      _blend(images, jnp.broadcast_to(mean, images.shape), 1 + 0.9 * signed),  # contrast
      _blend(images, jnp.broadcast_to(_grey(images), images.shape), 1 + 0.9 * signed),  # colour
      _equalize(images),
      jnp.floor(images * (levels - 1) + 0.5) / (levels - 1),                # posterize
      _blend(images, _blur(images), 1 + 0.9 * signed),                       # sharpness
      jnp.where(images >= threshold, 1.0 - images, images),                  # solarize
      images,                                                                # identity
  ]


def weak_view(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips + rotation up to 10 degrees + shift up to 2 %."""
  return warp(images, affine_matrices(key, images.shape[0], WEAK_DEGREES, WEAK_TRANSLATE))


def spatial_view(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips + any rotation + scale 0.7-1.3 + shift up to 10 % (the PCL pre-training transforms without the
  elastic deformation)."""
  return warp(images, affine_matrices(key, images.shape[0], SPATIAL_DEGREES, SPATIAL_TRANSLATE,
                                      scale=SPATIAL_SCALE))


def warp_labels(labels: jax.Array, matrices: jax.Array) -> jax.Array:
  """Nearest-neighbour resampling of int ``labels [B, H, W]`` by the same maps as :func:`warp` (edges repeated)."""
  _, height, width = labels.shape
  ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, height), jnp.linspace(-1, 1, width), indexing="ij")
  grid = jnp.stack([ys.ravel(), xs.ravel(), jnp.ones(height * width)], 0)

  def one(label, matrix):
    src = matrix @ grid
    rows = jnp.clip(jnp.round((src[0] + 1) * (height - 1) / 2), 0, height - 1).astype(jnp.int32)
    cols = jnp.clip(jnp.round((src[1] + 1) * (width - 1) / 2), 0, width - 1).astype(jnp.int32)
    return label[rows, cols].reshape(label.shape)

  return jax.vmap(one)(labels, matrices)


def weak_view_with_labels(key: jax.Array, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`weak_view` of ``images`` and the same geometry applied to ``labels [B, H, W]`` (nearest)."""
  matrices = affine_matrices(key, images.shape[0], WEAK_DEGREES, WEAK_TRANSLATE)
  return warp(images, matrices), warp_labels(labels, matrices)


def random_photometric_op(k_choice: jax.Array, k_magnitude: jax.Array, images: jax.Array) -> jax.Array:
  """One op of the photometric pool per example, at a random magnitude and enhance direction per example.

  Every draw is per sample: which op, its magnitude and its sign (the sign used to alternate with the position in
  the batch, so even rows were only ever brightened and odd rows only darkened).
  """
  batch = images.shape[0]
  magnitude = jax.random.uniform(k_magnitude, (batch,))
  sign = jax.random.rademacher(jax.random.fold_in(k_magnitude, 1), (batch,), dtype=images.dtype)
  pool = jnp.stack(photometric_pool(images, magnitude, sign))  # [ops, B, H, W, C]
  choice = jax.random.randint(k_choice, (batch,), 0, pool.shape[0])
  return jnp.take_along_axis(pool, choice[None, :, None, None, None], axis=0)[0]


def photometric_view(key: jax.Array, images: jax.Array, num_ops: int = STRONG_OPS) -> jax.Array:
  """``num_ops`` random photometric ops of the strong pool, no geometry: pixels stay aligned with the input (for
  consistency terms on dense predictions)."""
  for k_choice, k_magnitude in zip(*[iter(jax.random.split(key, 2 * num_ops))] * 2):
    images = random_photometric_op(k_choice, k_magnitude, images)
  return images


def cutout(key: jax.Array, images: jax.Array, fraction: float) -> jax.Array:
  """Greys out one random square of side up to ``fraction`` of the image per example."""
  batch, height, width, _ = images.shape
  k_size, k_y, k_x = jax.random.split(key, 3)
  size = jax.random.uniform(k_size, (batch, 1, 1), maxval=fraction) * min(height, width)
  cy = jax.random.uniform(k_y, (batch, 1, 1)) * height
  cx = jax.random.uniform(k_x, (batch, 1, 1)) * width
  ys, xs = jnp.arange(height)[None, :, None], jnp.arange(width)[None, None, :]
  inside = (jnp.abs(ys - cy) <= size / 2) & (jnp.abs(xs - cx) <= size / 2)
  return jnp.where(inside[..., None], 0.5, images)


def strong_view(key: jax.Array, images: jax.Array, num_ops: int = STRONG_OPS) -> jax.Array:
  """Weak flips, a strong affine (rotate / shear / translate), ``num_ops`` photometric ops, cutout."""
  batch = images.shape[0]
  k_affine, k_cut, *k_ops = jax.random.split(key, 2 + 2 * num_ops)
  # rotation, shear and translation at random magnitudes, composed into one warp (one resampling)
  images = warp(images, affine_matrices(k_affine, batch, STRONG_DEGREES, STRONG_TRANSLATE, STRONG_SHEAR))
  for k_choice, k_magnitude in zip(k_ops[0::2], k_ops[1::2]):
    images = random_photometric_op(k_choice, k_magnitude, images)
  return cutout(k_cut, images, CUTOUT_FRACTION)


def view_fn(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The augmentation of a named view; ValueError naming the allowed views otherwise."""
  if name == "weak":
    return weak_view
  if name == "strong":
    return strong_view
  if name == "spatial":
    return spatial_view
  raise ValueError(f"unknown augmentation view {name!r}; allowed: {VIEWS}")
