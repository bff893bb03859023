"""Inter-client relation matching (FedIRM) as functional transforms.

Liu, Yang, Dou, Heng, "Federated Semi-supervised Medical Image Classification via
Inter-client Relation Matching", MICCAI 2021 (arXiv 2106.08600), Sec. 2.2-2.3: a
client's disease relation matrix (DRM) row c is the softened class distribution of
its class-c samples; unlabeled clients are pulled to the labeled clients' DRM by a
symmetric KL divergence. Shapes are static: sample selection is by weights, never by
boolean indexing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DRM_MODES = ("average_probabilities", "average_logits")


def relation_matrix(logits: jax.Array, onehot: jax.Array, temperature: float,
                    mode: str = "average_probabilities", eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
  """Disease relation matrix of one batch.

  Args:
    logits: ``[batch, C]``.
    onehot: ``[batch, C]`` (pseudo-)label one-hots multiplied by per-sample weights;
      all-zero rows (unselected samples) do not count.
    temperature: softening temperature T.
    mode: ``average_probabilities`` (the paper: row c = mean over class-c samples of
      ``softmax(z / T)``) or ``average_logits`` (the official code: ``softmax(mean z / T)``).

  Returns:
    ``(drm [C, C], counts [C])``; a class with no sample has a uniform row and count 0,
    so callers can weight rows by counts when they average over batches or clients.
  """
  if mode not in DRM_MODES:
    raise ValueError(f"unknown relation matrix mode {mode!r}; allowed: {DRM_MODES}")
  counts = jnp.sum(onehot, axis=0)
  if mode == "average_probabilities":
    summed = onehot.T @ jax.nn.softmax(logits / temperature, axis=-1)
    num_classes = logits.shape[-1]
    uniform = jnp.full_like(summed, 1.0 / num_classes)
    drm = jnp.where(counts[:, None] > 0, summed / jnp.maximum(counts[:, None], eps), uniform)
  else:
    mean_logits = (onehot.T @ logits) / (counts[:, None] + eps)
    drm = jax.nn.softmax(mean_logits / temperature, axis=-1)
  return drm, counts


def symmetric_kl(p: jax.Array, q: jax.Array, eps: float = 1e-8, row_weights: jax.Array | None = None) -> jax.Array:
  """``(KL(p || q) + KL(q || p)) / 2`` averaged over rows; p, q ``[C, C]`` row-stochastic.

  The official code's ``F.kl_div(..., reduction='batchmean')`` divides the sum by the
  number of rows, as here. ``row_weights [C]`` (e.g. 1 for classes present in the batch)
  averages over the weighted rows instead; all-zero weights give 0.
  """
  p, q = jnp.clip(p, eps, 1.0), jnp.clip(q, eps, 1.0)
  per_row = 0.5 * (jnp.sum(p * (jnp.log(p) - jnp.log(q)), -1) + jnp.sum(q * (jnp.log(q) - jnp.log(p)), -1))
  if row_weights is None:
    return jnp.mean(per_row)
  return jnp.sum(per_row * row_weights) / jnp.maximum(jnp.sum(row_weights), 1.0)


def sigmoid_rampup(current: jax.Array, length: float) -> jax.Array:
  """``exp(-5 (1 - t)^2)`` with ``t = clip(current / length, 0, 1)`` (Laine & Aila, ICLR 2017); 1 if length is 0."""
  if length <= 0:
    return jnp.ones((), jnp.float32)
  t = jnp.clip(jnp.asarray(current, jnp.float32) / length, 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)


def predictive_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of the softmax of ``logits`` (``[..., C]``) in nats; its maximum is ``log C``."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def label_smoothing_ce(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Per-example cross-entropy against ``(1 - smoothing) * onehot + smoothing / C``; negative labels give 0."""
  num_classes = logits.shape[-1]
  valid = labels >= 0
  target = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes) * (1 - smoothing) + smoothing / num_classes
  return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1) * valid
