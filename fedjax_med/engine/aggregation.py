"""Aggregation as functional transforms over stacked client pytrees.

Every function here takes leaves with a leading client axis ``[num_clients, ...]``
and is jittable. Weights are float32 ``[num_clients]``; a zero weight removes a
client from the aggregate (non-finite updates, padding clients, non-participants).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fedjax_med.engine.types import ClientResults, PyTree

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")


def weighted_sum(tree: PyTree, weights: jax.Array) -> PyTree:
  """Sum over the client axis of ``weights[i] * tree[i]``; zero-weight NaNs do not leak."""

  def reduce(leaf):
    w = weights.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
    return jnp.sum(jnp.where(w > 0, leaf * w, 0), axis=0)

  return jax.tree.map(reduce, tree)


def weighted_mean(tree: PyTree, weights: jax.Array) -> PyTree:
  """Weighted mean over the client axis; all-zero weights give zeros, not NaN."""
  total = jnp.sum(weights)
  safe = jnp.where(total > 0, total, 1.0)
  return jax.tree.map(lambda s: s / safe.astype(s.dtype), weighted_sum(tree, weights))


def pooled_mean(results: Mapping[str, ClientResults], key: str) -> tuple[PyTree, jax.Array]:
  """Weighted mean of ``messages[key]`` over every cohort that sends it.

  The cohorts' messages are concatenated along the client axis and reduced once per leaf (one reduction per leaf
  per cohort plus the sums across cohorts made XLA:CPU compile FedIRM's round end 2x longer).

  Returns:
    (mean, total_weight); the mean is zeros when the total weight is zero.
  """
  senders = [result for result in results.values() if key in result.messages]
  if not senders:
    raise ValueError(f"no cohort sends message {key!r}; sent: {[sorted(r.messages) for r in results.values()]}")
  messages = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *(r.messages[key] for r in senders))
  weights = jnp.concatenate([r.weights for r in senders])
  return weighted_mean(messages, weights), jnp.sum(weights)


FINITE_CHECK_LEAVES = 64  # leaves checked by one reduction (see is_finite)


def is_finite(tree: PyTree) -> jax.Array:
  """Per client, whether every leaf is finite: bool ``[num_clients]`` (a scalar True for a tree without leaves).

  Integer and bool leaves are always finite. The floating leaves are checked ``FINITE_CHECK_LEAVES`` at a time,
  concatenated along their flattened axis: one reduction per leaf made XLA:CPU compile FedIRM's DenseNet-121 round
  end (3,000 leaves) for 33 s longer.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.ones((), bool)
  floats = [leaf.reshape(leaf.shape[0], -1) for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  flags = [jnp.ones((leaves[0].shape[0],), bool)]
  for dtype in sorted({leaf.dtype for leaf in floats}, key=str):
    group = [leaf for leaf in floats if leaf.dtype == dtype]
    for start in range(0, len(group), FINITE_CHECK_LEAVES):
      chunk = jnp.concatenate(group[start:start + FINITE_CHECK_LEAVES], axis=1)
      flags.append(jnp.all(jnp.isfinite(chunk), axis=1))
  return jnp.all(jnp.stack(flags), axis=0)


def server_optimizer(name: str, learning_rate: float, momentum: float = 0.0, b1: float = 0.9, b2: float = 0.99,
                     eps: float = 1e-3) -> optax.GradientTransformation:
  """The server optimizer applied to the pseudo-gradient ``global - mean(local)``.

  ``sgd`` with lr 1 and no momentum is FedAvg; ``adam``/``yogi``/``adagrad`` are
  FedAdam/FedYogi/FedAdagrad (Reddi et al., "Adaptive Federated Optimization",
  ICLR 2021, Alg. 2; their default ``eps`` = 1e-3 is the adaptivity tau).
  """
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=momentum or None)
  if name == "adam":
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "yogi":
    return optax.yogi(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "adagrad":
    return optax.adagrad(learning_rate, eps=eps)
  raise ValueError(f"unknown server optimizer {name!r}; allowed: {SERVER_OPTIMIZERS}")


def path_mask(variables: PyTree, pattern: str) -> PyTree:
  """Bool pytree: True where the '/'-joined path of a leaf matches the regex ``pattern``.

  An empty pattern matches nothing. Used to keep chosen parameters local
  (personalised heads, FedBN's normalisation layers).
  """
  regex = re.compile(pattern) if pattern else None
  flat = traverse_util.flatten_dict(variables, sep="/")
  return traverse_util.unflatten_dict({k: bool(regex and regex.search(k)) for k in flat}, sep="/")


def select(mask: PyTree, if_true: PyTree, if_false: PyTree) -> PyTree:
  """Leaf-wise choice by a static bool mask (no arithmetic, so exact)."""
  return jax.tree.map(lambda m, a, b: a if m else b, mask, if_true, if_false)
