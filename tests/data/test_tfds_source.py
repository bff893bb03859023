"""A local TFDS dataset feeds a cohort through grain (mocked TFDS data, nothing downloaded)."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")

from fedjax_med.data import streaming, tfds_source  # noqa: E402
from fedjax_med.data.format import DatasetError  # noqa: E402


def test_tfds_split_feeds_stacked_client_batches_through_grain():
  with tfds.testing.mock_data(num_examples=12):
    source = tfds_source.TfdsSource("mnist", split="train")
    clients = [tfds_source.Subset(source, range(0, 6)), tfds_source.Subset(source, range(6, 12))]
    cohort = streaming.StreamedCohort(clients, [0, 1], batch_size=4, num_steps=3, seed=0)
    stacked = streaming.round_batches(cohort.streams, 0, 3)
    assert stacked["images"].shape == (2, 3, 4, 28, 28, 1) and stacked["labels"].shape == (2, 3, 4)
    data = cohort.data_for_round(0)
    assert data.arrays["images"].shape == (2, 12, 28, 28, 1)
    assert data.arrays["labels"].shape == (2, 12)
    expected = {c: {source[i]["images"].tobytes() for i in (range(0, 6) if c == 0 else range(6, 12))}
                for c in (0, 1)}
    for c in (0, 1):  # each client's batches come only from its own rows
      got = {np.asarray(img).tobytes() for img in data.arrays["images"][c]}
      assert got <= expected[c]
    again = cohort.data_for_round(0)  # a pure function of the round: resumable
    np.testing.assert_array_equal(data.arrays["images"], again.arrays["images"])
    assert not np.array_equal(np.asarray(cohort.data_for_round(1).arrays["images"]),
                              np.asarray(data.arrays["images"]))


def test_missing_tfds_dataset_names_it():
  with pytest.raises(DatasetError, match="'no_such_dataset_xyz'"):
    tfds_source.TfdsSource("no_such_dataset_xyz", split="train", data_dir="/nonexistent")
