"""Tree filter: the O(V) two-pass filter and its hand-written VJP against a dense O(V^2) reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.losses import tree_filter as tf


def _path_edges(parent: np.ndarray) -> np.ndarray:
  """P[i, j, k] = 1 when the tree path between i and j uses the edge (k, parent k)."""
  v = len(parent)
  ancestors = []
  for i in range(v):
    chain, k = [], i
    while parent[k] != k:
      chain.append(k)
      k = parent[k]
    ancestors.append(set(chain))  # edges from i up to the root, named by their child node
  paths = np.zeros((v, v, v), np.float32)
  for i in range(v):
    for j in range(v):
      for k in ancestors[i] ^ ancestors[j]:  # edges above the meeting point cancel
        paths[i, j, k] = 1.0
  return paths


def _dense_filter(x, embed, parent, sigma):
  """y = S x / S 1 with S_ij = exp(sum over path edges of log w), differentiable in x and embed."""
  height, width, channels = x.shape
  flat_x, flat_e = x.reshape(-1, channels), embed.reshape(height * width, -1)
  w = jnp.exp(-jnp.sum(jnp.square(flat_e - flat_e[parent]), axis=-1) / sigma)
  s = jnp.exp(jnp.asarray(_path_edges(parent)) @ jnp.log(w))
  return ((s @ flat_x) / (s @ jnp.ones((len(parent), 1)))).reshape(x.shape)


def _example(seed=0, h=4, w=5, c=3, k=2):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.uniform(size=(1, h, w, c)), jnp.float32)
  embed = jnp.asarray(rng.normal(size=(1, h, w, k)) * 0.5, jnp.float32)
  return x, embed


def test_spanning_tree_is_a_minimum_spanning_tree_of_the_grid():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(3, 4, 2))
  parent = tf.image_tree(feats)
  assert parent[0] == 0 and np.all(tf.depths(parent)[1:] >= 1)  # rooted at pixel 0, every pixel reaches it
  flat = feats.reshape(12, 2)
  u, v = tf.grid_edges(3, 4)
  grid = {frozenset(e) for e in zip(u, v)}
  tree = [frozenset((k, parent[k])) for k in range(1, 12)]
  assert all(e in grid for e in tree)  # only grid edges

  def cost(a, b):
    return np.sum((flat[a] - flat[b]) ** 2) + 1

  # brute force: Kruskal on the grid edges
  root = list(range(12))

  def find(a):
    while root[a] != a:
      a = root[a]
    return a

  best = 0.0
  for a, b in sorted(zip(u, v), key=lambda e: cost(*e)):
    if find(a) != find(b):
      root[find(a)] = find(b)
      best += cost(a, b)
  assert np.isclose(sum(cost(*tuple(e)) for e in tree), best)


@pytest.mark.parametrize("sigma,segment", [(0.5, 256), (1.0, 2)])
def test_filter_values_and_gradients_match_the_dense_reference(sigma, segment, monkeypatch):
  monkeypatch.setattr(tf, "SEGMENT", segment)  # 2: levels cut into several segments
  x, embed = _example()
  tree = tf.spanning_trees(embed)
  parent = tree.parent[: x.shape[1] * x.shape[2]]  # image 0's nodes keep their pixel ids
  got = tf.tree_filter(x, embed, tree, sigma)
  want = _dense_filter(x[0], embed[0], np.asarray(parent), sigma)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
  probe = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)

  def fast(x, e):
    return jnp.sum(probe * tf.tree_filter(x, e, tree, sigma))

  def dense(x, e):
    return jnp.sum(probe[0] * _dense_filter(x[0], e[0], np.asarray(parent), sigma))

  for got_g, want_g in zip(jax.grad(fast, (0, 1))(x, embed), jax.grad(dense, (0, 1))(x, embed)):
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5)


def test_filter_of_a_constant_is_the_constant_and_weights_one_give_the_mean():
  x, embed = _example(seed=2)
  tree = tf.spanning_trees(embed)
  const = jnp.full_like(x, 0.3)
  np.testing.assert_allclose(tf.tree_filter(const, embed, tree, 1.0), const, rtol=1e-6)
  flat = jnp.zeros_like(embed)  # all weights exp(0) = 1: S = all ones, y = the image mean
  np.testing.assert_allclose(tf.tree_filter(x, flat, tree, 1.0)[0],
                             jnp.broadcast_to(x[0].mean((0, 1)), x[0].shape), rtol=1e-5)


def test_tree_energy_loss_by_hand_and_multiscale_under_jit():
  probs = jnp.array([[[[0.8, 0.2], [0.4, 0.6]]]])  # [1, 1, 2, 2]
  filtered = jnp.array([[[[0.5, 0.5], [0.4, 0.6]]]])
  unannotated = jnp.array([[[1.0, 1.0]]])
  np.testing.assert_allclose(tf.tree_energy_loss(probs, filtered, unannotated), 0.6 / 2)
  np.testing.assert_allclose(tf.tree_energy_loss(probs, filtered, jnp.zeros((1, 1, 2))), 0.0)
  x, embed = _example(h=6, w=6)
  probs = jax.nn.softmax(x, axis=-1)
  aux = jnp.asarray(np.random.default_rng(4).normal(size=(1, 3, 3, 4)), jnp.float32)

  def loss(aux):
    out = tf.multiscale_tree_filter(probs, embed[..., :1], (aux,))
    return tf.tree_energy_loss(probs, out, jnp.ones(probs.shape[:3]))

  value, grad = jax.jit(jax.value_and_grad(loss))(aux)
  assert np.isfinite(value) and float(jnp.abs(grad).sum()) > 0  # the aux features get a gradient


def test_forest_segments_cover_each_level_in_pieces_of_at_most_the_width():
  rng = np.random.default_rng(7)
  parents = [tf.image_tree(rng.normal(size=(6, 6, 1))) for _ in range(3)]
  tree = tf.forest(parents, width=5)
  parent, order, seg_start, seg_count = (np.asarray(a) for a in tree)
  depth = np.zeros(108, int)
  for b, local in enumerate(parents):  # brute force: walk up to the root
    for k in range(36):
      node, steps = k, 0
      while local[node] != node:
        node, steps = local[node], steps + 1
      depth[b * 36 + k] = steps
  np.testing.assert_array_equal(tf.depths(parent), depth)
  np.testing.assert_array_equal(parent[36:72], parents[1] + 36)
  bounds = list(seg_start[: seg_count + 1])
  assert bounds[0] == 0 and bounds[-1] == 108 and all(seg_start[seg_count:] == 108)
  assert sorted(order) == list(range(108))
  for a, b in zip(bounds[:-1], bounds[1:]):
    assert 0 < b - a <= 5 and len(set(depth[order[a:b]])) == 1
  assert [depth[order[a]] for a in bounds[:-1]] == sorted(depth[order[a]] for a in bounds[:-1])


def test_batched_images_are_filtered_by_their_own_trees():
  x, embed = _example(seed=4)
  x2, embed2 = _example(seed=5)
  both_x, both_e = jnp.concatenate([x, x2]), jnp.concatenate([embed, embed2])
  together = tf.tree_filter(both_x, both_e, tf.spanning_trees(both_e), 0.5)
  np.testing.assert_allclose(together[1:], tf.tree_filter(x2, embed2, tf.spanning_trees(embed2), 0.5), rtol=1e-5)
