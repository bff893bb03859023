"""experiment.build refuses data that does not fit the config with one line naming the key and the dataset."""

import os

import numpy as np
import pytest
from conftest import tiny_config

from fedjax_med import experiment
from fedjax_med.data.format import save_prepared


def _prepared(path, labels=True, masks=True, size=16, channels=1):
  n = 8
  arrays = {"images": np.random.default_rng(0).integers(0, 255, (n, size, size, channels), np.uint8),
            "group": np.array([f"p{i}" for i in range(n)]), "site": np.full(n, ""),
            "split": np.array(["train"] * 6 + ["test"] * 2)}
  if labels:
    arrays["labels"] = np.arange(n, dtype=np.int32) % 2
  if masks:
    arrays["masks"] = np.zeros((n, size, size), np.uint8)
  meta = {"name": "toy", "num_classes": 2 if labels else 0, "num_mask_classes": 2 if masks else 0}
  return save_prepared(arrays, meta, str(path))


def test_segmentation_config_on_a_classification_dataset_names_the_task_and_the_data(tmp_path):
  root = _prepared(tmp_path / "cls", masks=False)
  config = tiny_config(task__name="segmentation", data__name="toy", data__root=root)
  with pytest.raises(ValueError) as raised:
    experiment.build(config)
  assert str(raised.value) == (
      f"config.task.name='segmentation' needs segmentation masks, but dataset 'toy' ({root}) has none: it is a "
      "classification dataset (columns: group, images, labels, site, split); run a classification config on it "
      "(e.g. configs/fedavg_ham10000.py), or point config.data.root at a dataset with segmentation masks")


def test_classification_config_on_a_segmentation_dataset_names_the_task_and_the_data(tmp_path):
  root = _prepared(tmp_path / "seg", labels=False)
  with pytest.raises(ValueError, match="config.task.name='classification' needs class labels, but dataset 'toy' .* it "
                                       "is a segmentation dataset .*e.g. configs/fedavg_drive.py"):
    experiment.build(tiny_config(data__name="toy", data__root=root))


def test_channels_the_images_lack_are_named(tmp_path):
  root = _prepared(tmp_path / "grey")
  with pytest.raises(ValueError, match=r"config.data.channels=\(1,\) picks channels its images do not have: the "
                                       r"images of dataset 'toy' .* have 1 channel\(s\); pick from 0..0, or \(\) "
                                       "for all"):
    experiment.build(tiny_config(data__name="toy", data__root=root, data__channels=(1,)))


@pytest.mark.parametrize("patch_size", [17, 0])
def test_patches_larger_than_the_images_are_named(tmp_path, patch_size):
  root = _prepared(tmp_path / "small")
  config = tiny_config(task__name="segmentation", data__name="toy", data__root=root, data__batch_mode="patches",
                       data__patch_size=patch_size)
  with pytest.raises(ValueError) as raised:
    experiment.build(config)
  assert str(raised.value) == (
      f"config.data.patch_size={patch_size} does not fit the 16x16 images of dataset 'toy'; set "
      "--config.data.patch_size to 1..16, or --config.data.batch_mode=images to train on whole images")
  config.data.downsample = 2
  with pytest.raises(ValueError, match="the 8x8 images of dataset 'toy' after config.data.downsample=2; .* to 1..8,"):
    experiment.build(config)
  assert sorted(os.listdir(tmp_path)) == ["small"]


def test_data_that_fits_builds(tmp_path):
  root = _prepared(tmp_path / "both")
  exp = experiment.build(tiny_config(task__name="segmentation", data__name="toy", data__root=root,
                                     data__batch_mode="patches", data__patch_size=16))
  assert exp.meta["num_mask_classes"] == 2
