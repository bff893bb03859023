"""Client selection and batch indices are pure functions of their keys."""

import jax
import numpy as np

from fedjax_med.engine import sampling


def test_selection_depends_only_on_seed_round_and_cohort():
  a = sampling.select_clients(0, 5, 0, 10, 3)
  np.testing.assert_array_equal(a, sampling.select_clients(0, 5, 0, 10, 3))
  assert len(set(a.tolist())) == 3 and all(0 <= c < 10 for c in a)
  rounds = {tuple(sampling.select_clients(0, r, 0, 10, 3)) for r in range(20)}
  assert len(rounds) > 5  # different rounds pick different clients
  np.testing.assert_array_equal(sampling.select_clients(0, 5, 0, 4, 4), np.arange(4))


def test_indices_cover_each_epoch_without_replacement():
  count, steps, batch = 7, 5, 3  # 15 draws = 2 full epochs + 1
  epochs = sampling.num_epochs_needed(steps, batch, count)
  idx = np.asarray(sampling.sample_indices(jax.random.PRNGKey(0), count, 12, steps, batch, epochs)).ravel()
  assert idx.max() < count and idx.min() >= 0  # padding rows are never drawn
  np.testing.assert_array_equal(np.sort(idx[:7]), np.arange(7))
  np.testing.assert_array_equal(np.sort(idx[7:14]), np.arange(7))
  assert not np.array_equal(idx[:7], idx[7:14])  # a new permutation per epoch
