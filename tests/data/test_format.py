"""The prepared format: round trip, validation naming the key, missing data naming the prepare command."""

import json
import os

import numpy as np
import pytest

from fedjax_med.data import format as fmt
from fedjax_med.data.sources import load_dataset


def _arrays(n=4):
  return {"images": np.zeros((n, 6, 5, 1), np.uint8), "group": np.array(["a", "a", "b", "c"][:n]),
          "site": np.full(n, "s"), "split": np.array(["train", "train", "test", "val"][:n]),
          "labels": np.arange(n), "masks": np.ones((n, 6, 5), np.uint8), "masks_2nd": np.full((n, 6, 5), 255),
          "slice_idx": np.arange(n, dtype=np.int64), "spacing": np.ones((n, 3))}


def test_save_and_load_round_trip(tmp_path):
  arrays = _arrays()
  fmt.save_prepared(arrays, {"name": "toy", "num_classes": 4}, str(tmp_path / "toy"))
  assert sorted(os.listdir(tmp_path / "toy")) == [fmt.ARRAYS_FILE, fmt.META_FILE] and os.listdir(tmp_path) == ["toy"]
  dataset = fmt.load_prepared(str(tmp_path / "toy"))
  assert dataset.meta["format_version"] == fmt.FORMAT_VERSION and dataset.meta["name"] == "toy"
  for key, dtype in (("labels", np.int32), ("slice_idx", np.int32), ("spacing", np.float32), ("masks_2nd", np.uint8)):
    assert dataset.arrays[key].dtype == dtype
    np.testing.assert_array_equal(dataset.arrays[key], arrays[key])
  assert dataset.arrays["group"].dtype.kind == "U" and len(dataset) == 4 and dataset.has("masks")
  assert len(dataset.split("train")) == 2 and list(dataset.select(np.array([3, 0])).arrays["split"]) == ["val", "train"]
  with pytest.raises(fmt.DatasetError, match="exists already"):
    fmt.save_prepared(_arrays(), {}, str(tmp_path / "toy"))


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("group"), "required key 'group' is missing"),
    (lambda a: a.update(images=np.zeros((4, 6, 5), np.uint8)), "'images' must be uint8 \\[N, H, W, 1\\|3\\]"),
    (lambda a: a.update(masks=np.ones((4, 6, 6), np.uint8)), "'masks' must be \\[N, H, W\\]"),
    (lambda a: a.update(masks_2nd=np.ones((4, 5, 6), np.uint8)), "'masks_2nd' must be \\[N, H, W\\]"),
    (lambda a: a.update(split=np.array(["train", "train", "test", "dev"])), "split values \\['dev'\\]"),
    (lambda a: a.update(labels=np.arange(3)), "'labels' has 3 rows, 'images' has 4"),
    (lambda a: a.update(extra=np.arange(4)), "unknown keys \\['extra'\\]"),
])
def test_validation_names_the_key(tmp_path, change, message):
  arrays = _arrays()
  change(arrays)
  with pytest.raises(fmt.DatasetError, match=message):
    fmt.save_prepared(arrays, {}, str(tmp_path / "bad"))
  assert os.listdir(tmp_path) == []  # nothing written, no temporary directory left


def test_load_prepared_names_the_path_and_the_prepare_command(tmp_path):
  with pytest.raises(fmt.DatasetError, match=f"dataset directory {tmp_path}/nothing does not exist; prepare it with: "
                                             "python -m fedjax_med.data.prepare"):
    fmt.load_prepared(str(tmp_path / "nothing"))
  half = tmp_path / "half"
  half.mkdir()
  (half / fmt.META_FILE).write_text("{}")
  with pytest.raises(fmt.DatasetError, match=f"{half}/arrays.npz is missing \\(half-prepared dataset\\?\\); "
                                             "prepare it with: python -m fedjax_med.data.prepare"):
    fmt.load_prepared(str(half))
  (half / fmt.ARRAYS_FILE).write_bytes(b"garbage")
  with pytest.raises(fmt.DatasetError, match=f"{half}/arrays.npz cannot be read"):
    fmt.load_prepared(str(half))


def test_load_prepared_validates_what_it_reads(tmp_path):
  root = tmp_path / "edited"
  fmt.save_prepared(_arrays(), {"name": "toy"}, str(root))
  arrays = dict(np.load(root / fmt.ARRAYS_FILE))
  del arrays["site"]
  np.savez(root / fmt.ARRAYS_FILE, **arrays)
  with pytest.raises(fmt.DatasetError, match=f"{root}: required key 'site' is missing"):
    fmt.load_prepared(str(root))
  assert json.loads((root / fmt.META_FILE).read_text())["format_version"] == fmt.FORMAT_VERSION


def test_load_dataset_names_the_prepare_command_for_the_dataset(tmp_path):
  with pytest.raises(fmt.DatasetError, match=f"{tmp_path}/nothing does not exist; prepare it with: python -m "
                                             "fedjax_med.data.prepare drive"):
    load_dataset("drive", str(tmp_path / "nothing"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_saved_folder_gets_the_umask_permissions_not_owner_only(tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    out = fmt.save_prepared(_arrays(), {"name": "toy"}, str(tmp_path / "toy"))
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == mode
  assert os.stat(os.path.join(out, fmt.ARRAYS_FILE)).st_mode & 0o777 == mode & 0o666
  assert os.listdir(tmp_path) == ["toy"]


def test_missing_compact_file_points_prepare_at_a_folder_not_at_the_npz(tmp_path):
  missing = tmp_path / "data" / "drive" / "drive.npz"
  with pytest.raises(fmt.DatasetError) as raised:
    load_dataset("drive", str(missing))
  message = str(raised.value)
  assert message.startswith(f"{missing} does not exist. It is one of the team's compact files: set FEDJAX_MED_DATA "
                            "to the folder holding drive/drive.npz")
  assert "--raw RAW_DOWNLOAD_DIR --out prepared/drive and pass --config.data.root=prepared/drive" in message
  assert "--out " + str(missing) not in message  # prepare would make a folder of that name: the old loop


def test_a_prepared_folder_named_npz_loads_as_a_prepared_dataset(tmp_path):
  folder = tmp_path / "drive.npz"  # what following the old message's --out made
  fmt.save_prepared(_arrays(), {"name": "toy"}, str(folder))
  assert len(load_dataset("drive", str(folder))) == 4
