import numpy as np

from fedjax_med import evaluation
from fedjax_med.data.format import PreparedDataset
from fedjax_med.metrics import hd95


def test_segmentation_report_hd95_per_class_is_the_mean_over_images():
  rng = np.random.default_rng(0)
  masks = np.zeros((2, 12, 12), np.uint8)
  masks[:, 2:6, 2:6], masks[:, 7:10, 7:10] = 1, 2
  pred = masks.copy()
  pred[0, 2:7, 2:6] = 1  # image 0: class 1 one row too tall
  pred[1, 7:10, 6:10] = 2  # image 1: class 2 one column too wide
  probs = np.eye(3)[pred] + rng.uniform(0, 1e-3, pred.shape + (3,))
  dataset = PreparedDataset({"images": np.zeros((2, 12, 12, 1), np.uint8), "masks": masks}, {})
  report = evaluation.segmentation_report(probs, dataset, hd95=True)
  for c in (1, 2):
    want = np.mean([hd95(pred[i] == c, masks[i] == c) for i in range(2)])
    assert report[f"hd95_class{c}"] == want
  assert report["hd95_class1"] == 0.5 and report["hd95"] == 0.5
  assert report["hd95_undefined_fraction"] == 0.0


def test_hd95_counts_images_whose_prediction_misses_a_class():
  masks = np.zeros((4, 8, 8), np.uint8)
  masks[:, 2:5, 2:5] = 1
  pred = masks.copy()
  pred[1] = 0  # the lesion is missed: no distance, left out of hd95 and counted
  probs = np.eye(2)[pred]
  dataset = PreparedDataset({"images": np.zeros((4, 8, 8, 1), np.uint8), "masks": masks}, {})
  report = evaluation.segmentation_report(probs, dataset, hd95=True)
  assert report["hd95"] == 0.0 and report["hd95_undefined_fraction"] == 0.25
