"""Minimum-spanning-tree filter and the multiscale tree energy loss of FedICRA.

The learnable tree filter (Song et al., NeurIPS 2019, "Learnable Tree Filter for Structure-preserving Feature
Transform") and the tree energy loss (Liang et al., CVPR 2022, "Tree Energy Loss"), as FedICRA (Lin et al.,
arXiv 2304.05635) uses them on unannotated pixels.

Graph: the 4-connected ``H x W`` pixel grid, edge cost ``|f_p - f_q|^2 + 1`` (the +1 keeps zero-cost edges
present in the sparse graph). Its minimum spanning tree and a breadth-first order from pixel 0 are computed on
the host (scipy; no gradient flows through the topology). Given per-node weights ``w_k`` on the edge from node
``k`` to its parent (``w_root = 0``), the filter is

  ``y_i = sum_j S_ij x_j / sum_j S_ij``,  ``S_ij = prod of w_e over the tree path between i and j``,

computed exactly in O(V) by two passes (leaf -> root aggregation ``A_k = x_k + sum_children w_c A_c``, then
root -> leaf ``F_k = w_k F_parent + (1 - w_k^2) A_k``). The unnormalised ``F = S x`` has a hand-written VJP
(S is symmetric, so the input cotangent is ``F(g)``; the weight cotangent uses the pass quantities), which keeps
the backward pass O(V) in time and memory instead of storing every step of the sequential loops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

UNROLL = 16  # node steps per loop iteration: 1.3x faster than 1 on XLA:CPU at 64 x 64 (one step is a few scalars)


def grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """The 4-connected grid's edges as node pairs (row-major node ids): vertical edges first, then horizontal."""
  ids = np.arange(height * width).reshape(height, width)
  u = np.concatenate([ids[:-1, :].ravel(), ids[:, :-1].ravel()])
  v = np.concatenate([ids[1:, :].ravel(), ids[:, 1:].ravel()])
  return u, v


