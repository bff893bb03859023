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
  if arg.startswith("multimix"):
    from fedjax_med import plot

    assert plot.main([str(tmp_path / "run"), "--saliency", "2"]) == 0
    assert (tmp_path / "run" / "saliency.png").stat().st_size > 0


def two_datasets(seg_count=6, cls_count=8, size=8):
  from fedjax_med.data.format import PreparedDataset

  def rows(count, value, **extra):
    return {"images": np.full((count, size, size, 1), value, np.uint8),
            "group": np.array([f"p{i}" for i in range(count)]), "site": np.array(["s"] * count),
            "split": np.array(["train"] * count), **extra}

  seg = PreparedDataset(rows(seg_count, 0, masks=np.ones((seg_count, size, size), np.uint8),
                             labels=np.full(seg_count, 3, np.int32)), {"name": "seg", "num_classes": 7})
  cls = PreparedDataset(rows(cls_count, 255, labels=np.arange(cls_count, dtype=np.int32) % 2),
                        {"name": "cls", "num_classes": 2})
  return seg, cls


def test_classification_stream_from_a_second_dataset_keeps_the_tasks_apart():
  seg, cls = two_datasets()
  both = budgets.with_classification_stream(seg, cls, class_budget=3, mask_budget=2, seed=0)
  a = both.arrays
  np.testing.assert_array_equal(a["cls_pool"], [0] * 6 + [1] * 8)
  assert a["cls_labeled"][:6].sum() == 0 and a["cls_labeled"][6:].sum() == 3
  assert (a["labels"][:6] == -1).all() and ((a["labels"][6:] >= 0) == a["cls_labeled"][6:].astype(bool)).all()
  assert a["seg_labeled"][:6].sum() == 2 and a["seg_labeled"][6:].sum() == 0 and a["seg_unlabeled"][6:].sum() == 0
  assert (a["masks"][6:] == 0).all() and all(g.startswith("cls:") for g in a["group"][6:])
  assert both.meta["num_classes"] == 2
  _, small = two_datasets(size=4)
  with pytest.raises(ValueError, match="differ in shape"):
    budgets.with_classification_stream(seg, small, 3, 2, 0)


def test_classification_streams_draw_only_the_classification_dataset():
  import jax

  from fedjax_med.data.pipeline import multitask_batch_fn

  seg, cls = two_datasets()
  arrays = {k: jax.numpy.asarray(v) for k, v in
            budgets.with_classification_stream(seg, cls, 3, 2, 0).arrays.items() if k not in ("group", "site", "split")}
  batch = multitask_batch_fn((0.0,), (1.0,))(arrays, jax.numpy.arange(4), jax.random.PRNGKey(0))
  # seg rows are black, classification rows white: every classification stream is white, every seg stream black
  for name in ("cls_images", "weak"):
    np.testing.assert_allclose(batch[name], 1.0, atol=1e-6)
  for name in ("seg_images", "seg_u"):
    np.testing.assert_allclose(batch[name], 0.0, atol=1e-6)
  assert (batch["cls_labels"] >= 0).all() and (batch["seg_masks"] == 1).all()


def test_multimix_with_a_classification_dataset_scores_each_task_on_its_own_test_split(tmp_path):
  config = tiny_config("umtl,20,6")  # both tasks, the cheapest compile (the streams are tested above)
  config.data.cls_source.name = "synthetic"  # the default synthetic set (4 classes, 32x32), resized to 16x16
  summary = train.run(config, str(tmp_path / "run"))
  exp = experiment.build(config)
  assert exp.meta["num_classes"] == 4 and len(exp.cls_eval_dataset) > 0
  assert exp.cls_eval_dataset.arrays["images"].shape[1:] == exp.eval_dataset.arrays["images"].shape[1:]
  assert 0.0 <= summary["eval"]["accuracy"] <= 1.0 and 0.0 <= summary["eval"]["seg_dice"] <= 1.0
  config.partition.method = "column"
  with pytest.raises(ValueError, match="only supported centralised"):
    experiment.build(config)


