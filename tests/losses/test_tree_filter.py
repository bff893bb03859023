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
  order, parent = tf.spanning_tree(feats)
  assert order[0] == 0 and parent[0] == 0 and sorted(order) == list(range(12))
  assert all(np.where(order == parent[k])[0][0] < np.where(order == k)[0][0] for k in order[1:])  # BFS order
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


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_filter_values_and_gradients_match_the_dense_reference(sigma):
  x, embed = _example()
  order, parent = tf.spanning_trees(embed)
  got = tf.tree_filter(x, embed, order, parent, sigma)
  want = _dense_filter(x[0], embed[0], np.asarray(parent[0]), sigma)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
  probe = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)

  def fast(x, e):
    return jnp.sum(probe * tf.tree_filter(x, e, order, parent, sigma))

  def dense(x, e):
    return jnp.sum(probe[0] * _dense_filter(x[0], e[0], np.asarray(parent[0]), sigma))

  for got_g, want_g in zip(jax.grad(fast, (0, 1))(x, embed), jax.grad(dense, (0, 1))(x, embed)):
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5)


def test_filter_of_a_constant_is_the_constant_and_weights_one_give_the_mean():
  x, embed = _example(seed=2)
  order, parent = tf.spanning_trees(embed)
  const = jnp.full_like(x, 0.3)
  np.testing.assert_allclose(tf.tree_filter(const, embed, order, parent, 1.0), const, rtol=1e-6)
  flat = jnp.zeros_like(embed)  # all weights exp(0) = 1: S = all ones, y = the image mean
  np.testing.assert_allclose(tf.tree_filter(x, flat, order, parent, 1.0)[0],
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