def spanning_tree(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Minimum spanning tree of one image's grid, as a BFS order from node 0 and each node's parent.

  Args:
    features: ``[H, W, C]`` float (edge cost = squared distance + 1).
  Returns:
    ``order`` int32 ``[V]`` (order[0] = 0 = the root) and ``parent`` int32 ``[V]`` (the root is its own parent).
  """
  height, width = features.shape[:2]
  flat = np.asarray(features, np.float64).reshape(height * width, -1)
  u, v = grid_edges(height, width)
  cost = np.sum(np.square(flat[u] - flat[v]), axis=-1) + 1.0
  num = height * width
  tree = minimum_spanning_tree(coo_matrix((cost, (u, v)), shape=(num, num)).tocsr())
  order, predecessors = breadth_first_order(tree, 0, directed=False, return_predecessors=True)
  parent = np.where(predecessors < 0, np.arange(num), predecessors)
  return order.astype(np.int32), parent.astype(np.int32)


def spanning_trees(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """:func:`spanning_tree` of every image of ``[B, H, W, C]`` from inside jit (a host callback, no gradient)."""
  batch, height, width = features.shape[:3]

  def host(f):
    pairs = [spanning_tree(image) for image in np.asarray(f)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

  shape = jax.ShapeDtypeStruct((batch, height * width), jnp.int32)
  return jax.pure_callback(host, (shape, shape), jax.lax.stop_gradient(features), vmap_method="sequential")


def _aggregate(x: jax.Array, weights: jax.Array, order: jax.Array, parent: jax.Array) -> jax.Array:
  """Leaf -> root: ``A_k = x_k + sum_{c child of k} w_c A_c`` for one tree; x ``[V, C]``."""
  def body(t, a):
    k = order[t]
    return a.at[parent[k]].add(weights[k] * a[k])
  return jax.lax.fori_loop(0, x.shape[0] - 1, lambda i, a: body(x.shape[0] - 1 - i, a), x, unroll=UNROLL)


def _propagate(a: jax.Array, weights: jax.Array, order: jax.Array, parent: jax.Array) -> jax.Array:
  """Root -> leaf: ``F_k = w_k F_parent + (1 - w_k^2) A_k`` (F_root = A_root) for one tree."""
  def body(t, f):
    k = order[t]
    return f.at[k].set(weights[k] * f[parent[k]] + (1.0 - weights[k] ** 2) * a[k])
  return jax.lax.fori_loop(1, a.shape[0], body, a, unroll=UNROLL)


def _passes(x, weights, order, parent):
  a = _aggregate(x, weights, order, parent)
  return a, _propagate(a, weights, order, parent)


@jax.custom_vjp
def tree_product(x: jax.Array, weights: jax.Array, order: jax.Array, parent: jax.Array) -> jax.Array:
  """``S x`` for one tree: x ``[V, C]``, weights ``[V]`` (edge to the parent, root ignored) -> ``[V, C]``."""
  return _passes(x, weights, order, parent)[1]


def _tree_product_fwd(x, weights, order, parent):
  a, f = _passes(x, weights, order, parent)
  return f, (a, f, weights, order, parent)


def _tree_product_bwd(residuals, g):
  a, f, weights, order, parent = residuals
  ag, fg = _passes(g, weights, order, parent)
  w = weights[:, None]
  # d<g, S x>/dw_k over the pairs whose tree path crosses edge (k, parent k): one end inside k's subtree.
  dw = jnp.sum(ag * (f[parent] - w * a) + a * (fg[parent] - w * ag), axis=-1)
  dw = dw.at[order[0]].set(0.0)
  return fg, dw, None, None


tree_product.defvjp(_tree_product_fwd, _tree_product_bwd)


def edge_weights(embed: jax.Array, parent: jax.Array, sigma: float) -> jax.Array:
  """``w_k = exp(-|e_k - e_parent(k)|^2 / sigma)`` for one tree; embed ``[V, K]`` -> ``[V]`` (root: exp(0) = 1,
  unused)."""
  return jnp.exp(-jnp.sum(jnp.square(embed - embed[parent]), axis=-1) / sigma)


def tree_filter(x: jax.Array, embed: jax.Array, order: jax.Array, parent: jax.Array, sigma: float) -> jax.Array:
  """Normalised tree filter of a batch.

  Args:
    x: ``[B, H, W, C]`` values to filter (e.g. class probabilities).
    embed: ``[B, H, W, K]`` features giving the edge weights (gradients flow into them).
    order, parent: ``[B, H*W]`` from :func:`spanning_trees`.
    sigma: the weight's scale (FedICRA: 0.02 on the image, 1 on the auxiliary heads' features).
  Returns:
    ``[B, H, W, C]``: ``S x / S 1``.
  """
  batch, height, width, channels = x.shape
  flat_x = x.reshape(batch, height * width, channels)
  flat_e = embed.reshape(batch, height * width, -1)

  def one(xi, ei, oi, pi):
    w = edge_weights(ei, pi, sigma)
    both = tree_product(jnp.concatenate([xi, jnp.ones_like(xi[:, :1])], axis=-1), w, oi, pi)
    return both[:, :channels] / both[:, channels:]

  return jax.vmap(one)(flat_x, flat_e, order, parent).reshape(x.shape)


def resize_to(features: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of ``[B, h, w, K]`` to ``[B, height, width, K]`` (half-pixel centres, as align_corners=False)."""
  if features.shape[1:3] == (height, width):
    return features
  return jax.image.resize(features, (features.shape[0], height, width, features.shape[-1]), "bilinear")


def multiscale_tree_filter(probs: jax.Array, image: jax.Array, aux_features: tuple[jax.Array, ...],
                           low_sigma: float = 0.02, high_sigma: float = 1.0) -> jax.Array:
  """FedICRA's recursive filtering: by the image's tree, then by each auxiliary feature map's tree in turn.

  Args:
    probs: ``[B, H, W, C]`` softmax; image: ``[B, H, W, K]`` in [0, 1]; aux_features: ``[B, h, w, K_i]`` maps,
      resized bilinearly to ``H x W``.
  Returns:
    ``[B, H, W, C]``, not detached (gradients reach probs, and the aux features through the high-level weights).
  """
  height, width = probs.shape[1:3]
  order, parent = spanning_trees(image)
  filtered = tree_filter(probs, jax.lax.stop_gradient(image), order, parent, low_sigma)
  for features in aux_features:
    features = resize_to(features, height, width)
    order, parent = spanning_trees(features)
    filtered = tree_filter(filtered, features, order, parent, high_sigma)
  return filtered


def tree_energy_loss(probs: jax.Array, filtered: jax.Array, unannotated: jax.Array) -> jax.Array:
  """``sum over unannotated pixels and classes of |probs - filtered| / (number of unannotated pixels)``.

  probs, filtered ``[B, H, W, C]``; unannotated ``[B, H, W]`` (1 = no label); 0 when every pixel is annotated.
  """
  total = jnp.sum(unannotated[..., None] * jnp.abs(probs - filtered))
  return total / jnp.maximum(jnp.sum(unannotated), 1.0)
