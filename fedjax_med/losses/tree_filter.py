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
root -> leaf ``F_k = w_k F_parent + (1 - w_k^2) A_k``), one BFS level at a time (the nodes of a level are
independent given the other levels: ~depth loop iterations instead of V; MSTs of 64 x 64 ACDC slices are 200-400
levels deep). The unnormalised ``F = S x`` has a hand-written VJP
(S is symmetric, so the input cotangent is ``F(g)``; the weight cotangent uses the pass quantities), which keeps
the backward pass O(V) in time and memory instead of storing every step of the sequential loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

SEGMENT = 256  # nodes processed together: one depth level of the whole batch (or a 256-node piece of it)


class Tree(NamedTuple):
  """Spanning trees of a batch of images as one forest (node ``b * V + k`` = pixel k of image b), its nodes
  ordered by depth and cut into segments that each hold nodes of one depth only.

  parent: int32 ``[N]`` (a root, pixel 0 of each image, is its own parent); order: int32 ``[N]`` node ids by
  depth; seg_start: int32 ``[N + 1]`` where each segment starts in ``order``, padded with N; seg_count: int32
  scalar, the number of segments.
  """

  parent: np.ndarray | jax.Array
  order: np.ndarray | jax.Array
  seg_start: np.ndarray | jax.Array
  seg_count: np.ndarray | jax.Array


def grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """The 4-connected grid's edges as node pairs (row-major node ids): vertical edges first, then horizontal."""
  ids = np.arange(height * width).reshape(height, width)
  u = np.concatenate([ids[:-1, :].ravel(), ids[:, :-1].ravel()])
  v = np.concatenate([ids[1:, :].ravel(), ids[:, 1:].ravel()])
  return u, v


def depths(parent: np.ndarray) -> np.ndarray:
  """Depth of every node of a forest (edges to its root; roots are their own parents), by pointer doubling."""
  nodes = np.arange(len(parent))
  depth = (parent != nodes).astype(np.int64)
  ancestor = parent.copy()
  while np.any(parent[ancestor] != ancestor):
    not_root = parent[ancestor] != ancestor
    depth = depth + np.where(not_root, depth[ancestor], 0)
    ancestor = np.where(not_root, ancestor[ancestor], ancestor)
  return depth


def image_tree(features: np.ndarray) -> np.ndarray:
  """Parents ``[H*W]`` of the minimum spanning tree of one image's grid, rooted at pixel 0.

  Edge cost = squared feature distance + 1; features ``[H, W, C]``.
  """
  height, width = features.shape[:2]
  flat = np.asarray(features, np.float64).reshape(height * width, -1)
  u, v = grid_edges(height, width)
  cost = np.sum(np.square(flat[u] - flat[v]), axis=-1) + 1.0
  num = height * width
  tree = minimum_spanning_tree(coo_matrix((cost, (u, v)), shape=(num, num)).tocsr())
  _, predecessors = breadth_first_order(tree, 0, directed=False, return_predecessors=True)
  return np.where(predecessors < 0, np.arange(num), predecessors)


def forest(parents: list[np.ndarray], width: int | None = None) -> Tree:
  """The :class:`Tree` of several images' trees (each ``[V]`` parents, local ids); segments of at most ``width``
  nodes (default :data:`SEGMENT`)."""
  width = SEGMENT if width is None else width
  num = len(parents[0])
  parent = np.concatenate([p + b * num for b, p in enumerate(parents)])
  depth = depths(parent)
  order = np.argsort(depth, kind="stable")
  level = depth[order]
  first_of_level = np.concatenate([[0], np.flatnonzero(np.diff(level)) + 1])
  first = np.zeros(len(order), np.int64)
  first[first_of_level] = first_of_level
  first = np.maximum.accumulate(first)  # where each position's level starts
  seg = np.flatnonzero((np.arange(len(order)) - first) % width == 0)
  seg_start = np.full(len(order) + 1, len(order), np.int32)
  seg_start[: len(seg)] = seg
  return Tree(parent.astype(np.int32), order.astype(np.int32), seg_start, np.int32(len(seg)))


