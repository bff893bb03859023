"""Partitioners keep groups together and produce the requested skew."""

import numpy as np
import pytest

from fedjax_med.data import partition


def _groups_and_labels(seed=0, num_groups=200):
  rng = np.random.default_rng(seed)
  rows_per_group = rng.integers(1, 4, num_groups)
  group = np.repeat(np.arange(num_groups), rows_per_group).astype(str)
  labels = np.repeat(rng.integers(0, 5, num_groups), rows_per_group)
  return group, labels


def _assert_grouped(client_of_row, group):
  for g in np.unique(group):
    assert len(np.unique(client_of_row[group == g])) == 1, f"group {g} is split over clients"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iid_keeps_groups_together_and_balances_rows(seed):
  group, _ = _groups_and_labels(seed)
  client_of_row = partition.iid(group, 7, seed)
  _assert_grouped(client_of_row, group)
  sizes = np.bincount(client_of_row)
  assert len(sizes) == 7 and sizes.max() - sizes.min() <= 3  # groups hold at most 3 rows


@pytest.mark.parametrize("alpha,expect_skewed", [(0.1, True), (1000.0, False)])
def test_dirichlet_skew_follows_alpha(alpha, expect_skewed):
  group, labels = _groups_and_labels(3, num_groups=600)
  client_of_row = partition.dirichlet(labels, group, 4, alpha, seed=0)
  _assert_grouped(client_of_row, group)
  hist = np.stack([np.bincount(labels[client_of_row == c], minlength=5) for c in range(4)])
  dist = hist / hist.sum(1, keepdims=True)
  global_dist = np.bincount(labels, minlength=5) / len(labels)
  tv = 0.5 * np.abs(dist - global_dist).sum(1).mean()  # mean total-variation distance to the global label mix
  assert (tv > 0.3) if expect_skewed else (tv < 0.1), tv


def test_column_split_and_group_spanning_sites_is_an_error():
  group = np.array(["a", "a", "b", "c"])
  site = np.array(["x", "x", "y", "z"])
  np.testing.assert_array_equal(partition.by_column(site, group), [0, 0, 1, 2])
  np.testing.assert_array_equal(partition.by_column(site, group, ("z", "x")), [1, 1, -1, 0])
  with pytest.raises(ValueError, match="group 'a' spans several clients"):
    partition.by_column(np.array(["x", "y", "y", "z"]), group)


def test_labeled_assignment_by_clients_and_by_fraction():
  group, _ = _groups_and_labels(4)
  client_of_row = partition.iid(group, 5, 0)
  keep = partition.labeled_mask(client_of_row, group, labeled_clients=(0, 1))
  np.testing.assert_array_equal(keep, np.isin(client_of_row, [0, 1]))
  keep = partition.labeled_mask(client_of_row, group, labeled_fraction=0.3, seed=1)
  _assert_grouped(keep.astype(int), group)  # a group is labeled or not as a whole
  for c in range(5):
    groups = np.unique(group[client_of_row == c])
    assert len(np.unique(group[keep & (client_of_row == c)])) == round(0.3 * len(groups))
  with pytest.raises(ValueError, match=r"labeled_clients \[7\] out of range for 5 clients"):
    partition.labeled_mask(client_of_row, group, labeled_clients=(7,))


def test_bad_arguments_name_the_argument():
  group, labels = _groups_and_labels()
  with pytest.raises(ValueError, match="num_clients must be in"):
    partition.iid(group, 0, 0)
  with pytest.raises(ValueError, match="dirichlet alpha must be > 0"):
    partition.dirichlet(labels, group, 3, 0.0, 0)


def test_by_column_star_collects_every_unlisted_value():
  values = np.array(["a", "b", "c", "d", "a"])
  np.testing.assert_array_equal(partition.by_column(values, np.arange(5).astype(str), ("a", "*")), [0, 1, 1, 1, 0])
  np.testing.assert_array_equal(partition.by_column(values, np.arange(5).astype(str), ("b",)), [-1, 0, -1, -1, -1])
