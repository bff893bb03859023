"""The prepared format: round trip, validation naming the key, missing data naming the prepare command."""

import os

import numpy as np
import pytest

from fedjax_med.data import format as fmt
from fedjax_med.data.sources import load_dataset


def _arrays(n=4):
  return {"images": np.zeros((n, 6, 5, 1), np.uint8), "group": np.array(["a", "a", "b", "c"][:n]),
          "site": np.full(n, "s"), "split": np.array(["train", "train", "test", "val"][:n]),
          "labels": np.arange(n), "masks": np.ones((n, 6, 5), np.uint8)}


def test_save_and_load_round_trip(tmp_path):
  fmt.save_prepared(_arrays(), {"name": "toy", "num_classes": 4}, str(tmp_path / "toy"))
  dataset = fmt.load_prepared(str(tmp_path / "toy"))
  assert dataset.meta["format_version"] == fmt.FORMAT_VERSION and dataset.meta["name"] == "toy"
  assert dataset.arrays["labels"].dtype == np.int32 and len(dataset.split("train")) == 2
  with pytest.raises(fmt.DatasetError, match="exists already"):
    fmt.save_prepared(_arrays(), {}, str(tmp_path / "toy"))


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("group"), "required key 'group' is missing"),
    (lambda a: a.update(masks=np.ones((4, 6, 6), np.uint8)), "'masks' must be \\[N, H, W\\]"),
    (lambda a: a.update(split=np.array(["train", "train", "test", "dev"])), "split values \\['dev'\\]"),
    (lambda a: a.update(labels=np.arange(3)), "'labels' has 3 rows, 'images' has 4"),
    (lambda a: a.update(extra=np.arange(4)), "unknown keys \\['extra'\\]"),
])
def test_validation_names_the_key(tmp_path, change, message):
  arrays = _arrays()
  change(arrays)
  with pytest.raises(fmt.DatasetError, match=message):
    fmt.save_prepared(arrays, {}, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_missing_and_half_prepared_datasets_name_the_path_and_the_command(tmp_path):
  with pytest.raises(fmt.DatasetError, match=f"{tmp_path}/nothing does not exist; prepare it with: python -m "
                                             "fedjax_med.data.prepare drive"):
    load_dataset("drive", str(tmp_path / "nothing"))
  half = tmp_path / "half"
  half.mkdir()
  (half / "meta.json").write_text("{}")
  with pytest.raises(fmt.DatasetError, match="arrays.npz is missing \\(half-prepared dataset\\?\\)"):
    load_dataset("drive", str(half))
  with pytest.raises(fmt.DatasetError, match="data.root is empty for dataset 'ham10000'"):
    load_dataset("ham10000", "")


def test_compact_files_of_the_data_folder(data_root):
  drive = load_dataset("drive", os.path.join(data_root, "drive", "drive.npz"))
  assert len(drive) == 40 and (drive.arrays["split"] == "test").sum() == 20
  test = drive.split("test")
  assert (test.arrays["masks_2nd"] != 255).all() and (drive.split("train").arrays["masks_2nd"] == 255).all()
  pneumonia = load_dataset("pneumoniamnist", os.path.join(data_root, "pneumoniamnist", "pneumoniamnist_28.npz"))
  assert [len(pneumonia.split(s)) for s in ("train", "val", "test")] == [4708, 524, 624]
  acdc = load_dataset("acdc", os.path.join(data_root, "acdc", "acdc_slices_128.npz"))
  assert len(acdc) == 1902 and acdc.meta["num_mask_classes"] == 4
  for patient in np.unique(acdc.arrays["group"]):
    assert len(np.unique(acdc.arrays["split"][acdc.arrays["group"] == patient])) == 1
  assert len(np.unique(acdc.split("test").arrays["group"])) == 20  # 4 of 20 patients per pathology group


def test_compact_ham10000(data_root):
  ham = load_dataset("ham10000", os.path.join(data_root, "ham10000", "ham10000_64.npz"))
  assert len(ham) == 10015 and ham.arrays["images"].shape[1:] == (64, 64, 3)
  np.testing.assert_array_equal(np.bincount(ham.arrays["labels"]), [327, 514, 1099, 115, 1113, 6705, 142])
  train, test = set(ham.split("train").arrays["group"]), set(ham.split("test").arrays["group"])
  assert not train & test  # lesion-grouped split
