"""The frozen-encoder probe: runs on synthetic volumes, trains only its head, pairs seeds, reports errors."""

import json

import flax.serialization
import jax
import numpy as np

from fedjax_med import experiment, models, probe
from tests.helpers import short_run


def tiny_finetune_config():
  from configs import fcl_finetune_acdc

  config = fcl_finetune_acdc.get_config("2")
  config.data.name = "synthetic"  # 16x16 volumes of 4 slices, 2 structures + background
  config.data.synthetic = dict(num_sites=2, patients_per_site=10, slices_per_volume=4, image_size=16,
                               num_classes=2, channels=1, seed=0)
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.partition.num_clients = 3
  config.model.kwargs.widths = (4, 8)
  return short_run(config)


def pretrained_workdir(path, widths=(4, 8)) -> str:
  """A stand-in pre-training workdir: an encoder-projector's variables from another PRNG key."""
  model = models.get_model("unet_encoder_projector", 0, widths=widths, projection_dim=8)
  variables = models.init_variables(model, jax.random.PRNGKey(7), (16, 16, 1))
  path.mkdir()
  (path / "global_variables.msgpack").write_bytes(flax.serialization.msgpack_serialize(variables))
  return str(path)


def test_the_head_trains_on_the_frozen_encoder_and_leaves_it_untouched(tmp_path):
  config = tiny_finetune_config()
  exp = experiment.build(config)
  variables = models.load_pretrained_encoder(exp.variables, pretrained_workdir(tmp_path / "pre"))
  before = jax.tree.map(np.array, variables)
  images, masks = probe.labeled_slices(exp)
  assert probe.encoder_blocks(variables) == ["down0", "bottleneck"]
  levels = probe.encoder_features(exp.model, variables, np.zeros((2, 16, 16, 1), np.float32))
  assert [f.shape for f in levels] == [(2, 16, 16, 4), (2, 8, 8, 8)]
  head = probe.fit_head(exp.model, variables, images, masks, 3, config=config, steps=5, batch_size=8,
                        learning_rate=1e-2, seed=0)
  assert head["kernel"].shape == (4 + 8, 3) and np.abs(head["kernel"]).max() > 0
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  report = probe.score(exp.model, variables, head, exp)
  assert 0.0 <= report["dice3d"] <= 1.0


def test_cli_pairs_seeds_against_a_random_encoder(tmp_path, capsys):
  pre = pretrained_workdir(tmp_path / "pre")
  out = tmp_path / "probe.json"
  args = ["--encoder", pre, "--seeds", "0", "1", "--steps", "3", "--batch-size", "8", "--out", str(out),
          "--config", "configs/fcl_finetune_acdc.py:2", "--config.data.name=synthetic",
          "--config.model.kwargs.widths=(4,8)", "--config.partition.num_clients=3"]
  assert probe.main(args) == 0
  printed = capsys.readouterr().out
  assert "random initialisation" in printed and "95 % CI" in printed and "over 2 paired seeds" in printed
  result = json.loads(out.read_text())
  assert sorted(result["per_seed"]) == ["0", "1"]
  assert all(0.0 <= r[k]["dice3d"] <= 1.0 for r in result["per_seed"].values() for k in ("encoder", "baseline"))


def test_cli_errors_are_one_line(tmp_path, capsys):
  args = ["--encoder", str(tmp_path / "missing"), "--config", "configs/fcl_finetune_acdc.py:2",
          "--config.data.name=synthetic", "--config.model.kwargs.widths=(4,8)", "--config.partition.num_clients=3"]
  assert probe.main(args) == 2
  assert "missing/global_variables.msgpack does not exist" in capsys.readouterr().err
  assert probe.main(["--encoder", "x", "--config", "configs/fcl_finetune_acdc.py:2", "--config.no_such_key=1"]) == 2
  assert "no_such_key" in capsys.readouterr().err


def test_the_blockwise_head_equals_a_linear_map_of_the_concatenated_upsampled_features():
  rng = np.random.default_rng(0)
  levels = [rng.normal(size=(2, 8, 8, 3)).astype(np.float32), rng.normal(size=(2, 2, 2, 5)).astype(np.float32)]
  head = {"mean": rng.normal(size=8), "std": rng.uniform(0.5, 2, size=8), "kernel": rng.normal(size=(8, 4)),
          "bias": rng.normal(size=4)}
  features = (probe.upsampled(levels, (8, 8)) - head["mean"]) / head["std"]
  np.testing.assert_allclose(probe.head_logits(head, levels, (8, 8)), features @ head["kernel"] + head["bias"],
                             rtol=1e-4, atol=1e-4)
