"""Every shipped config, in every mode its docstring documents, validates; each algorithm refuses a
``config.algorithm`` key it does not read (naming its allowed keys) and a task loss weight set where it is unread."""

import itertools
import os

import pytest

from fedjax_med import cli
from fedjax_med import config as config_lib
from fedjax_med.algorithms import check_config, registered

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _multimix_args() -> list[str]:
  flag_sets = [(), ("fed",), ("pneumonia",), ("table",), ("claim",), ("fed", "table"), ("pneumonia", "table")]
  args = ["unet", "enc", "encssl", "umtl", "umtls", "multimix"]
  for mode, budgets, flags in itertools.product(("unet", "enc", "multimix"), ("100,10", "1000,50", "all,all"),
                                                flag_sets):
    args.append(",".join((mode, budgets, *flags)))
  return args


def shipped_variants() -> dict[str, list]:
  """Config file -> the args its docstring (and the README's configs table) documents (None = no arg)."""
  from configs import fcl_acdc, fcl_finetune_acdc, fedicra_acdc, fedirm, fedirm_ham10000

  scaled = lambda modes, scales: [m + ("," + s if s else "") for m in modes for s in scales]
  return {
      "fedavg": [None],
      "fedavg_drive": ["fedavg", "pooled", *[f"site{k}" for k in range(4)]],
      "fedavg_ham10000": ["fedavg", "pooled", *[f"site{k}" for k in range(10)]],
      "fedavg_ham10000_dp": scaled(("4", "1", "8", "inf"), ("", "table")),
      "fedirm": list(fedirm.MODES),
      "fedirm_ham10000": scaled(fedirm.MODES, fedirm_ham10000.SCALES),
      "fedirm_ich": scaled(fedirm.MODES, fedirm_ham10000.SCALES),
      "fcl_acdc": scaled(fcl_acdc.MODES, ("", "table", "long", "full")),
      "fcl_finetune_acdc": [",".join((n, *o)) for n in ("1", "2", "4") for k in range(3)
                            for o in itertools.combinations(fcl_finetune_acdc.OPTIONS, k)],
      "fedicra_acdc": scaled(fedicra_acdc.MODES, ("", "table")),
      "multimix_ham10000": _multimix_args(),
  }


def load(name: str, arg):
  import importlib

  module = importlib.import_module(f"configs.{name}")
  return module.get_config() if arg is None else module.get_config(arg)


def test_every_config_file_has_its_variants_listed():
  files = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")}
  assert files - {"__init__", "common"} == set(shipped_variants())


def test_every_shipped_config_validates():
  count = 0
  for name, args in shipped_variants().items():
    for arg in args:
      config = load(name, arg)
      try:
        config_lib.validate(config)
      except ValueError as e:
        pytest.fail(f"configs/{name}.py:{arg}: {e}")
      reads = registered.READS[config.algorithm.name]
      assert set(reads.required) <= set(config.algorithm), (name, arg)
      count += 1
  assert count > 150


@pytest.mark.parametrize("name, arg, algorithm", [("fedavg", None, "fedavg"), ("fedirm", "fedirm", "fedirm"),
                                                  ("fcl_acdc", "fcl", "fcl"), ("fedicra_acdc", "fedicra", "fedicra")])
def test_an_extra_algorithm_key_is_refused_naming_the_allowed_keys(name, arg, algorithm):
  config = load(name, arg)
  assert config.algorithm.name == algorithm
  config.algorithm.bogus_rate = 0.5
  with pytest.raises(ValueError, match=rf"config.algorithm has keys that algorithm '{algorithm}' does not read: "
                                       r"\['bogus_rate'\]; allowed keys of '" + algorithm + r"': \[") as info:
    config_lib.validate(config)
  allowed = registered.READS[algorithm].allowed
  assert all(repr(k) in str(info.value) for k in allowed) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, arg, keys", [
    ("fedirm", "fedirm", ("batch_stats", "prox_mu", "local_params")),
    ("fcl_acdc", "fcl", ("batch_stats", "prox_mu", "local_params")),
    ("fedicra_acdc", "fedicra", ("batch_stats", "prox_mu", "local_params", "persist_optimizer")),
])
def test_fedavg_keys_are_refused_by_the_algorithms_that_ignore_them(name, arg, keys):
  for key in keys:
    config = load(name, arg)
    config.algorithm[key] = load("fedavg", None).algorithm[key]
    with pytest.raises(ValueError, match=rf"does not read: \['{key}'\]"):
      check_config(config)


