import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.losses import contrastive


def _brute_force(q, ql, k, kl, pos_keys, neg_keys, tau):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  k = k / np.linalg.norm(k, axis=1, keepdims=True)
  losses = []
  for i in range(len(q)):
    positives = [j for j in range(len(k)) if kl[j] == ql[i] and pos_keys[j]]
    negatives = [j for j in range(len(k)) if kl[j] != ql[i] and neg_keys[j]]
    if not positives:
      continue
    terms = []
    for p in positives:
      sp = q[i] @ k[p] / tau
      den = math.exp(sp) + sum(math.exp(q[i] @ k[n] / tau) for n in negatives)
      terms.append(-(sp - math.log(den)))
    losses.append(np.mean(terms))
  return np.mean(losses) if losses else 0.0


def test_positive_pair_loss_matches_a_brute_force_loop():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(5, 3)), rng.normal(size=(9, 3))
  ql, kl = np.array([0, 1, 2, 3, 0]), np.array([0, 0, 1, 2, 2, 3, 1, 0, 3])
  pos_keys = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0], float)  # key 5 (the only label-3 positive) cannot be one
  neg_keys = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1], float)
  got = contrastive.positive_pair_loss(jnp.array(q), jnp.array(ql), jnp.array(k), jnp.array(kl),
                                       jnp.array(pos_keys), jnp.array(neg_keys), 0.5)
  np.testing.assert_allclose(got, _brute_force(q, ql, k, kl, pos_keys, neg_keys, 0.5), rtol=1e-5)


def test_positive_pair_loss_by_hand_and_without_positives():
  q = jnp.array([[1.0, 0.0]])
  k = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  got = contrastive.positive_pair_loss(q, jnp.array([0]), k, jnp.array([0, 1]), jnp.ones(2), jnp.ones(2), 1.0)
  np.testing.assert_allclose(got, -math.log(math.e / (math.e + 1.0)), rtol=1e-6)
  none = contrastive.positive_pair_loss(q, jnp.array([0]), k, jnp.array([0, 1]), jnp.zeros(2), jnp.ones(2), 1.0)
  assert float(none) == 0.0
  # no negative at all: log(e^s / e^s) = 0, finite
  alone = contrastive.positive_pair_loss(q, jnp.array([0]), k, jnp.array([0, 1]), jnp.ones(2), jnp.zeros(2), 1.0)
  assert float(alone) == 0.0


def test_info_nce_brute_force_and_gradient_finite():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  z = np.concatenate([a, b])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  total = 0.0
  for i in range(8):
    j = (i + 4) % 8  # the other view of the same image
    others = [m for m in range(8) if m != i]
    total += -(z[i] @ z[j] / 0.2 - math.log(sum(math.exp(z[i] @ z[m] / 0.2) for m in others)))
  np.testing.assert_allclose(contrastive.info_nce(jnp.array(a), jnp.array(b), 0.2), total / 8, rtol=1e-5)
  grads = jax.grad(lambda x: contrastive.info_nce(x, jnp.array(b), 0.2))(jnp.array(a))
  assert np.isfinite(np.asarray(grads)).all()
