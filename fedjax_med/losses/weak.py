"""Losses for weak (sparse) segmentation labels: partial cross-entropy, the gated CRF loss, and their sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_med.losses.supervised import cross_entropy, weighted_mean


def partial_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int) -> jax.Array:
  """Mean cross-entropy over annotated pixels only (``labels != ignore_index``); 0 when none is annotated.

  logits ``[B, H, W, C]``, labels int ``[B, H, W]``.
  """
  annotated = labels != ignore_index
  per_pixel = cross_entropy(logits, jnp.where(annotated, labels, -1))
  return weighted_mean(per_pixel, annotated.astype(logits.dtype))


def gated_crf_loss(probs: jax.Array, images: jax.Array, radius: int = 5, sigma_xy: float = 6.0,
                   sigma_rgb: float = 0.1, weight: float = 1.0) -> jax.Array:
  """Gated CRF loss with a Potts compatibility (Obukhov et al., arXiv 1906.04651, Eq. 3; no gating masks):

    ``sum_{i, j in window(i), j != i} K(i, j) (1 - sum_c y_ic y_jc) / (B H W)``,
    ``K(i, j) = weight * exp(-|I_i - I_j|^2 / (2 sigma_rgb^2) - |p_i - p_j|^2 / (2 sigma_xy^2))``

  over the ``(2 radius + 1)^2`` window, pairs leaving the image excluded. As FedICRA: radius 5, sigma_xy 6 px,
  sigma_rgb 0.1 on intensities in [0, 1]. Computed as one shifted product per offset (static shapes).

  Args:
    probs: softmax ``[B, H, W, C]``; images: ``[B, H, W, K]`` intensities (the kernel's colour features).
  Returns:
    scalar loss.
  """
  batch, height, width, _ = probs.shape
  pad = ((0, 0), (radius, radius), (radius, radius), (0, 0))
  probs_p, images_p = jnp.pad(probs, pad), jnp.pad(images, pad)
  inside = jnp.pad(jnp.ones((1, height, width, 1), probs.dtype), pad)
  total = jnp.zeros((), probs.dtype)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      if dy == 0 and dx == 0:
        continue
      rows, cols = slice(radius + dy, radius + dy + height), slice(radius + dx, radius + dx + width)
      colour = jnp.sum(jnp.square(images - images_p[:, rows, cols]), axis=-1) / (2 * sigma_rgb**2)
      kernel = weight * jnp.exp(-colour - (dy * dy + dx * dx) / (2 * sigma_xy**2)) * inside[:, rows, cols, 0]
      disagreement = 1.0 - jnp.sum(probs * probs_p[:, rows, cols], axis=-1)
      total = total + jnp.sum(kernel * disagreement)
  return total / (batch * height * width)


def partial_ce_crf(logits: jax.Array, labels: jax.Array, images: jax.Array, ignore_index: int, crf_weight: float,
                   crf_radius: int, crf_sigma_xy: float, crf_sigma_rgb: float) -> tuple[jax.Array, dict]:
  """``partial_cross_entropy + crf_weight * gated_crf_loss(softmax(logits))`` and its parts (``pce``, and ``crf``
  when ``crf_weight`` is non-zero): the weakly-supervised objective of FedICRA's baselines and its first terms.

  Args:
    logits: ``[B, H, W, C]``; labels: int ``[B, H, W]`` (``ignore_index`` = unannotated);
    images: ``[B, H, W, K]`` intensities in [0, 1] (the CRF kernel's colour features).
  Returns:
    (scalar loss, ``{"pce": ..., "crf": ...}``).
  """
  parts = {"pce": partial_cross_entropy(logits, labels, ignore_index)}
  total = parts["pce"]
  if crf_weight:
    parts["crf"] = gated_crf_loss(jax.nn.softmax(logits, axis=-1), images, crf_radius, crf_sigma_xy, crf_sigma_rgb)
    total = total + crf_weight * parts["crf"]
  return total, parts
