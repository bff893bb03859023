"""Segmentation metrics: hand-computed tables, brute-force HD95, empty-mask conventions, spacing."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from fedjax_med.metrics import dice_iou, hd95, hd95_per_class, reduce_metric


def test_dice_and_iou_on_a_hand_computed_pair():
  target = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  # |T| = 4, |P| = 4, |T & P| = 3: Dice = 6/8, IoU = 3/5
  dice, iou, valid = dice_iou(pred[None], target[None], 2)
  assert dice[0, 0] == pytest.approx(0.75) and iou[0, 0] == pytest.approx(0.6) and valid[0, 0]
  region = np.zeros_like(target, bool)
  region[:, :3] = True  # the FOV hides the false positive at (0, 3): Dice = 6/7
  dice, _, _ = dice_iou(pred[None], target[None], 2, region=region[None])
  assert dice[0, 0] == pytest.approx(6 / 7)


def test_empty_ground_truth_conventions_and_reductions():
  target = np.zeros((3, 4, 4), int)
  pred = np.zeros((3, 4, 4), int)
  target[0, :2] = 1
  pred[0, :2] = 1
  pred[2, 0, 0] = 1  # item 2: empty truth, non-empty prediction
  dice, _, valid = dice_iou(pred, target, 2)
  np.testing.assert_array_equal(dice[:, 0], [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(valid[:, 0], [True, False, False])
  assert reduce_metric(dice, valid, "mean") == 1.0
  assert np.isnan(reduce_metric(dice, valid, "none")[1, 0])
  with pytest.raises(ValueError, match="unknown reduction 'median'; available"):
    reduce_metric(dice, valid, "median")


def _blob(rng, shape):
  return ndimage.binary_opening(ndimage.gaussian_filter(rng.random(shape), 2) > 0.5)


def _brute_hd95(a, b, spacing):
  def surface(m):
    return np.argwhere(m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(m.ndim, m.ndim))) * spacing
  d = cdist(surface(a), surface(b))
  return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force_including_anisotropic_spacing(seed):
  rng = np.random.default_rng(seed)
  a, b = _blob(rng, (40, 36)), _blob(rng, (40, 36))
  for spacing in ((1.0, 1.0), (0.5, 2.0)):
    assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, np.array(spacing)), rel=1e-6)


def test_hd95_conventions_and_shift():
  square = np.zeros((20, 20), bool)
  square[5:10, 5:10] = True
  shifted = np.roll(square, 3, axis=1)
  assert hd95(square, shifted) == pytest.approx(3.0)
  assert hd95(square, shifted, spacing=(1.0, 2.0)) == pytest.approx(6.0)
  assert hd95(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
  assert np.isnan(hd95(square, np.zeros_like(square)))
  per_class = hd95_per_class(np.stack([square * 2]), np.stack([shifted * 2]), 3)
  assert per_class.shape == (1, 2) and per_class[0, 0] == 0.0 and per_class[0, 1] == pytest.approx(3.0)


def test_volume_dice_against_a_per_volume_loop():
  from fedjax_med.metrics import volume_dice

  rng = np.random.default_rng(0)
  pred, target = rng.integers(0, 4, (7, 5, 5)), rng.integers(0, 4, (7, 5, 5))
  target[5:] = np.where(target[5:] == 3, 0, target[5:])  # volume 2 has no class 3
  volume = np.array([0, 0, 0, 1, 1, 2, 2])
  got = volume_dice(pred, target, volume, 4)
  for v in range(3):
    p, g = pred[volume == v], target[volume == v]
    for c in range(1, 4):
      if not (g == c).any():
        assert np.isnan(got[v, c - 1])
        continue
      expected = 2 * ((p == c) & (g == c)).sum() / ((p == c).sum() + (g == c).sum())
      assert got[v, c - 1] == pytest.approx(expected)
  assert np.isnan(got[2, 2])
