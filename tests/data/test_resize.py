import numpy as np
import pytest

from fedjax_med.data import resize
from fedjax_med.data.format import DatasetError, PreparedDataset


def _dataset():
  images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
  masks = np.array([[[0, 1, 2, 3], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 1]]] * 2, np.uint8)
  scribbles = np.full((2, 4, 4), 4, np.uint8)
  scribbles[0, 0, 1] = 2  # one stroke pixel in the top-left block
  scribbles[0, 3, 2], scribbles[0, 3, 3], scribbles[0, 2, 3] = 1, 1, 3  # 1 wins the bottom-right block
  arrays = {"images": images, "masks": masks, "scribbles": scribbles, "group": np.array(["a", "b"]),
            "site": np.array(["s", "s"]), "split": np.array(["train", "test"]),
            "spacing": np.array([[1.0, 1.5, 10.0]] * 2, np.float32)}
  return PreparedDataset(arrays, {"ignore_index": 4})


def test_factor_one_is_identity():
  d = _dataset()
  assert resize.downsample(d, 1) is d


def test_images_are_block_means():
  out = resize.downsample(_dataset(), 2)
  img = _dataset().arrays["images"][0, :, :, 0].astype(float)
  want = np.array([[img[:2, :2].mean(), img[:2, 2:].mean()], [img[2:, :2].mean(), img[2:, 2:].mean()]])
  np.testing.assert_array_equal(out.arrays["images"][0, :, :, 0], np.rint(want))


def test_masks_take_the_centre_pixel_and_scribbles_survive():
  out = resize.downsample(_dataset(), 2)
  np.testing.assert_array_equal(out.arrays["masks"][0], [[1, 2], [3, 1]])
  np.testing.assert_array_equal(out.arrays["scribbles"][0], [[2, 4], [4, 1]])
  np.testing.assert_array_equal(out.arrays["scribbles"][1], [[4, 4], [4, 4]])
  np.testing.assert_allclose(out.arrays["spacing"][0], [2.0, 3.0, 10.0])
  assert out.meta["downsample"] == 2


def test_indivisible_factor_names_the_sizes():
  with pytest.raises(DatasetError, match="downsample=3 does not divide the image size 4x4"):
    resize.downsample(_dataset(), 3)


def test_classification_data_without_ignore_index_downsamples():
  """HAM10000's meta stores ignore_index None (no sparse labels): images shrink, labels stay."""
  arrays = {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([1, 0]), "split": np.array(["train"] * 2)}
  out = resize.downsample(PreparedDataset(arrays, {"ignore_index": None}), 2)
  assert out.arrays["images"].shape == (2, 2, 2, 3)
  np.testing.assert_array_equal(out.arrays["labels"], [1, 0])