def test_fcl_and_fedirm_read_their_own_persist_optimizer():
  assert "persist_optimizer" in registered.READS["fcl"].required
  assert "persist_optimizer" in registered.READS["fedirm"].required
  assert "persist_optimizer" not in registered.READS["fedicra"].allowed  # AdamW re-created every round


def test_fedavg_reads_its_staged_schedule_keys_optionally():
  config = load("fedavg", None)
  assert "frozen" not in config.algorithm
  check_config(config)
  config.algorithm.frozen, config.algorithm.frozen_rounds = "^params/Conv_0/", 2
  check_config(config)
  del config.algorithm["prox_mu"]
  with pytest.raises(ValueError, match=r"config.algorithm lacks the FedAvg keys \['prox_mu'\]; start from "
                                       r"configs/fedavg.py"):
    check_config(config)


def test_crf_weight_is_read_from_one_place_per_algorithm():
  fedicra = load("fedicra_acdc", "fedicra,table")
  baseline = load("fedicra_acdc", "fedavg_crf,table")
  assert fedicra.algorithm.crf_weight == baseline.task.crf_weight == 0.01 and fedicra.task.crf_weight == 0
  fedicra.task.crf_weight = 0.1  # FedICRA trains on its own loss: the task's weight would be ignored
  with pytest.raises(ValueError, match=r"config.task.crf_weight=0.1 is not read: algorithm 'fedicra' trains on its "
                                       r"own loss, not the task's \(its weight of that name is "
                                       r"config.algorithm.crf_weight\)"):
    config_lib.validate(fedicra)
  baseline.algorithm.crf_weight = 0.1
  with pytest.raises(ValueError, match=r"does not read: \['crf_weight'\] \(it reads the task's loss weight "
                                       r"config.task.crf_weight\)"):
    config_lib.validate(baseline)
  full = load("fedicra_acdc", "full")  # FedAvg on full masks: the segmentation task has no CRF term
  full.task.crf_weight = 0.1
  with pytest.raises(ValueError, match=r"config.task.name='segmentation' has no such term \(only "
                                       r"'weak_segmentation' has\)"):
    check_config(full)


def test_consistency_weight_is_read_from_one_place_per_algorithm():
  assert load("multimix_ham10000", "multimix").task.consistency_weight == 0.01
  check_config(load("multimix_ham10000", "multimix"))
  fedirm = load("fedirm", "fedirm")
  fedirm.task.consistency_weight = 0.01
  with pytest.raises(ValueError, match=r"config.task.consistency_weight=0.01 is not read: algorithm 'fedirm' trains "
                                       r"on its own loss.*config.algorithm.consistency_weight"):
    check_config(fedirm)
  classification = load("fedavg", None)
  classification.task.consistency_weight = 0.01
  with pytest.raises(ValueError, match=r"config.task.name='classification' has no such term \(only 'multitask'"):
    check_config(classification)


def test_an_unread_key_stops_main_with_one_error_line(tmp_path, capsys):
  config = load("fedirm", "fedirm")
  config.algorithm.prox_mu = 0.01
  assert cli.main(config, str(tmp_path / "run"), "configs/fedirm.py") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: config.algorithm has keys that algorithm 'fedirm' does not read: ['prox_mu']")
  assert len(err.splitlines()) == 1 and not os.path.exists(tmp_path / "run" / "checkpoints")
