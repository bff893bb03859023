"""Losses of MultiMix's semi-supervised multi-task objective (Haque et al., ISBI 2021 / MELBA 2021).

* FixMatch's unlabeled term (Sohn et al., NeurIPS 2020): the weak view's prediction becomes a hard pseudo-label
  where its confidence reaches ``threshold``; cross-entropy of the strong view against it, averaged over ALL
  unlabeled samples (masked ones count 0, as the official code), static shapes throughout.
* An unlabeled segmentation consistency with a gradient: the pixel-wise KL from the (stop-gradient) prediction on
  one view to the prediction on a second, pixel-aligned view. The official ``KL_seg`` applies a softmax over a
  single channel and is identically zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def pseudo_labels(weak_logits: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """``(labels int [B], mask float [B])``: argmax of the weak view and 1 where its max probability >= threshold."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits), axis=-1)
  return jnp.argmax(probs, axis=-1), (jnp.max(probs, axis=-1) >= threshold).astype(weak_logits.dtype)


def fixmatch_loss(weak_logits: jax.Array, strong_logits: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """``(mean_b mask_b CE(strong_b, pseudo_b), kept fraction)``; logits ``[B, C]``."""
  labels, mask = pseudo_labels(weak_logits, threshold)
  per_sample = optax.softmax_cross_entropy_with_integer_labels(strong_logits, labels)
  return jnp.mean(mask * per_sample), jnp.mean(mask)


def segmentation_consistency(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """Mean over pixels of ``KL(softmax(stopgrad(target)) || softmax(logits))``; both ``[B, H, W, C]``."""
  target = jax.nn.log_softmax(jax.lax.stop_gradient(target_logits), axis=-1)
  prediction = jax.nn.log_softmax(logits, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(target) * (target - prediction), axis=-1))
