"""RSNA ICH from real DICOM (pydicom's own CT test slice) arranged in the Kaggle layout."""

import os

import numpy as np
import pytest

from fedjax_med.data import prepare
from fedjax_med.data.converters import rsna_ich
from fedjax_med.data.format import DatasetError, load_prepared

pydicom = pytest.importorskip("pydicom")

# image -> (patient, subtypes marked 1); one slice per row of the Kaggle CSV's six rows.
SLICES = {
    "ID_000a": ("P1", ("epidural",)),
    "ID_000b": ("P1", ("subdural", "intraventricular")),  # several: the first in the official order
    "ID_000c": ("P2", ()),                                 # no hemorrhage: left out
    "ID_000d": ("P2", ("subarachnoid",)),
    "ID_000e": ("P3", ("intraparenchymal",)),
    "ID_000f": ("P4", ("subdural",)),
}


def _kaggle(tmp_path):
  """Copies of pydicom's CT_small.dcm (a real 128x128 CT slice) as ID_*.dcm plus stage_2_train.csv."""
  raw = tmp_path / "rsna"
  folder = raw / "stage_2_train"
  folder.mkdir(parents=True)
  source = pydicom.data.get_testdata_file("CT_small.dcm")
  lines = ["ID,Label"]
  for image, (patient, positive) in SLICES.items():
    ds = pydicom.dcmread(source)
    ds.PatientID = patient
    ds.save_as(str(folder / f"{image}.dcm"))
    for subtype in (*rsna_ich.SUBTYPES, "any"):
      hit = subtype in positive or (subtype == "any" and positive)
      lines.append(f"{image}_{subtype},{int(bool(hit))}")
  (raw / "stage_2_train.csv").write_text("\n".join(lines) + "\n")
  return raw, source


def test_windowing_labels_groups_and_prepare(tmp_path):
  raw, source = _kaggle(tmp_path)
  out = tmp_path / "prepared"
  assert prepare.main(["rsna_ich", "--raw", str(raw), "--out", str(out), "--size", "32"]) == 0
  data = load_prepared(str(out))
  order = ["ID_000a", "ID_000b", "ID_000d", "ID_000e", "ID_000f"]  # sorted ids, ID_000c left out
  expected = [rsna_ich.SUBTYPES.index(s) for s in ("epidural", "intraventricular", "subarachnoid",
                                                     "intraparenchymal", "subdural")]
  np.testing.assert_array_equal(data.arrays["labels"], expected)
  np.testing.assert_array_equal(data.arrays["group"], [SLICES[i][0] for i in order])
  assert data.arrays["images"].shape == (5, 32, 32, 3)
  assert data.meta["left_out"] == {"no hemorrhage": 1, "several subtypes": 0}
  for patient in ("P1", "P2"):  # a patient's slices share a split
    assert len(set(data.arrays["split"][data.arrays["group"] == patient])) == 1
  # Hounsfield units and the brain window by hand on the stored pixels.
  ds = pydicom.dcmread(source)
  hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  brain = np.round(np.clip((hu - 0.0) / 80.0, 0, 1) * 255).astype(np.uint8)
  hu_read, patient = rsna_ich.read_slice(str(raw / "stage_2_train" / "ID_000a.dcm"))
  np.testing.assert_allclose(hu_read, hu)
  assert patient == "P1"
  np.testing.assert_array_equal(rsna_ich.window(hu, rsna_ich.parse_windows(None))[..., 0], brain)


def test_multi_drop_leaves_out_slices_with_several_subtypes(tmp_path):
  raw, _ = _kaggle(tmp_path)
  arrays, meta = rsna_ich.convert(str(raw), {"multi": "drop", "size": 16})
  assert len(arrays["labels"]) == 4 and meta["left_out"] == {"no hemorrhage": 1, "several subtypes": 1}
  with pytest.raises(DatasetError, match="option multi='any' is not allowed"):
    rsna_ich.convert(str(raw), {"multi": "any"})


def test_corrupt_dicom_and_missing_slice_are_named_and_leave_no_output(tmp_path, capsys):
  raw, _ = _kaggle(tmp_path)
  (raw / "stage_2_train" / "ID_000d.dcm").write_bytes(b"DICM? not really")
  out = tmp_path / "prepared"
  assert prepare.main(["rsna_ich", "--raw", str(raw), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: cannot read DICOM slice") and "ID_000d.dcm" in err and err.count("\n") == 1
  assert not os.path.exists(out) or not os.listdir(out)
  os.remove(raw / "stage_2_train" / "ID_000d.dcm")
  with pytest.raises(DatasetError, match=r"slice ID_000d.dcm, labeled in .*stage_2_train.csv, is missing"):
    rsna_ich.convert(str(raw), {})


def test_bad_csv_rows_and_windows_are_named(tmp_path):
  raw, _ = _kaggle(tmp_path)
  (raw / "stage_2_train.csv").write_text("ID,Label\nID_000a_epidural,1\nID_000a_bleed,1\n")
  with pytest.raises(DatasetError, match="line 3: 'ID_000a_bleed,1' is not ID_<image>_<subtype>"):
    rsna_ich.convert(str(raw), {})
  with pytest.raises(DatasetError, match="window '40' is not CENTER/WIDTH"):
    rsna_ich.parse_windows("40")


def test_fedirm_ich_config_trains_on_prepared_dicom(tmp_path):
  from configs import fedirm_ich
  from fedjax_med import train

  raw, _ = _kaggle(tmp_path)
  assert prepare.main(["rsna_ich", "--raw", str(raw), "--out", str(tmp_path / "prepared"), "--size", "16"]) == 0
  config = fedirm_ich.get_config("runlocal")  # 2 rounds, warm-up 1: the unlabeled client trains in round 1
  config.data.root = str(tmp_path / "prepared")
  config.data.eval_split = "train"  # five slices: every split but train may be empty
  config.eval.select_on = ""  # so no best-on-val selection either
  config.partition.num_clients, config.partition.labeled_clients = 2, (0,)
  config.model.name, config.model.kwargs = "small_cnn", {"widths": (4,), "dense": 8, "dropout": 0.2}
  config.client.batch_size = 2
  assert (config.num_rounds, config.algorithm.warmup_rounds, config.client.local_steps) == (2, 1, 1)
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["rounds"] == 2 and 0.0 <= summary["eval"]["accuracy"] <= 1.0
