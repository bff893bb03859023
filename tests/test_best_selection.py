"""Best-validation model selection (``eval.select_on``): kept, saved, evaluated, resumed; never on the test split."""

import json
import os

import flax.serialization
import numpy as np
import pytest
from conftest import tiny_config

from fedjax_med import config as config_lib
from fedjax_med import experiment, train


def selecting_config(**changes):
  return tiny_config(**{"eval__every": 1, "eval__select_on": "val", "eval__select_metric": "macro_auroc",
                        "client__learning_rate": 0.03, **changes})


def _load_variables(config, path):
  exp = experiment.build(config)
  with open(path, "rb") as f:
    variables = flax.serialization.from_bytes(exp.variables, f.read())
  return exp, variables


def test_the_best_model_on_val_is_kept_saved_and_evaluated_on_test(tmp_path, monkeypatch):
  seen = []  # the splits every evaluation read
  report_of = train.report_of
  monkeypatch.setattr(train, "report_of", lambda exp, variables, dataset: (
      seen.append(set(dataset.arrays["split"].tolist())), report_of(exp, variables, dataset))[1])
  config = selecting_config()
  summary = train.run(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  scores = [row["select"]["macro_auroc"] for row in rows]
  assert [row["select"]["split"] for row in rows] == ["val"] * 4
  best_round = int(np.nanargmax(scores)) + 1  # ties keep the earlier round
  assert summary["eval"]["best_round"] == best_round == summary["selection"]["round"]
  assert summary["selection"]["score"] == max(scores)
  assert rows[-1]["select"]["best_round"] == best_round
  assert summary["eval"]["best/macro_auroc"] == rows[best_round - 1]["eval"]["macro_auroc"]  # that round's model
  results = json.load(open(tmp_path / "results.json"))
  assert results["eval"]["best/macro_auroc"] == summary["eval"]["best/macro_auroc"]
  assert results["eval"]["macro_auroc"] == rows[-1]["eval"]["macro_auroc"]  # the last round's, beside it
  # The saved best variables give the reported numbers: their val score and their test metrics.
  exp, best = _load_variables(config, tmp_path / train.BEST_VARIABLES_FILE)
  assert report_of(exp, best, exp.select_dataset)["macro_auroc"] == pytest.approx(max(scores), abs=1e-6)
  on_test = report_of(exp, best, exp.eval_dataset)
  for key in ("macro_auroc", "accuracy", "balanced_accuracy"):
    assert summary["eval"][f"best/{key}"] == pytest.approx(on_test[key], abs=1e-6)
  # Four evaluations: test (the round's metrics) then val (the selection); then the best model on test.
  assert seen == [{"test"}, {"val"}] * 4 + [{"test"}]
  assert set(exp.select_dataset.arrays["split"].tolist()) == {"val"}


def test_resuming_keeps_the_best_so_far(tmp_path):
  straight = train.run(selecting_config(), str(tmp_path / "straight"))
  first = train.run(selecting_config(num_rounds=2), str(tmp_path / "parts"))
  kept = json.load(open(tmp_path / "parts" / train.BEST_RECORD_FILE))
  assert kept["round"] == first["eval"]["best_round"] <= 2
  assert straight["eval"]["best_round"] <= 2  # (lr 0.03 overshoots) so the resumed run must keep the first part's
  resumed = train.run(selecting_config(num_rounds=4), str(tmp_path / "parts"))
  for key in ("best_round", "best/macro_auroc", "best/accuracy", "macro_auroc"):
    assert resumed["eval"][key] == straight["eval"][key]
  assert resumed["selection"] == straight["selection"]
  saved = [open(tmp_path / run / train.BEST_VARIABLES_FILE, "rb").read() for run in ("straight", "parts")]
  assert saved[0] == saved[1]


def test_a_crash_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
  selection = {"split": "val", "metric": "accuracy", "mode": "max"}
  like = {"params": {"w": np.zeros(3, np.float32)}}
  train.save_best(str(tmp_path), {"params": {"w": np.ones(3, np.float32)}}, {"round": 1, "score": 0.5,
                                                                             "selection": selection})
  replace = os.replace
  calls = []

  def crash_on_the_record(src, dst):
    calls.append(dst)
    if dst.endswith(train.BEST_RECORD_FILE):
      raise KeyboardInterrupt  # killed after the variables' rename, before the record's
    replace(src, dst)

  monkeypatch.setattr(os, "replace", crash_on_the_record)
  with pytest.raises(KeyboardInterrupt):
    train.save_best(str(tmp_path), {"params": {"w": np.full(3, 2.0, np.float32)}},
                    {"round": 3, "score": 0.7, "selection": selection})
  monkeypatch.setattr(os, "replace", replace)
  assert json.load(open(tmp_path / train.BEST_RECORD_FILE))["round"] == 1  # stale
  best = train.load_best(str(tmp_path), selection, like)
  assert best["round"] == 3 and best["score"] == 0.7
  np.testing.assert_array_equal(best["variables"]["params"]["w"], [2.0, 2.0, 2.0])
  assert train.load_best(str(tmp_path), {**selection, "metric": "macro_auroc"}, like) is None  # another selection


@pytest.mark.parametrize("changes,message", [
    ({"eval__select_on": "test"}, r"config.eval.select_on='test' must name a split other than"),
    ({"eval__select_on": "val", "data__eval_split": "val"}, r"other than the evaluation split"),
    ({"eval__select_on": "valid"}, r"splits: \['train', 'val', 'test'\]"),
    ({"eval__select_on": "val", "eval__per_client": True}, r"not available with eval.per_client=True"),
    ({"eval__select_mode": "best"}, r"config.eval.select_mode='best' is not allowed"),
])
def test_selection_never_on_the_evaluation_or_test_split(changes, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(tiny_config(**changes))


def test_an_unknown_selection_metric_names_the_metrics(tmp_path):
  with pytest.raises(config_lib.ConfigError, match=r"select_metric='dice' is not among this task's metrics \["):
    train.run(selecting_config(eval__select_metric="dice", num_rounds=1), str(tmp_path))
