"""Each converter on tiny fixtures written in the ORIGINAL formats (PIL, nibabel, numpy), the prepare command,
and the compact-file adapters (on the real files when FEDJAX_MED_DATA is set)."""

import csv
import gzip
import io
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedjax_med.data import prepare
from fedjax_med.data.compact import load_compact
from fedjax_med.data.converters import CONVERTERS, acdc, common, get_converter, register
from fedjax_med.data.converters.stare import field_of_view
from fedjax_med.data.format import DatasetError, load_prepared, validate

RNG = np.random.default_rng(0)
HAM_DX = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc", "nv", "mel", "bkl"]


def _save(path, array, **kw):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  Image.fromarray(array).save(str(path), **kw)


def _no_output(out):
  return not out.exists() and not [p for p in os.listdir(out.parent) if p.startswith(".prepare-")]


# ---------------------------------------------------------------------------------------------- registry


def test_registry_refuses_duplicates_and_names_the_closest_match():
  assert {"ham10000", "isic2018", "drive", "stare", "acdc", "medmnist"} <= set(CONVERTERS)
  with pytest.raises(KeyError, match="'drive' was already registered"):
    register("drive")(lambda raw, options: None)
  with pytest.raises(ValueError, match=r"dataset 'stair' is not known; available: \[.*'drive'.*\]\. "
                                       r"Did you mean 'stare'\?"):
    get_converter("stair")


