"""Relation-matching losses on small hand-computed examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.losses import relation


def test_relation_matrix_by_hand():
  logits = jnp.array([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
  onehot = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # the third sample is not selected
  drm, counts = relation.relation_matrix(logits, onehot, temperature=2.0)
  # class 0: mean of softmax([1, 0]) and softmax([0, 0]) = mean([0.7311, 0.2689], [0.5, 0.5]); class 1: no sample
  np.testing.assert_allclose(drm[0], [(0.7310586 + 0.5) / 2, (0.2689414 + 0.5) / 2], rtol=1e-6)
  np.testing.assert_allclose(drm[1], [0.5, 0.5])
  np.testing.assert_allclose(counts, [2.0, 0.0])
  official, _ = relation.relation_matrix(logits, onehot, temperature=2.0, mode="average_logits")
  np.testing.assert_allclose(official[0], jax.nn.softmax(jnp.array([1.0, 0.0]) / 2.0), rtol=1e-6)  # mean logit /T
  with pytest.raises(ValueError, match="unknown relation matrix mode 'median'"):
    relation.relation_matrix(logits, onehot, 2.0, mode="median")


def test_symmetric_kl_by_hand_and_properties():
  p = jnp.array([[0.5, 0.5], [0.9, 0.1]])
  q = jnp.array([[0.5, 0.5], [0.1, 0.9]])
  row = 0.9 * np.log(9) + 0.1 * np.log(1 / 9)  # KL of the second rows, equal both ways
  assert float(relation.symmetric_kl(p, q)) == pytest.approx(row / 2, rel=1e-5)
  assert float(relation.symmetric_kl(p, p)) == pytest.approx(0.0, abs=1e-7)
  assert float(relation.symmetric_kl(p, q)) == pytest.approx(float(relation.symmetric_kl(q, p)))


def test_symmetric_kl_nonnegative_and_zero_only_for_equal_inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 20)
  for k in keys:
    kp, kq = jax.random.split(k)
    p = jax.nn.softmax(3 * jax.random.normal(kp, (5, 5)))
    q = jax.nn.softmax(3 * jax.random.normal(kq, (5, 5)))
    assert float(relation.symmetric_kl(p, q)) > 1e-4
    assert float(relation.symmetric_kl(p, p)) == pytest.approx(0.0, abs=1e-7)


def test_symmetric_kl_row_weights_average_the_weighted_rows_only():
  p = jnp.array([[0.5, 0.5], [0.9, 0.1]])
  q = jnp.array([[0.2, 0.8], [0.1, 0.9]])
  rows = [float(relation.symmetric_kl(p[i:i + 1], q[i:i + 1])) for i in range(2)]
  assert float(relation.symmetric_kl(p, q, row_weights=jnp.array([0.0, 1.0]))) == pytest.approx(rows[1], rel=1e-6)
  assert float(relation.symmetric_kl(p, q, row_weights=jnp.ones(2))) == pytest.approx(np.mean(rows), rel=1e-6)
  assert float(relation.symmetric_kl(p, q, row_weights=jnp.zeros(2))) == 0.0


def test_rampup_entropy_and_label_smoothing():
  assert float(relation.sigmoid_rampup(0, 30)) == pytest.approx(np.exp(-5))
  assert float(relation.sigmoid_rampup(15, 30)) == pytest.approx(np.exp(-5 * 0.25))
  assert float(relation.sigmoid_rampup(45, 30)) == 1.0 and float(relation.sigmoid_rampup(3, 0)) == 1.0
  assert float(relation.predictive_entropy(jnp.zeros(7))) == pytest.approx(np.log(7), rel=1e-6)
  logits = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  ce = relation.label_smoothing_ce(logits, jnp.array([0, -1]), smoothing=0.1)
  assert float(ce[0]) == pytest.approx(np.log(2)) and float(ce[1]) == 0.0
