"""Supervised losses that return per-example values and take weights (masks as weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Softmax cross-entropy per position.

  Args:
    logits: ``[..., num_classes]``.
    labels: int ``[...]``; negative labels (unlabeled / ignored) get weight 0.
    weights: optional ``[...]`` multiplied in.

  Returns:
    ``[...]`` loss values, 0 where the weight is 0.
  """
  valid = labels >= 0
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  w = valid.astype(logits.dtype) if weights is None else valid * weights
  return loss * w


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Sum of values over sum of weights; 0 (not NaN) when every weight is 0."""
  return jnp.sum(values) / jnp.maximum(jnp.sum(weights), 1e-8)


def soft_dice_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                   include_background: bool = False, smooth: float = 1e-5) -> jax.Array:
  """1 - soft Dice per image, averaged over classes (Milletari et al., V-Net, 3DV 2016, Eq. 1 without squares).

  Args:
    logits: ``[batch, H, W, num_classes]``.
    labels: int ``[batch, H, W]``; negative = ignored.
    weights: optional ``[batch, H, W]`` pixel weights (e.g. the field of view).
    include_background: whether class 0 enters the mean.
    smooth: added to numerator and denominator, so an empty class in both gives loss 0.

  Returns:
    ``[batch]`` losses.
  """
  num_classes = logits.shape[-1]
  valid = (labels >= 0).astype(logits.dtype)
  w = valid if weights is None else valid * weights
  probs = jax.nn.softmax(logits, axis=-1) * w[..., None]
  onehot = jax.nn.one_hot(jnp.where(labels >= 0, labels, 0), num_classes, dtype=logits.dtype) * w[..., None]
  axes = tuple(range(1, logits.ndim - 1))
  intersection = jnp.sum(probs * onehot, axis=axes)
  denominator = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2 * intersection + smooth) / (denominator + smooth)
  first = 0 if include_background else 1
  return 1.0 - jnp.mean(dice[:, first:], axis=-1)
