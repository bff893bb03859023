"""Volumes from slice rows: the partition rule, the volume layout and one-slice-per-partition sampling."""

import jax
import numpy as np
import pytest

from fedjax_med.data import volumes
from fedjax_med.data.format import PreparedDataset


@pytest.mark.parametrize("depth", range(4, 21))
def test_every_partition_is_non_empty_and_ordered(depth):
  part = volumes.partition_of_slice(np.arange(depth), np.full(depth, depth), 4)
  assert (np.diff(part) >= 0).all() and set(part.tolist()) == {0, 1, 2, 3}
  sizes = np.bincount(part)
  assert sizes.max() - sizes.min() <= 1  # as equal as possible


def test_partition_rule_by_hand_and_bad_input():
  np.testing.assert_array_equal(volumes.partition_of_slice(np.arange(6), np.full(6, 6), 4), [0, 0, 1, 2, 2, 3])
  with pytest.raises(ValueError, match="fewer than the 4 partitions"):
    volumes.partition_of_slice(np.arange(3), np.full(3, 3), 4)


def _two_volumes():
  # patient a: a 4-slice volume then a 5-slice volume (slice_idx restarts); pixel value = 10 * volume + slice
  slice_idx = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4])
  value = np.array([0, 1, 2, 3, 10, 11, 12, 13, 14], np.uint8)
  arrays = {"images": np.broadcast_to(value[:, None, None, None], (9, 2, 2, 1)).copy(),
            "group": np.array(["a"] * 9), "site": np.array(["s"] * 9), "split": np.array(["train"] * 9),
            "slice_idx": slice_idx.astype(np.int32)}
  return PreparedDataset(arrays, {"name": "toy"})


def test_to_volumes_layout():
  ds = _two_volumes()
  np.testing.assert_array_equal(volumes.volume_ids(ds), [0, 0, 0, 0, 1, 1, 1, 1, 1])
  vol = volumes.to_volumes(ds, 4)
  assert vol.arrays["images"].shape == (2, 4, 2, 2, 2, 1)
  np.testing.assert_array_equal(vol.arrays["partition_counts"], [[1, 1, 1, 1], [2, 1, 1, 1]])
  np.testing.assert_array_equal(vol.arrays["images"][1, 0, :, 0, 0, 0], [10, 11])  # slices 0, 1 of volume 1
  np.testing.assert_array_equal(vol.arrays["images"][1, 3, 0, 0, 0, 0], 14)
  assert vol.arrays["group"].tolist() == ["a", "a"]


def test_sampling_takes_one_real_slice_from_each_partition():
  vol = volumes.to_volumes(_two_volumes(), 4)
  seen = set()
  for seed in range(30):
    slices, part = volumes.sample_partition_slices(jax.random.PRNGKey(seed), vol.arrays["images"],
                                                   vol.arrays["partition_counts"])
    values = np.asarray(slices)[:, 0, 0, 0]
    np.testing.assert_array_equal(part, [0, 1, 2, 3, 0, 1, 2, 3])
    assert values[:4].tolist() == [0, 1, 2, 3]
    assert values[4] in (10, 11) and values[5:].tolist() == [12, 13, 14]
    seen.add(int(values[4]))
  assert seen == {10, 11}  # both slices of the 2-slice partition get drawn, never the zero padding


def test_partition_retrieval_report_by_brute_force():
  from fedjax_med import evaluation

  # patients a, b, c with 4-slice volumes; features = unit vectors that encode the partition, except one
  rows = 12
  group = np.repeat(np.array(["a", "b", "c"]), 4)
  arrays = {"images": np.zeros((rows, 2, 2, 1), np.uint8), "group": group, "site": np.array([""] * rows),
            "split": np.array(["test"] * rows), "slice_idx": np.tile(np.arange(4), 3).astype(np.int32)}
  ds = PreparedDataset(arrays, {"name": "toy"})
  angles = np.tile(np.arange(4), 3) * np.pi / 4
  angles[11] = 0.0  # c's last slice looks like partition 0
  features = np.stack([np.cos(angles), np.sin(angles)], 1)
  report = evaluation.partition_retrieval_report(features, ds, 4)
  hits = []
  for i in range(rows):
    others = [j for j in range(rows) if group[j] != group[i]]
    best = max(others, key=lambda j: features[i] @ features[j])
    hits.append(best % 4 == i % 4)
  assert report["partition_top1"] == np.mean(hits)
  sim = np.asarray(report["partition_similarity"])
  for a in range(4):
    for b in range(4):
      vals = [features[i] @ features[j] for i in range(rows) for j in range(rows)
              if i % 4 == a and j % 4 == b and group[i] != group[j]]
      assert sim[a, b] == pytest.approx(np.mean(vals))