def test_a_deepest_map_below_4x4_is_refused_naming_the_widths_and_the_image_size():
  from configs import multimix_ham10000

  config = tiny_config()
  config.model.kwargs.widths = (4, 8, 16, 32)  # 16x16 images halved 3 times: 2x2
  with pytest.raises(ValueError, match=r"config.model.kwargs.widths=\(4, 8, 16, 32\) has 4 levels: the deepest map "
                                       r"of the 16x16 images is 2x2, .*at most 3 levels"):
    experiment.build(config)
  config.model.min_deepest_size = 0  # allowed on request
  experiment.check_model_depth(config, (16, 16, 1))
  table = multimix_ham10000.get_config("multimix,100,10,table")
  experiment.check_model_depth(table, (32, 32, 3))  # the table protocol: 4 levels at 32x32, 4x4 at the bottom
  experiment.check_model_depth(multimix_ham10000.get_config("multimix,100,10"), (64, 64, 3))  # 5 levels at 64x64
  table.model.kwargs.widths = (8, 16, 32, 64, 128)  # the results page's 5 levels
  with pytest.raises(ValueError, match=r"32x32 images \(after config.data.downsample=2\) is 2x2"):
    experiment.check_model_depth(table, (32, 32, 3))


def test_distribution_alignment_starts_at_the_labeled_prior_and_tracks_the_unlabeled_predictions():
  import jax

  from fedjax_med.losses import multitask as mt
  from tests.helpers import run_rounds

  config = tiny_config("encssl,20,6")
  config.task.distribution_alignment, config.task.alignment_momentum = True, 0.5
  config.model.kwargs.dropout = 0.0  # train-mode logits = eval-mode logits: the update can be recomputed here
  exp = experiment.build(config)
  labels = exp.client_datasets[0].arrays["labels"]
  counts = np.bincount(labels[labels >= 0], minlength=3)
  prior = exp.variables[mt.ALIGNMENT_COLLECTION]["unlabeled_mean"]
  np.testing.assert_allclose(prior, counts / counts.sum(), rtol=1e-6)  # the 20 labeled rows' class distribution
  arrays = {k: jax.numpy.asarray(v) for k, v in exp.client_datasets[0].arrays.items() if v.dtype.kind in "uif"}
  batch = next(iter(exp.batch_fns.values()))(arrays, jax.numpy.arange(3), jax.random.PRNGKey(0))
  state = {k: v for k, v in exp.variables.items() if k != "params"}
  _, (new_state, metrics) = exp.task.loss_fn(exp.variables["params"], state, batch, jax.random.PRNGKey(1))
  weak = jax.nn.softmax(exp.model.apply(exp.variables, batch["weak"], train=False)["logits"])
  np.testing.assert_allclose(new_state[mt.ALIGNMENT_COLLECTION]["unlabeled_mean"], 0.5 * prior + 0.5 * weak.mean(0),
                             rtol=1e-5)
  assert "unlabeled_mean_max" in metrics
  _, (same, _) = exp.task.loss_fn(exp.variables["params"], state, batch, jax.random.PRNGKey(1), train=False)
  np.testing.assert_array_equal(same[mt.ALIGNMENT_COLLECTION]["unlabeled_mean"], prior)  # evaluation: no update
  server, _ = run_rounds(config, "sequential", 2)  # through the engine: carried between steps and rounds
  mean = np.asarray(server.params[mt.ALIGNMENT_COLLECTION]["unlabeled_mean"])
  np.testing.assert_allclose(mean.sum(), 1.0, rtol=1e-5)
  assert np.abs(mean - np.asarray(prior)).max() > 1e-4
  enc = tiny_config("enc,20,6")
  enc.task.distribution_alignment = True
  with pytest.raises(ValueError, match=r"needs config.task.ssl_weight > 0"):
    experiment.build(enc)


def test_claim_mode_is_the_pneumonia_table_protocol_evaluated_once():
  from configs import multimix_ham10000

  claim = multimix_ham10000.get_config("multimix,100,10,claim")
  table = multimix_ham10000.get_config("multimix,100,10,pneumonia,table")
  assert claim.data.cls_source.name == "pneumoniamnist" and claim.partition.method == "pooled"
  assert claim.eval.every == claim.num_rounds == table.num_rounds
  assert not claim.task.distribution_alignment  # the switch is off by default (the official code)
  claim.eval.every, claim.checkpoint.every = table.eval.every, table.checkpoint.every
  assert claim.to_dict() == table.to_dict()
  with pytest.raises(ValueError, match="claim is centralised"):
    multimix_ham10000.get_config("multimix,100,10,fed,claim")
