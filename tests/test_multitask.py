"""MultiMix end to end on the embedded data: budgets, streams, the ladder's modes, federated and centralised."""

import json

import numpy as np
import pytest

from fedjax_med import experiment, train
from fedjax_med.data import budgets
from tests.helpers import short_run


def tiny_config(arg: str = "multimix,20,6"):
  from configs import multimix_ham10000

  config = multimix_ham10000.get_config(arg)
  config.data.name, config.data.root = "synthetic", ""
  config.data.synthetic = dict(num_sites=3, patients_per_site=6, slices_per_volume=2, image_size=16, num_classes=3,
                               channels=1, seed=0)
  config.data.channels = ()
  config.partition.clients = ()
  config.model.kwargs.widths = (4, 8)
  config.client.batch_size = 3
  config.client.local_steps = 2
  config.eval.pad_multiple = 4
  return short_run(config)


def test_budgets_hide_labels_and_flag_masks():
  exp = experiment.build(tiny_config())
  data = exp.client_datasets[0]
  assert int(data.arrays["cls_labeled"].sum()) == 20 and int((data.arrays["labels"] >= 0).sum()) == 20
  assert int(data.arrays["seg_labeled"].sum()) == 6
  np.testing.assert_array_equal(data.arrays["seg_unlabeled"], 1 - data.arrays["seg_labeled"])
  with pytest.raises(ValueError, match="class_budget = 0"):
    budgets.apply_budgets(data, 0, 5, 0)


@pytest.mark.parametrize("arg", ["multimix,20,6", "enc,all,6", "umtl,20,6,fed"])
def test_modes_train_and_report_both_tasks(arg, tmp_path):
  summary = train.run(tiny_config(arg), str(tmp_path / "run"))
  evaluation = summary["eval"]
  assert 0.0 <= evaluation["accuracy"] <= 1.0 and 0.0 <= evaluation["seg_dice"] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  trained = rows[-1]["train"]
  assert np.isfinite(trained["loss"])
  assert ("ssl" in trained) == arg.startswith("multimix") and ("dice_loss" in trained) != arg.startswith("enc")
  if arg.endswith("fed"):
    assert summary["num_clients"] == 3