def spanning_trees(features: jax.Array) -> Tree:
  """The minimum spanning forest of every image of ``[B, H, W, C]`` from inside jit (a host callback: scipy's MST
  and BFS; no gradient flows through the topology)."""
  batch, height, width = features.shape[:3]
  num = batch * height * width

  def host(f):
    return tuple(forest([image_tree(image) for image in np.asarray(f)]))

  shapes = (jax.ShapeDtypeStruct((num,), jnp.int32), jax.ShapeDtypeStruct((num,), jnp.int32),
            jax.ShapeDtypeStruct((num + 1,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
  return Tree(*jax.pure_callback(host, shapes, jax.lax.stop_gradient(features), vmap_method="sequential"))


def _segment_nodes(tree: Tree, s: jax.Array, dummy: int) -> tuple[jax.Array, jax.Array]:
  """Node ids of segment ``s`` (``[SEGMENT]``; the dummy index past its end) and their parents."""
  positions = tree.seg_start[s] + jnp.arange(SEGMENT)
  valid = positions < tree.seg_start[s + 1]
  nodes = jnp.where(valid, tree.order[jnp.minimum(positions, dummy - 1)], dummy)
  parents = jnp.where(valid, jnp.append(tree.parent, dummy)[nodes], dummy)
  return nodes, parents


def _aggregate(x: jax.Array, weights: jax.Array, tree: Tree) -> jax.Array:
  """Leaf -> root: ``A_k = x_k + sum_{c child of k} w_c A_c``; x ``[N, C]``, roots have weight 0.

  Segments from the deepest: a segment's nodes share one depth, so their values are final and their parents
  (one level up) are outside it; a dummy row N absorbs the padding.
  """
  dummy = x.shape[0]
  w = jnp.append(weights, 0.0)

  def body(i, a):
    nodes, parents = _segment_nodes(tree, tree.seg_count - 1 - i, dummy)
    return a.at[parents].add(w[nodes, None] * a[nodes])

  a = jnp.concatenate([x, jnp.zeros_like(x[:1])])
  return jax.lax.fori_loop(0, tree.seg_count, body, a)[:dummy]


def _propagate(a: jax.Array, weights: jax.Array, tree: Tree) -> jax.Array:
  """Root -> leaf: ``F_k = w_k F_parent + (1 - w_k^2) A_k`` (roots: F = A as w = 0), by segments from the roots."""
  dummy = a.shape[0]
  w = jnp.append(weights, 0.0)[:, None]
  padded_a = jnp.concatenate([a, jnp.zeros_like(a[:1])])

  def body(s, f):
    nodes, parents = _segment_nodes(tree, s, dummy)
    return f.at[nodes].set(w[nodes] * f[parents] + (1.0 - w[nodes] ** 2) * padded_a[nodes])

  return jax.lax.fori_loop(0, tree.seg_count, body, padded_a)[:dummy]


def _passes(x, weights, tree):
  a = _aggregate(x, weights, tree)
  return a, _propagate(a, weights, tree)


@jax.custom_vjp
def tree_product(x: jax.Array, weights: jax.Array, tree: Tree) -> jax.Array:
  """``S x`` over a forest: x ``[N, C]``, weights ``[N]`` (edge to the parent; 0 at the roots) -> ``[N, C]``."""
  return _passes(x, weights, tree)[1]


def _tree_product_fwd(x, weights, tree):
  a, f = _passes(x, weights, tree)
  return f, (a, f, weights, tree)


def _tree_product_bwd(residuals, g):
  a, f, weights, tree = residuals
  ag, fg = _passes(g, weights, tree)
  w = weights[:, None]
  parent = tree.parent
  # d<g, S x>/dw_k over the pairs whose tree path crosses edge (k, parent k): one end inside k's subtree.
  dw = jnp.sum(ag * (f[parent] - w * a) + a * (fg[parent] - w * ag), axis=-1)
  dw = jnp.where(parent == jnp.arange(parent.shape[0]), 0.0, dw)
  return fg, dw, jax.tree.map(lambda _: None, tree)


tree_product.defvjp(_tree_product_fwd, _tree_product_bwd)


def edge_weights(embed: jax.Array, parent: jax.Array, sigma: float) -> jax.Array:
  """``w_k = exp(-|e_k - e_parent(k)|^2 / sigma)``, 0 at the roots; embed ``[N, K]`` -> ``[N]``."""
  w = jnp.exp(-jnp.sum(jnp.square(embed - embed[parent]), axis=-1) / sigma)
  return jnp.where(parent == jnp.arange(parent.shape[0]), 0.0, w)


def tree_filter(x: jax.Array, embed: jax.Array, tree: Tree, sigma: float) -> jax.Array:
  """Normalised tree filter of a batch.

  Args:
    x: ``[B, H, W, C]`` values to filter (e.g. class probabilities).
    embed: ``[B, H, W, K]`` features giving the edge weights (gradients flow into them).
    tree: the batch's forest from :func:`spanning_trees`.
    sigma: the weight's scale (FedICRA: 0.02 on the image, 1 on the auxiliary heads' features).
  Returns:
    ``[B, H, W, C]``: ``S x / S 1`` (each image filtered by its own tree).
  """
  channels = x.shape[-1]
  flat_x = x.reshape(-1, channels)
  w = edge_weights(embed.reshape(flat_x.shape[0], -1), tree.parent, sigma)
  both = tree_product(jnp.concatenate([flat_x, jnp.ones_like(flat_x[:, :1])], axis=-1), w, tree)
  return (both[:, :channels] / both[:, channels:]).reshape(x.shape)


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
  filtered = tree_filter(probs, jax.lax.stop_gradient(image), spanning_trees(image), low_sigma)
  for features in aux_features:
    features = resize_to(features, height, width)
    filtered = tree_filter(filtered, features, spanning_trees(features), high_sigma)
  return filtered


def tree_energy_loss(probs: jax.Array, filtered: jax.Array, unannotated: jax.Array) -> jax.Array:
  """``sum over unannotated pixels and classes of |probs - filtered| / (number of unannotated pixels)``.

  probs, filtered ``[B, H, W, C]``; unannotated ``[B, H, W]`` (1 = no label); 0 when every pixel is annotated.
  """
  total = jnp.sum(unannotated[..., None] * jnp.abs(probs - filtered))
  return total / jnp.maximum(jnp.sum(unannotated), 1.0)
