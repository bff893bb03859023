"""Weak-label generators: only the noisy form mislabels, every present class gets marks, seeded, real-data scale."""

import os

import numpy as np
import pytest
from scipy import ndimage

from fedjax_med.data import weak_labels

IGNORE = 4


def _toy_mask():
  yy, xx = np.mgrid[:48, :48]
  mask = np.zeros((48, 48), np.uint8)
  mask[(yy - 24) ** 2 + (xx - 28) ** 2 <= 100] = 2  # a ring (class 2) around a disk (class 3)
  mask[(yy - 24) ** 2 + (xx - 28) ** 2 <= 49] = 3
  mask[14:34, 6:14] = 1  # a bar (class 1)
  return mask


@pytest.mark.parametrize("form", ["scribble", "point", "block", "box", "full"])
def test_clean_forms_never_mislabel_and_mark_every_class(form):
  mask = _toy_mask()
  weak = weak_labels.generate(mask, form, IGNORE, seed=3)
  marked = weak != IGNORE
  np.testing.assert_array_equal(weak[marked], mask[marked])
  present = set(np.unique(weak[marked]).tolist())
  assert present >= {0, 1, 3} if form == "box" else present == {0, 1, 2, 3}  # a box core may miss the ring
  if form != "full":
    assert marked.mean() < 0.9  # sparse


def test_box_marks_everything_outside_the_boxes_as_background():
  mask = _toy_mask()
  weak = weak_labels.box(mask, IGNORE, margin=2)
  assert (weak[:, 41:] == 0).all() and (weak[:12] == 0).all()  # the boxes end at column 40 and start at row 12
  assert (weak[mask > 0] != 0).all()  # no structure pixel is called background


def test_noisy_scribble_moves_strokes_and_is_seeded():
  mask = _toy_mask()
  a, b = (weak_labels.generate(mask, "noisy_scribble", IGNORE, seed=s) for s in (1, 2))
  np.testing.assert_array_equal(a, weak_labels.generate(mask, "noisy_scribble", IGNORE, seed=1))
  assert (a != b).any()
  wrong = (a != IGNORE) & (a != mask)
  assert wrong.any()  # the careless annotator crosses boundaries
  clean = weak_labels.scribble(mask, IGNORE)
  for c in range(4):  # every noisy mark lies within shift (3) + dilation (1) pixels of the clean stroke
    near = ndimage.distance_transform_cdt(clean != c, metric="chessboard")
    assert near[a == c].max() <= 4


def test_generate_all_and_unknown_form():
  masks = np.stack([_toy_mask(), np.zeros((48, 48), np.uint8)])
  out = weak_labels.generate_all(masks, "point", IGNORE, seed=0)
  assert out.shape == masks.shape and (out[1][out[1] != IGNORE] == 0).all()
  np.testing.assert_array_equal(out, weak_labels.generate_all(masks, "point", IGNORE, seed=0))
  with pytest.raises(ValueError, match="unknown weak-label form 'lasso'"):
    weak_labels.generate(masks[0], "lasso", IGNORE, 0)


def test_generated_scribbles_match_the_real_acdc_scribbles_in_scale(data_root):
  d = np.load(os.path.join(data_root, "acdc", "acdc_slices_128.npz"))
  rows = np.flatnonzero((d["labels"] > 0).sum((1, 2)) > 300)[:40]
  ours = weak_labels.generate_all(d["labels"][rows], "scribble", IGNORE, seed=0)
  for c in range(4):
    ratio = (ours == c).sum() / (d["scribbles"][rows] == c).sum()
    assert 0.5 < ratio < 3.0, (c, ratio)  # the real strokes are hand-drawn, ours follow the contours


def test_coverage_fractions_by_hand():
  masks = np.array([[[0, 0, 1, 1],
                     [0, 2, 2, 1]]], np.uint8)
  weak = np.array([[[0, IGNORE, 1, IGNORE],
                    [0, 1, IGNORE, IGNORE]]], np.uint8)  # 4 labelled: bg, bg, 1 (right), 1 (wrong: mask 2)
  got = weak_labels.coverage(weak, masks, IGNORE)
  assert got == {"labelled": 4 / 8, "background_share": 2 / 4, "foreground_recall": 2 / 5, "wrong": 1 / 4}
  assert weak_labels.coverage(np.full_like(masks, IGNORE), masks, IGNORE)["background_share"] == 0.0
