"""tree_target: Dice counts against scikit-learn; the filtered truth keeps every structure at a tiny sigma and loses
them at a huge one (a run's site models: tests/algorithms/test_fedicra.py, on its FedICRA run)."""

import numpy as np
from sklearn.metrics import f1_score

from fedjax_med import tree_target


def test_dice_on_the_selected_pixels_matches_sklearn():
  rng = np.random.default_rng(0)
  pred, truth = rng.integers(0, 4, size=(3, 8, 8)), rng.integers(0, 4, size=(3, 8, 8))
  where = rng.uniform(size=(3, 8, 8)) < 0.6
  ours = tree_target.dice_of(tree_target.confusion(pred, truth, where, 4))
  ref = f1_score(truth[where], pred[where], labels=range(4), average=None, zero_division=0)
  np.testing.assert_allclose(ours, ref, rtol=1e-12)


def rows_of(out: str) -> dict[str, list[float]]:
  rows = [line.strip("| ").split(" | ") for line in out.splitlines()[2:]]
  return {r[0]: [float(v) for v in r[1:]] for r in rows}


def test_filtered_truth_on_acdc_keeps_structures_at_tiny_sigma_and_loses_them_at_huge(data_root, monkeypatch,
                                                                                      capsys):
  monkeypatch.setenv("FEDJAX_MED_DATA", data_root)
  config = "configs/fedicra_acdc.py:fedicra,table,runlocal"
  assert tree_target.main(["--config", config, "--sigmas", "1e-9", "1e9"]) == 0
  rows = rows_of(capsys.readouterr().out)
  assert rows["truth (one-hot masks)"] == [1.0, 1.0, 1.0, 1.0]
  tiny, huge = rows["image tree, sigma=1e-09"], rows["image tree, sigma=1e+09"]
  assert min(tiny) > 0.9  # weights ~0: the truth comes back (up to runs of identical intensities)
  assert huge[1:] == [0.0, 0.0, 0.0]  # weights ~1: each slice's mean, which is background everywhere


def test_a_config_without_weak_labels_is_one_error(capsys):
  assert tree_target.main(["--config", "configs/fedavg.py"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and "weak labels" in err and len(err.strip().splitlines()) == 1