def test_grouped_split_keeps_groups_whole_and_stratifies():
  group = np.repeat(np.arange(200), 2).astype(str)
  strata = np.repeat(np.arange(200) % 4, 2)
  split = common.grouped_split(group, strata, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
  for g in np.unique(group):
    assert len(set(split[group == g])) == 1
  for s in range(4):  # 50 groups per stratum -> 35 / 5 / 10
    per_group = split[strata == s][::2]
    assert [int((per_group == name).sum()) for name in ("train", "val", "test")] == [35, 5, 10]
  np.testing.assert_array_equal(split, common.grouped_split(group, strata, {"train": .7, "val": .1, "test": .2}, 3))


# ---------------------------------------------------------------------------------------------- HAM10000


def _ham(tmp_path, masks=True, isic=False, groupings=False):
  raw = tmp_path / "ham"
  for i in range(len(HAM_DX)):
    part = "HAM10000_images_part_1" if i < 5 else "HAM10000_images_part_2"
    _save(raw / part / f"ISIC_{i:07d}.jpg", RNG.integers(0, 255, (15, 20, 3), np.uint8))
    if masks:
      mask = np.zeros((15, 20), np.uint8)
      mask[3:10, 5:15] = 255
      _save(raw / "HAM10000_segmentations_lesion_tschandl" / f"ISIC_{i:07d}_segmentation.png", mask)
  rows = [{"lesion_id": f"HAM_{i // 2}", "image_id": f"ISIC_{i:07d}", "dx": d, "dx_type": "histo", "age": "50",
           "sex": "male", "localization": "back" if i % 2 else "face"} for i, d in enumerate(HAM_DX)]
  if isic:
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    with open(raw / "ISIC2018_Task3_Training_GroundTruth.csv", "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["image", *columns])
      for r in rows:
        writer.writerow([r["image_id"], *[1.0 if c.lower() == r["dx"] else 0.0 for c in columns]])
    if groupings:
      with open(raw / "ISIC2018_Task3_Training_LesionGroupings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "lesion_id", "diagnosis_confirm_type"])
        writer.writerows([[r["image_id"], r["lesion_id"], "histopathology"] for r in rows])
  else:
    with open(raw / "HAM10000_metadata.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  return raw


def test_ham10000_from_metadata_csv_with_masks(tmp_path):
  arrays, meta = get_converter("ham10000")(str(_ham(tmp_path)), {"size": 8})
  validate(arrays)
  assert arrays["images"].shape == (10, 8, 8, 3) and arrays["images"].dtype == np.uint8
  assert arrays["masks"].shape == (10, 8, 8) and set(np.unique(arrays["masks"])) == {0, 1}
  np.testing.assert_array_equal(arrays["labels"], [0, 1, 2, 3, 4, 5, 6, 5, 4, 2])  # DermaMNIST order
  assert list(arrays["site"][:2]) == ["face", "back"] and list(arrays["group"][:3]) == ["HAM_0", "HAM_0", "HAM_1"]
  assert meta["num_classes"] == 7 and meta["class_names"][4] == "mel" and meta["mask_names"] == ["background", "lesion"]
  for lesion in np.unique(arrays["group"]):  # a lesion never spans two splits
    assert len(np.unique(arrays["split"][arrays["group"] == lesion])) == 1
  native, _ = get_converter("ham10000")(str(_ham(tmp_path / "n")), {"size": 0})
  assert native["images"].shape == (10, 15, 20, 3) and native["masks"].shape == (10, 15, 20)


@pytest.mark.parametrize("size_args", [["--option", "size=0"], ["--size", "0"]])
def test_size_0_keeps_the_native_size_through_prepare(tmp_path, capsys, size_args):
  out = tmp_path / "native"
  assert prepare.main(["ham10000", "--raw", str(_ham(tmp_path)), "--out", str(out), *size_args]) == 0, \
      capsys.readouterr().err
  dataset = load_prepared(str(out))
  assert dataset.arrays["images"].shape == (10, 15, 20, 3) and dataset.arrays["masks"].shape == (10, 15, 20)
  assert dataset.meta["size"] is None


def test_isic2018_ground_truth_csv_with_and_without_lesion_groupings(tmp_path):
  arrays, meta = get_converter("isic2018")(str(_ham(tmp_path / "a", masks=False, isic=True)), {"size": 8})
  np.testing.assert_array_equal(arrays["labels"], [0, 1, 2, 3, 4, 5, 6, 5, 4, 2])
  assert "masks" not in arrays and meta["num_mask_classes"] == 0
  assert len(np.unique(arrays["group"])) == 10 and set(arrays["site"]) == {""}  # one group per image, no sites
  grouped, _ = get_converter("isic2018")(str(_ham(tmp_path / "b", masks=False, isic=True, groupings=True)), {})
  assert len(np.unique(grouped["group"])) == 5 and grouped["images"].shape[1:] == (64, 64, 3)


def test_ham10000_missing_mask_and_missing_label_file_are_named(tmp_path):
  raw = _ham(tmp_path)
  os.remove(raw / "HAM10000_segmentations_lesion_tschandl" / "ISIC_0000004_segmentation.png")
  with pytest.raises(DatasetError, match="mask ISIC_0000004_segmentation.png of image ISIC_0000004.jpg is missing"):
    get_converter("ham10000")(str(raw), {"size": 8})
  os.remove(raw / "HAM10000_metadata.csv")
  with pytest.raises(DatasetError, match=f"{raw} holds no HAM10000_metadata.csv"):
    get_converter("ham10000")(str(raw), {})


def test_corrupt_jpeg_names_the_file_and_leaves_no_output(tmp_path, capsys):
  raw = _ham(tmp_path)
  (raw / "HAM10000_images_part_1" / "ISIC_0000003.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
  out = tmp_path / "prepared"
  assert prepare.main(["ham10000", "--raw", str(raw), "--out", str(out), "--size", "8"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: cannot read image") and "ISIC_0000003.jpg" in err and err.count("\n") == 1
  assert _no_output(out)


# ---------------------------------------------------------------------------------------------- DRIVE


def _drive(tmp_path, h=12, w=10, second=True):
  raw = tmp_path / "DRIVE"
  for folder, numbers in (("training", (21, 22)), ("test", (1, 2))):
    for n in numbers:
      _save(raw / folder / "images" / f"{n:02d}_{folder}.tif", RNG.integers(0, 255, (h, w, 3), np.uint8))
      vessels = (RNG.random((h, w)) > 0.8).astype(np.uint8) * 255
      _save(raw / folder / "1st_manual" / f"{n:02d}_manual1.gif", vessels)
      fov = np.zeros((h, w), np.uint8)
      fov[1:-1, 1:-1] = 255
      _save(raw / folder / "mask" / f"{n:02d}_{folder}_mask.gif", fov)
      if folder == "test" and second:
        _save(raw / folder / "2nd_manual" / f"{n:02d}_manual2.gif", 255 - vessels)
  return raw


def test_drive_tif_and_gif(tmp_path):
  arrays, meta = get_converter("drive")(str(_drive(tmp_path)), {})
  validate(arrays)
  assert arrays["images"].shape == (4, 12, 10, 3) and meta["num_mask_classes"] == 2
  assert list(arrays["split"]) == ["train", "train", "test", "test"]
  assert list(arrays["group"]) == ["drive_21", "drive_22", "drive_01", "drive_02"] and set(arrays["site"]) == {"drive"}
  assert set(np.unique(arrays["masks"])) == {0, 1} and arrays["fov"].sum() == 4 * 10 * 8
  assert (arrays["masks_2nd"][:2] == 255).all()  # no 2nd observer for the training images
  np.testing.assert_array_equal(arrays["masks_2nd"][2:], 1 - arrays["masks"][2:])
  resized, _ = get_converter("drive")(str(_drive(tmp_path / "b", second=False)), {"size": (6, 4)})
  assert resized["images"].shape == (4, 6, 4, 3) and resized["fov"].shape == (4, 6, 4)
  assert set(np.unique(resized["masks"])) <= {0, 1} and "masks_2nd" not in resized


def test_drive_missing_files_and_folders_are_named(tmp_path):
  raw = _drive(tmp_path)
  os.remove(raw / "test" / "mask" / "02_test_mask.gif")
  with pytest.raises(DatasetError, match="02_test_mask.gif does not exist; expected the field-of-view mask"):
    get_converter("drive")(str(raw), {})
  os.rename(raw / "training" / "images", raw / "training" / "imgs")
  with pytest.raises(DatasetError, match=f"{raw}/training/images does not exist or is not a directory; expected "
                                         "the DRIVE training images"):
    get_converter("drive")(str(raw), {})


# ---------------------------------------------------------------------------------------------- STARE


def _ppm_gz(path, array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PPM")
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  with gzip.open(path, "wb") as f:
    f.write(buffer.getvalue())


def _fundus():
  image = np.zeros((10, 10, 3), np.uint8)
  image[2:8, 2:8] = 120  # the bright disc of the fundus; the border stays black
  image[4, 4] = 5  # a dark spot inside the disc: a hole the rule fills
  image[0, 9] = 200  # a bright speck outside the disc: not the largest region, dropped
  return image


def test_stare_ppm_labels_and_fov_rule(tmp_path):
  raw = tmp_path / "stare"
  for i in (1, 2, 3):
    if i == 2:
      _ppm_gz(raw / "images" / f"im{i:04d}.ppm.gz", _fundus())  # the distributed .ppm.gz
    else:
      _save(raw / "images" / f"im{i:04d}.ppm", _fundus())
    if i < 3:  # im0003 has no label and is dropped
      label = np.zeros((10, 10), np.uint8)
      label[4, 2:8] = 255
      _save(raw / "labels-ah" / f"im{i:04d}.ah.ppm", np.stack([label] * 3, -1))
  arrays, meta = get_converter("stare")(str(raw), {"test_ids": "im0002"})
  validate(arrays)
  assert arrays["images"].shape == (2, 10, 10, 3) and list(arrays["split"]) == ["train", "test"]
  assert list(arrays["group"]) == ["stare_im0001", "stare_im0002"] and set(arrays["site"]) == {"stare"}
  expected = np.zeros((10, 10), np.uint8)
  expected[2:8, 2:8] = 1
  np.testing.assert_array_equal(arrays["fov"][1], expected)  # red > 20, largest region, holes filled
  assert arrays["masks"][0].sum() == 6 and "red channel > 20" in meta["fov_rule"]
  resized, _ = get_converter("stare")(str(raw), {"size": "6,5"})
  assert resized["images"].shape == (2, 6, 5, 3) and resized["split"].tolist() == ["train", "train"]
  assert field_of_view(_fundus(), threshold=150).sum() == 1  # only the speck is brighter than 150
  with pytest.raises(DatasetError, match="test_ids names \\['im0003'\\], which have no label"):
    get_converter("stare")(str(raw), {"test_ids": "im0003"})


# ---------------------------------------------------------------------------------------------- ACDC

ACDC_GROUPS = ["DCM", "HCM", "MINF", "NOR", "RV"]


def _acdc(tmp_path, corrupt=False, scribbles=False):
  raw = tmp_path / "ACDC" / "training"
  for p in range(1, 11):
    folder = raw / f"patient{p:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: 1\nES: 5\nGroup: {ACDC_GROUPS[(p - 1) // 2]}\nHeight: 170\nNbFrame: 30\n")
    for frame in (1, 5):
      volume = RNG.random((16, 12, 3)).astype(np.float32) * 400
      labels = np.zeros((16, 12, 3), np.uint8)
      labels[4:10, 3:8, :] = 3
      labels[1:3, 1:3, :] = 1
      affine = np.diag([1.5, 1.25, 10.0, 1.0])
      stem = str(folder / f"patient{p:03d}_frame{frame:02d}")
      nib.save(nib.Nifti1Image(volume, affine), stem + ".nii.gz")
      nib.save(nib.Nifti1Image(labels, affine), stem + "_gt.nii.gz")
      if scribbles:
        scribble = np.full(labels.shape, 4, np.uint8)
        scribble[5:7, 4:6, :] = 3
        nib.save(nib.Nifti1Image(scribble, affine), stem + "_scribble.nii.gz")
  if corrupt:
    (raw / "patient004" / "patient004_frame05.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
  return raw.parent


def test_acdc_nifti_volumes_to_slices(tmp_path):
  arrays, meta = get_converter("acdc")(str(_acdc(tmp_path)), {"size": 8})
  validate(arrays)
  assert arrays["images"].shape == (10 * 2 * 3, 8, 8, 1) and arrays["masks"].shape == (60, 8, 8)
  assert arrays["images"].dtype == np.uint8 and arrays["images"].max() > 200
  native, _ = get_converter("acdc")(str(tmp_path / "ACDC"), {"size": "16,12"})  # no resize: the normalisation alone
  assert native["images"].min() == 0 and native["images"].max() == 255 and native["images"].shape[1:3] == (16, 12)
  volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
  volume[0, 0, 0] = 1e6  # an outlier above the 99th percentile is clipped
  assert acdc.normalise(volume)[9, 9, 9] == 255 and acdc.normalise(volume)[0, 0, 1] < 1
  np.testing.assert_allclose(arrays["spacing"][0], [1.5 * 16 / 8, 1.25 * 12 / 8, 10.0])  # header zooms, resized
  assert set(np.unique(arrays["masks"])) == {0, 1, 3} and (arrays["labels"] == -1).all()
  assert list(arrays["slice_idx"][:7]) == [0, 1, 2, 0, 1, 2, 0] and arrays["group"][6] == "patient002"
  assert sorted(set(arrays["site"])) == ACDC_GROUPS and "scribbles" not in arrays
  assert meta["num_mask_classes"] == 4 and meta["mask_names"][2] == "Myo" and meta["phases"]["patient001"] == {
      "ED": 1, "ES": 5}
  for patient in np.unique(arrays["group"]):
    assert len(np.unique(arrays["split"][arrays["group"] == patient])) == 1
  test_sites = arrays["site"][arrays["split"] == "test"]  # one of the two patients of each pathology group
  assert sorted(set(test_sites)) == ACDC_GROUPS and len(test_sites) == 5 * 6


def test_acdc_scribbles_and_non_square_size_through_prepare(tmp_path):
  out = tmp_path / "acdc"
  assert prepare.main(["acdc", "--raw", str(_acdc(tmp_path, scribbles=True)), "--out", str(out),
                       "--size", "8", "6", "--option", "test_fraction=0.5", "--seed", "1"]) == 0
  dataset = load_prepared(str(out))
  assert dataset.arrays["scribbles"].shape == (60, 8, 6) and set(np.unique(dataset.arrays["scribbles"])) == {3, 4}
  assert dataset.meta["ignore_index"] == 4 and dataset.arrays["spacing"].dtype == np.float32
  np.testing.assert_allclose(dataset.arrays["spacing"][0], [3.0, 2.5, 10.0])
  assert len(np.unique(dataset.split("test").arrays["group"])) == 5


def test_corrupt_nifti_names_the_file_and_leaves_no_output(tmp_path, capsys):
  out = tmp_path / "out"
  assert prepare.main(["acdc", "--raw", str(_acdc(tmp_path, corrupt=True)), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "cannot read NIfTI volume" in err and "patient004_frame05.nii.gz" in err and _no_output(out)


def test_acdc_missing_info_cfg_is_named(tmp_path):
  raw = _acdc(tmp_path)
  os.remove(raw / "training" / "patient003" / "Info.cfg")
  with pytest.raises(DatasetError, match="patient003/Info.cfg does not exist; expected the Info.cfg of patient003"):
    get_converter("acdc")(str(raw), {"size": 8})


@pytest.mark.parametrize("group_line", ["", "Group: \n"])
def test_acdc_info_cfg_without_group_is_named_and_leaves_no_output(tmp_path, capsys, group_line):
  raw = _acdc(tmp_path)
  info = raw / "training" / "patient003" / "Info.cfg"
  info.write_text(f"ED: 1\nES: 5\n{group_line}Height: 170\nNbFrame: 30\n")
  out = tmp_path / "out"
  assert prepare.main(["acdc", "--raw", str(raw), "--out", str(out), "--size", "8"]) == 2
  assert capsys.readouterr().err == (
      f"error: {info} has no 'Group:' line (the pathology group that becomes the patient's site); add one (Group: "
      f"DCM, HCM, MINF, NOR or RV) or move {info.parent} out of the download (early releases of testing/ have no "
      "groups)\n")
  assert _no_output(out)


# ---------------------------------------------------------------------------------------------- MedMNIST

SIZES = (("train", 6), ("val", 2), ("test", 3))


def _medmnist(path, shape=(28, 28), label_columns=1):
  np.savez(path, **{f"{s}_images": RNG.integers(0, 255, (n, *shape), np.uint8) for s, n in SIZES},
           **{f"{s}_labels": RNG.integers(0, 2, (n, label_columns)) for s, n in SIZES})
  return path


def test_medmnist_npz_through_prepare_and_load(tmp_path):
  path = _medmnist(tmp_path / "pneumoniamnist.npz")
  assert prepare.main(["medmnist", "--raw", str(path), "--out", str(tmp_path / "p")]) == 0
  dataset = load_prepared(str(tmp_path / "p"))
  assert len(dataset) == 11 and dataset.arrays["images"].shape[1:] == (28, 28, 1)
  assert [len(dataset.split(s)) for s, _ in SIZES] == [6, 2, 3] and len(np.unique(dataset.arrays["group"])) == 11
  assert dataset.meta["num_classes"] == 2 and dataset.meta["class_names"] == ["normal", "pneumonia"]
  assert "no patient ids" in dataset.meta["groups"] and set(dataset.arrays["site"]) == {""}


def test_medmnist_rgb_num_classes_and_refusals(tmp_path):
  folder = tmp_path / "derma"
  folder.mkdir()
  _medmnist(folder / "bloodmnist.npz", shape=(28, 28, 3))
  arrays, meta = get_converter("medmnist")(str(folder), {"num_classes": "8"})
  assert arrays["images"].shape == (11, 28, 28, 3) and meta["num_classes"] == 8 and meta["name"] == "bloodmnist"
  with pytest.raises(DatasetError, match="multi-label MedMNIST sets are not supported"):
    get_converter("medmnist")(str(_medmnist(tmp_path / "chestmnist.npz", label_columns=14)), {})
  broken = tmp_path / "broken.npz"
  broken.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(DatasetError, match="cannot read .*broken.npz"):
    get_converter("medmnist")(str(broken), {})


# ---------------------------------------------------------------------------------------------- prepare


def test_unknown_converter_lists_the_names(tmp_path, capsys):
  assert prepare.main(["hamm10000", "--raw", str(tmp_path), "--out", str(tmp_path / "never")]) == 2
  err = capsys.readouterr().err
  assert "dataset 'hamm10000' is not known" in err and "'drive'" in err and "Did you mean 'ham10000'?" in err


def test_missing_raw_folder_is_named(tmp_path, capsys):
  missing = tmp_path / "nonexistent" / "DRIVE"
  assert prepare.main(["drive", "--raw", str(missing), "--out", str(tmp_path / "never")]) == 2
  assert f"error: {missing} does not exist or is not a directory; expected the DRIVE download" in \
      capsys.readouterr().err
  assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv,message", [
    (["drive", "--raw", "R", "--size", "1", "2", "3"], "--size takes one positive number N or two H W"),
    (["drive", "--raw", "R", "--option", "novalue"], "--option 'novalue' must look like key=value"),
    (["drive", "--raw", "R", "--compact", "F"], "not allowed with argument"),
    (["drive", "--compact", "F", "--size", "8"], "apply to --raw conversions only"),
    (["drive", "--raw", "R", "--size", "x"], "invalid int value"),
])
def test_prepare_usage_errors_are_one_line(tmp_path, capsys, argv, message):
  assert prepare.main([*argv, "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_prepare_refuses_an_out_ending_in_npz(tmp_path, capsys):
  out = tmp_path / "drive" / "drive.npz"
  assert prepare.main(["medmnist", "--raw", str(_medmnist(tmp_path / "m.npz")), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err == (f"error: --out {out} ends in .npz, but prepare writes a folder (arrays.npz + meta.json), not an .npz "
                 f"file; pass a folder such as --out {tmp_path}/drive/drive, then --config.data.root="
                 f"{tmp_path}/drive/drive\n")
  assert not (tmp_path / "drive").exists()


def test_prepare_refuses_an_existing_out(tmp_path, capsys):
  (tmp_path / "o").mkdir()
  assert prepare.main(["medmnist", "--raw", str(_medmnist(tmp_path / "m.npz")), "--out", str(tmp_path / "o")]) == 2
  assert "exists already" in capsys.readouterr().err


def _tiny_drive_npz(path):
  np.savez_compressed(
      path, images=np.zeros((4, 5, 6, 3), np.uint8), vessel=np.ones((4, 5, 6), np.uint8),
      fov=np.ones((4, 5, 6), np.uint8), vessel_2nd_test=np.zeros((2, 5, 6), np.uint8),
      split=np.array(["training", "training", "test", "test"]), image_id=np.array([21, 22, 1, 2], np.int16))
  return path


def test_prepare_compact_file(tmp_path, capsys):
  path = _tiny_drive_npz(tmp_path / "drive.npz")
  assert prepare.main(["drive", "--compact", str(path), "--out", str(tmp_path / "d")]) == 0
  dataset = load_prepared(str(tmp_path / "d"))
  assert list(dataset.arrays["split"]) == ["train", "train", "test", "test"]
  assert list(dataset.arrays["group"]) == ["drive_21", "drive_22", "drive_01", "drive_02"]
  assert (dataset.arrays["masks_2nd"][:2] == 255).all() and (dataset.arrays["masks_2nd"][2:] == 0).all()
  assert "prepared 4 images of drive (test 2, train 2)" in capsys.readouterr().out
  assert prepare.main(["driv", "--compact", str(path), "--out", str(tmp_path / "e")]) == 2
  assert "available: ['acdc', 'drive', 'ham10000', 'pneumoniamnist']. Did you mean 'drive'?" in capsys.readouterr().err
  with pytest.raises(DatasetError, match="lacks the keys \\['images', 'vessel'"):
    load_compact("drive", str(_medmnist(tmp_path / "m.npz")))


# ---------------------------------------------------------------------------------------------- real compact files


@pytest.fixture(scope="module")
def real_root():
  root = os.environ.get("FEDJAX_MED_DATA", "")
  if not root or not os.path.isdir(root):
    pytest.skip("real-data test: set FEDJAX_MED_DATA to the team's data folder (../shared/data)")
  return root


@pytest.fixture(scope="module")
def real_ham(real_root):
  return load_compact("ham10000", os.path.join(real_root, "ham10000", "ham10000_64.npz"))  # 100 MB: load once


def test_compact_ham10000(real_ham):
  validate(real_ham.arrays)
  assert len(real_ham) == 10015 and real_ham.arrays["images"].shape == (10015, 64, 64, 3)
  assert real_ham.arrays["masks"].shape == (10015, 64, 64) and real_ham.arrays["labels"].dtype == np.int32
  np.testing.assert_array_equal(np.bincount(real_ham.arrays["labels"]), [327, 514, 1099, 115, 1113, 6705, 142])
  assert [len(real_ham.split(s)) for s in ("train", "val", "test")] == [7023, 1012, 1980]
  groups = [set(real_ham.split(s).arrays["group"]) for s in ("train", "val", "test")]
  assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])  # lesion-grouped
  assert real_ham.meta["class_names"][0] == "akiec" and "trunk" in set(real_ham.arrays["site"])


def test_compact_ham10000_splits_by_body_location_with_each_lesion_at_one_site(real_ham):
  from configs.multimix_ham10000 import SITES
  from fedjax_med.data import partition

  train = real_ham.split("train")
  client_of_row = partition.by_column(train.arrays["site"], train.arrays["group"], SITES)  # raised before the fix
  assert (client_of_row >= 0).all() and len(np.unique(client_of_row)) == len(SITES)
  assert "2 lesions" in real_ham.meta["sites"]


def test_compact_drive(real_root):
  drive = load_compact("drive", os.path.join(real_root, "drive", "drive.npz"))
  validate(drive.arrays)
  assert len(drive) == 40 and drive.arrays["images"].shape == (40, 584, 565, 3)
  test, train = drive.split("test"), drive.split("train")
  assert len(test) == 20 and (test.arrays["masks_2nd"] != 255).all() and (train.arrays["masks_2nd"] == 255).all()
  assert "drive_01" in set(test.arrays["group"]) and "drive_21" in set(train.arrays["group"])


def test_compact_acdc(real_root):
  dataset = load_compact("acdc", os.path.join(real_root, "acdc", "acdc_slices_128.npz"))
  validate(dataset.arrays)
  assert len(dataset) == 1902 and dataset.arrays["images"].shape == (1902, 128, 128, 1)
  assert dataset.arrays["scribbles"].shape == (1902, 128, 128) and dataset.meta["ignore_index"] == 4
  assert dataset.meta["num_mask_classes"] == 4 and dataset.arrays["group"][0] == "patient001"
  for patient in np.unique(dataset.arrays["group"]):
    assert len(np.unique(dataset.arrays["split"][dataset.arrays["group"] == patient])) == 1
  test = dataset.split("test")
  for pathology in ("DCM", "HCM", "MINF", "NOR", "RV"):  # 4 of the 20 patients of each group
    assert len(np.unique(test.arrays["group"][test.arrays["site"] == pathology])) == 4


def test_compact_pneumoniamnist(real_root):
  pneumonia = load_compact("pneumoniamnist", os.path.join(real_root, "pneumoniamnist", "pneumoniamnist_28.npz"))
  validate(pneumonia.arrays)
  assert [len(pneumonia.split(s)) for s in ("train", "val", "test")] == [4708, 524, 624]
  assert pneumonia.arrays["images"].shape[1:] == (28, 28, 1) and pneumonia.meta["class_names"][1] == "pneumonia"


def test_per_group_mode_gives_each_group_one_value():
  import numpy as np

  from fedjax_med.data.compact import per_group_mode

  values = np.array(["back", "face", "back", "trunk", "trunk", "face"])
  group = np.array(["a", "a", "a", "b", "b", "c"])
  out, conflicts = per_group_mode(values, group)
  assert out.tolist() == ["back", "back", "back", "trunk", "trunk", "face"] and conflicts == 1
