"""Contrastive losses over feature sets with label-defined positives (masks as weights, static shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def positive_pair_loss(queries: jax.Array, query_labels: jax.Array, keys: jax.Array, key_labels: jax.Array,
                       positive_keys: jax.Array, negative_keys: jax.Array, temperature: float) -> jax.Array:
  """Mean over queries of ``-1/|P(q)| sum_{p in P(q)} log(e^{s_qp} / (e^{s_qp} + sum_{n in N(q)} e^{s_qn}))``.

  ``s = q . k / temperature`` on L2-normalised features; ``P(q)`` are the keys with ``positive_keys > 0`` and
  the query's label, ``N(q)`` the keys with ``negative_keys > 0`` and another label. This is the form of the
  local and remote losses of FCL (Wu et al., MICCAI 2021, Eqs. 1-2: each positive is contrasted with the
  negatives alone, MoCo-style). Queries without a positive weigh nothing.

  Args:
    queries: ``[N, F]``; query_labels: int ``[N]``.
    keys: ``[M, F]``; key_labels: int ``[M]``; positive_keys, negative_keys: float ``[M]`` in {0, 1}.
    temperature: tau > 0.
  Returns:
    scalar loss (0 when no query has a positive).
  """
  sim = l2_normalize(queries) @ l2_normalize(keys).T / temperature  # [N, M]
  same = query_labels[:, None] == key_labels[None, :]
  pos = same * positive_keys[None, :]
  neg = (~same) * negative_keys[None, :]
  log_neg = jax.nn.logsumexp(jnp.where(neg > 0, sim, -jnp.inf), axis=1, keepdims=True)  # -inf if no negative
  log_prob = sim - jnp.logaddexp(sim, log_neg)
  num_pos = jnp.sum(pos, axis=1)
  per_query = -jnp.sum(jnp.where(pos > 0, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1.0)
  has_pos = (num_pos > 0).astype(sim.dtype)
  return jnp.sum(per_query * has_pos) / jnp.maximum(jnp.sum(has_pos), 1.0)


def info_nce(view1: jax.Array, view2: jax.Array, temperature: float) -> jax.Array:
  """Symmetric InfoNCE of SimCLR (Chen et al., ICML 2020) between two views ``[N, F]`` of the same N images:
  the positive of a row is the other view of the same image, the negatives are every other image of both views."""
  z = l2_normalize(jnp.concatenate([view1, view2]))
  n = view1.shape[0]
  sim = z @ z.T / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)  # no self-contrast
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_prob = jnp.take_along_axis(sim, partner[:, None], axis=1)[:, 0] - jax.nn.logsumexp(sim, axis=1)
  return -jnp.mean(log_prob)
