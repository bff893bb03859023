"""Losses of MultiMix's semi-supervised multi-task objective (Haque et al., ISBI 2021 / MELBA 2021).

* FixMatch's unlabeled term (Sohn et al., NeurIPS 2020): the weak view's prediction becomes a hard pseudo-label
  where its confidence reaches ``threshold``; cross-entropy of the strong view against it, averaged over ALL
  unlabeled samples (masked ones count 0, as the official code), static shapes throughout.
* Distribution alignment of those pseudo-labels (ours, off by default; Berthelot et al., "ReMixMatch:
  Semi-Supervised Learning with Distribution Alignment and Augmentation Anchoring", ICLR 2020, section 3.1,
  https://arxiv.org/abs/1911.09785): the weak view's class probabilities are multiplied by the ratio of the labeled
  class prior to a running mean of the model's predictions on unlabeled images and renormalised, before the argmax
  and the threshold. A classifier that leans to the majority class has that class's running mean above its prior,
  so its pseudo-labels are pulled back towards the labeled distribution.
* An unlabeled segmentation consistency with a gradient: the pixel-wise KL from the (stop-gradient) prediction on
  one view to the prediction on a second, pixel-aligned view. The official ``KL_seg`` applies a softmax over a
  single channel and is identically zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

ALIGNMENT_COLLECTION = "distribution_alignment"  # model variables collection holding the running mean
MIN_MEAN = 1e-12  # floor of the running mean in the ratio (a mean of softmax outputs is > 0 but may underflow)


def align_distribution(probs: jax.Array, class_prior: jax.Array, unlabeled_mean: jax.Array) -> jax.Array:
  """ReMixMatch's distribution alignment: ``probs [B, C] * class_prior [C] / unlabeled_mean [C]``, renormalised to
  sum 1 per sample (Berthelot et al., ICLR 2020, section 3.1)."""
  aligned = probs * (class_prior / jnp.maximum(unlabeled_mean, MIN_MEAN))
  return aligned / jnp.sum(aligned, axis=-1, keepdims=True)


def update_unlabeled_mean(unlabeled_mean: jax.Array, weak_logits: jax.Array, momentum: float) -> jax.Array:
  """``momentum * unlabeled_mean + (1 - momentum) * mean_b softmax(weak_logits)_b``: the running mean ``[C]`` of the
  model's class probabilities on unlabeled images (ReMixMatch averages the last 128 batches; an exponential mean
  needs no buffer). No gradient flows into it."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits), axis=-1)
  return momentum * unlabeled_mean + (1.0 - momentum) * jnp.mean(probs, axis=0)


def pseudo_labels(weak_logits: jax.Array, threshold: float, class_prior: jax.Array | None = None,
                  unlabeled_mean: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(labels int [B], mask float [B])``: argmax of the weak view and 1 where its max probability >= threshold.

  With ``class_prior`` and ``unlabeled_mean`` (``[C]`` each) the probabilities are aligned first
  (:func:`align_distribution`): the argmax and the threshold apply to the aligned distribution.
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(weak_logits), axis=-1)
  if class_prior is not None:
    probs = align_distribution(probs, class_prior, unlabeled_mean)
  return jnp.argmax(probs, axis=-1), (jnp.max(probs, axis=-1) >= threshold).astype(weak_logits.dtype)


def fixmatch_loss(weak_logits: jax.Array, strong_logits: jax.Array, threshold: float,
                  class_prior: jax.Array | None = None,
                  unlabeled_mean: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(mean_b mask_b CE(strong_b, pseudo_b), kept fraction)``; logits ``[B, C]``; pseudo-labels as
  :func:`pseudo_labels` (aligned when ``class_prior`` is given)."""
  labels, mask = pseudo_labels(weak_logits, threshold, class_prior, unlabeled_mean)
  per_sample = optax.softmax_cross_entropy_with_integer_labels(strong_logits, labels)
  return jnp.mean(mask * per_sample), jnp.mean(mask)


def segmentation_consistency(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """Mean over pixels of ``KL(softmax(stopgrad(target)) || softmax(logits))``; both ``[B, H, W, C]``."""
  target = jax.nn.log_softmax(jax.lax.stop_gradient(target_logits), axis=-1)
  prediction = jax.nn.log_softmax(logits, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(target) * (target - prediction), axis=-1))
