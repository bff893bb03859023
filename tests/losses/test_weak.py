import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.losses import weak


def test_partial_cross_entropy_by_hand():
  logits = jnp.log(jnp.array([[[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.3, 0.7]]]]))  # [1, 2, 2, 2]
  labels = jnp.array([[[0, 2], [1, 2]]])  # 2 = unannotated
  expected = -(math.log(0.5) + math.log(0.8)) / 2
  np.testing.assert_allclose(weak.partial_cross_entropy(logits, labels, 2), expected, rtol=1e-6)
  assert float(weak.partial_cross_entropy(logits, jnp.full((1, 2, 2), 2), 2)) == 0.0


def _brute_gated_crf(probs, images, radius, sxy, srgb):
  b, h, w, _ = probs.shape
  total = 0.0
  for n, i, j in itertools.product(range(b), range(h), range(w)):
    for y, x in itertools.product(range(max(0, i - radius), min(h, i + radius + 1)),
                                  range(max(0, j - radius), min(w, j + radius + 1))):
      if (y, x) == (i, j):
        continue
      k = math.exp(-np.sum((images[n, i, j] - images[n, y, x]) ** 2) / (2 * srgb**2)
                   - ((i - y) ** 2 + (j - x) ** 2) / (2 * sxy**2))
      total += k * (1 - np.sum(probs[n, i, j] * probs[n, y, x]))
  return total / (b * h * w)


def test_gated_crf_matches_a_brute_force_double_loop():
  rng = np.random.default_rng(0)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(2, 5, 6, 3)), -1))
  images = rng.uniform(size=(2, 5, 6, 1))
  got = weak.gated_crf_loss(jnp.array(probs), jnp.array(images), radius=2, sigma_xy=2.0, sigma_rgb=0.5)
  np.testing.assert_allclose(got, _brute_gated_crf(probs, images, 2, 2.0, 0.5), rtol=1e-5)


def test_gated_crf_is_zero_for_a_constant_hard_labelling_and_prefers_edges():
  images = jnp.zeros((1, 6, 6, 1)).at[:, :, 3:].set(1.0)  # a vertical edge
  same = jax.nn.one_hot(jnp.zeros((1, 6, 6), int), 2)
  assert float(weak.gated_crf_loss(same, images, radius=2)) == 0.0
  along_edge = jax.nn.one_hot(jnp.zeros((1, 6, 6), int).at[:, :, 3:].set(1), 2)
  across = jax.nn.one_hot(jnp.zeros((1, 6, 6), int).at[:, 3:, :].set(1), 2)
  assert float(weak.gated_crf_loss(along_edge, images, radius=2)) < float(weak.gated_crf_loss(across, images, radius=2))
