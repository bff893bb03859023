"""Each converter on tiny fixtures written in the ORIGINAL formats (PIL, nibabel, numpy)."""

import csv
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedjax_med.data import prepare
from fedjax_med.data.converters import get_converter
from fedjax_med.data.format import DatasetError, load_prepared

RNG = np.random.default_rng(0)


def _save(path, array, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kw)


def _ham(tmp_path, num=10, masks=True, isic=False):
  raw = tmp_path / "ham"
  labels = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "nv", "mel", "bkl"][:num]
  for i in range(num):
    _save(str(raw / "HAM10000_images_part_1" / f"ISIC_{i:07d}.jpg"), RNG.integers(0, 255, (15, 20, 3), np.uint8))
    if masks:
      mask = np.zeros((15, 20), np.uint8)
      mask[3:10, 5:15] = 255
      _save(str(raw / "masks" / f"ISIC_{i:07d}_segmentation.png"), mask)
  rows = [{"lesion_id": f"HAM_{i // 2}", "image_id": f"ISIC_{i:07d}", "dx": d, "dx_type": "histo", "age": "50",
           "sex": "male", "localization": "back" if i % 2 else "face"} for i, d in enumerate(labels)]
  if isic:
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    with open(raw / "ISIC2018_Task3_Training_GroundTruth.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["image", *columns])
      for r in rows:
        writer.writerow([r["image_id"], *[1.0 if c.lower() == r["dx"] else 0.0 for c in columns]])
  else:
    with open(raw / "HAM10000_metadata.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  return raw


def test_ham10000_from_metadata_csv_with_masks(tmp_path):
  arrays, meta = get_converter("ham10000")(str(_ham(tmp_path)), {"size": 8})
  assert arrays["images"].shape == (10, 8, 8, 3) and arrays["masks"].shape == (10, 8, 8)
  np.testing.assert_array_equal(arrays["labels"], [0, 1, 2, 3, 4, 5, 6, 5, 4, 2])  # DermaMNIST order
  assert set(np.unique(arrays["masks"])) == {0, 1}
  assert arrays["site"][0] == "face" and meta["num_classes"] == 7
  for lesion in np.unique(arrays["group"]):  # a lesion never spans two splits
    assert len(np.unique(arrays["split"][arrays["group"] == lesion])) == 1


def test_isic2018_ground_truth_csv_gives_the_same_labels(tmp_path):
  arrays, _ = get_converter("isic2018")(str(_ham(tmp_path, masks=False, isic=True)), {"size": 8})
  np.testing.assert_array_equal(arrays["labels"], [0, 1, 2, 3, 4, 5, 6, 5, 4, 2])
  assert "masks" not in arrays and len(np.unique(arrays["group"])) == 10  # no lesion ids: one group per image


def test_corrupt_jpeg_names_the_file_and_leaves_no_output(tmp_path, capsys):
  raw = _ham(tmp_path)
  bad = raw / "HAM10000_images_part_1" / "ISIC_0000003.jpg"
  bad.write_bytes(b"\xff\xd8 this is not a jpeg")
  out = tmp_path / "prepared"
  assert prepare.main(["ham10000", "--raw", str(raw), "--out", str(out), "--size", "8"]) == 2
  assert "ISIC_0000003.jpg" in capsys.readouterr().err
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".prepare-")]


def _drive(tmp_path, h=12, w=10):
  raw = tmp_path / "DRIVE"
  for folder, numbers in (("training", (21, 22)), ("test", (1, 2))):
    for n in numbers:
      _save(str(raw / folder / "images" / f"{n:02d}_{folder}.tif"), RNG.integers(0, 255, (h, w, 3), np.uint8))
      vessels = (RNG.random((h, w)) > 0.8).astype(np.uint8) * 255
      _save(str(raw / folder / "1st_manual" / f"{n:02d}_manual1.gif"), vessels)
      _save(str(raw / folder / "mask" / f"{n:02d}_{folder}_mask.gif"), np.full((h, w), 255, np.uint8))
      if folder == "test":
        _save(str(raw / folder / "2nd_manual" / f"{n:02d}_manual2.gif"), vessels)
  return raw


def test_drive_tif_and_gif(tmp_path):
  arrays, meta = get_converter("drive")(str(_drive(tmp_path)), {})
  assert arrays["images"].shape == (4, 12, 10, 3) and meta["num_mask_classes"] == 2
  assert list(arrays["split"]) == ["train", "train", "test", "test"]
  assert (arrays["masks_2nd"][:2] == 255).all()  # no 2nd observer for training images
  np.testing.assert_array_equal(arrays["masks_2nd"][2:], arrays["masks"][2:])
  resized, _ = get_converter("drive")(str(_drive(tmp_path / "b")), {"size": (6, 4)})
  assert resized["images"].shape == (4, 6, 4, 3) and set(np.unique(resized["masks"])) <= {0, 1}


def test_drive_missing_fov_mask_is_named(tmp_path):
  raw = _drive(tmp_path)
  os.remove(raw / "test" / "mask" / "02_test_mask.gif")
  with pytest.raises(DatasetError, match="02_test_mask.gif does not exist; expected the field-of-view mask"):
    get_converter("drive")(str(raw), {})


def test_stare_ppm_labels_and_fov_rule(tmp_path):
  raw = tmp_path / "stare"
  for i in (1, 2, 3):
    image = np.zeros((10, 10, 3), np.uint8)
    image[2:8, 2:8] = 120  # the bright disc of the fundus; the border stays black
    _save(str(raw / f"im{i:04d}.ppm"), image)
    if i < 3:  # im0003 has no label and is dropped
      label = np.zeros((10, 10), np.uint8)
      label[4, 2:8] = 255
      _save(str(raw / "labels-ah" / f"im{i:04d}.ah.ppm"), np.stack([label] * 3, -1))
  arrays, meta = get_converter("stare")(str(raw), {"test_ids": "im0002"})
  assert arrays["images"].shape == (2, 10, 10, 3) and list(arrays["split"]) == ["train", "test"]
  assert arrays["fov"][0].sum() == 36 and arrays["masks"][0].sum() == 6
  assert "red channel > 20" in meta["fov_rule"]


def _acdc(tmp_path, corrupt=False):
  raw = tmp_path / "ACDC" / "training"
  groups = ["DCM", "HCM", "MINF", "NOR", "RV"]
  for p in range(1, 11):
    folder = raw / f"patient{p:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: 1\nES: 5\nGroup: {groups[(p - 1) // 2]}\nHeight: 170\n")
    for frame in (1, 5):
      volume = RNG.random((16, 12, 3)).astype(np.float32) * 400
      labels = np.zeros((16, 12, 3), np.uint8)
      labels[4:10, 3:8, :] = 3
      affine = np.diag([1.5, 1.25, 10.0, 1.0])
      nib.save(nib.Nifti1Image(volume, affine), str(folder / f"patient{p:03d}_frame{frame:02d}.nii.gz"))
      nib.save(nib.Nifti1Image(labels, affine), str(folder / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz"))
  if corrupt:
    (raw / "patient004" / "patient004_frame05.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
  return raw.parent


def test_acdc_nifti_volumes_to_slices(tmp_path):
  arrays, meta = get_converter("acdc")(str(_acdc(tmp_path)), {"size": 8})
  assert arrays["images"].shape == (10 * 2 * 3, 8, 8, 1) and meta["num_mask_classes"] == 4
  np.testing.assert_allclose(arrays["spacing"][0], [1.5 * 16 / 8, 1.25 * 12 / 8, 10.0])  # header zooms, resized
  assert set(np.unique(arrays["masks"])) == {0, 3} and arrays["images"].max() == 255
  assert sorted(set(arrays["site"])) == ["DCM", "HCM", "MINF", "NOR", "RV"]
  for patient in np.unique(arrays["group"]):
    assert len(np.unique(arrays["split"][arrays["group"] == patient])) == 1
  assert (arrays["split"] == "test").sum() == 5 * 6  # one of two patients per group, 6 slices each


def test_corrupt_nifti_names_the_file_and_leaves_no_output(tmp_path, capsys):
  out = tmp_path / "out"
  assert prepare.main(["acdc", "--raw", str(_acdc(tmp_path, corrupt=True)), "--out", str(out)]) == 2
  assert "patient004_frame05.nii.gz" in capsys.readouterr().err and not out.exists()


def test_medmnist_npz_through_prepare_and_load(tmp_path):
  path = tmp_path / "pneumoniamnist.npz"
  np.savez(path, **{f"{s}_images": RNG.integers(0, 255, (n, 28, 28), np.uint8) for s, n in
                    (("train", 6), ("val", 2), ("test", 3))},
           **{f"{s}_labels": RNG.integers(0, 2, (n, 1)) for s, n in (("train", 6), ("val", 2), ("test", 3))})
  assert prepare.main(["medmnist", "--raw", str(path), "--out", str(tmp_path / "p")]) == 0
  dataset = load_prepared(str(tmp_path / "p"))
  assert len(dataset) == 11 and dataset.arrays["images"].shape[1:] == (28, 28, 1)
  assert list(np.unique(dataset.arrays["split"], return_counts=True)[1]) == [3, 6, 2]
  assert dataset.meta["num_classes"] == 2 and "no patient ids" in dataset.meta["groups"]


def test_unknown_converter_lists_the_names(capsys):
  assert prepare.main(["hamm10000", "--raw", "/x", "--out", "/tmp/never"]) == 2
  err = capsys.readouterr().err
  assert "dataset 'hamm10000' is not known" in err and "'drive'" in err and "Did you mean 'ham10000'?" in err


def test_missing_raw_folder_is_named(capsys):
  assert prepare.main(["drive", "--raw", "/nonexistent/DRIVE", "--out", "/tmp/never"]) == 2
  assert "/nonexistent/DRIVE does not exist" in capsys.readouterr().err
