"""Every shipped config, in every mode its docstring documents, validates; each algorithm refuses a
``config.algorithm`` key it does not read (naming its allowed keys) and a task loss weight set where it is unread;
the one config-argument grammar (configs/common.parse_arg): positional and named forms, flags, errors; every config's
``runlocal`` variant runs a tiny round end to end on the real data."""

import itertools
import os

import pytest

from configs import common
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
      "fcl_acdc": [*scaled(fcl_acdc.MODES, ("", "table", "long", "full")), "fcl,long,sites", "local,long,sites"],
      "fcl_finetune_acdc": [",".join((n, *o)) for n in ("1", "2", "4") for k in range(3)
                            for o in itertools.combinations(fcl_finetune_acdc.OPTIONS, k)],
      "fedicra_acdc": scaled(fedicra_acdc.MODES, ("", "table")),
      "multimix_ham10000": _multimix_args(),
  }


def named_variants() -> dict[str, list[tuple]]:
  """Config file -> (positional arg, the same config in the named form, a runlocal variant)."""
  return {
      "fedavg": [(None, "runlocal=false", "runlocal")],
      "fedavg_drive": [("pooled", "mode=pooled", "pooled,runlocal")],
      "fedavg_ham10000": [("site3", "mode=site3", "runlocal,site3")],
      "fedavg_ham10000_dp": [("4,table", "eps=4,table", "eps=inf,runlocal"), ("inf", "eps=inf", "inf,runlocal")],
      "fedirm": [("official", "mode=official", "official,runlocal")],
      "fedirm_ham10000": [("fixmatch,table", "table,mode=fixmatch", "mode=fixmatch,full,runlocal")],
      "fedirm_ich": [("lower,full", "mode=lower,full=1", "lower,runlocal")],
      "fcl_acdc": [("simclr,long", "long=true,mode=simclr", "simclr,long,runlocal")],
      "fcl_finetune_acdc": [("2,table,staged", "labeled_patients=2,staged,table", "2,staged,runlocal")],
      "fedicra_acdc": [("fedavg_pce,table", "mode=fedavg_pce,table", "fedavg_pce,table,runlocal")],
      "multimix_ham10000": [("multimix,100,10,claim", "mode=multimix,class_budget=100,mask_budget=10,claim",
                             "mode=multimix,class_budget=100,mask_budget=10,claim,runlocal"),
                            ("umtl,all,50,fed", "umtl,mask_budget=50,class_budget=all,fed",
                             "umtl,all,50,fed,runlocal")],
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
    extra = [a for variants in named_variants()[name] for a in variants[1:]]
    for arg in [*args, *extra]:
      config = load(name, arg)
      try:
        config_lib.validate(config)
      except ValueError as e:
        pytest.fail(f"configs/{name}.py:{arg}: {e}")
      reads = registered.READS[config.algorithm.name]
      assert set(reads.required) <= set(config.algorithm), (name, arg)
      count += 1
  assert count > 150


def test_named_and_positional_forms_give_the_same_config():
  assert set(named_variants()) == set(shipped_variants())
  for name, variants in named_variants().items():
    for positional, named, runlocal in variants:
      assert load(name, positional).to_dict() == load(name, named).to_dict(), (name, named)
      small, full = load(name, runlocal), load(name, runlocal.replace("runlocal", "runlocal=0"))
      assert small.num_rounds <= 2 and not small.log.progress and not small.log.tensorboard, (name, runlocal)
      # runlocal shrinks the run, never what it is: the same algorithm, task, data and clients
      for key in ("algorithm.name", "task.name", "data.name", "data.root", "data.batch_mode", "partition.method",
                  "partition.num_clients", "privacy.enabled", "data.cls_source.name"):
        node_small, node_full = small, full
        for part in key.split("."):
          node_small, node_full = node_small[part], node_full[part]
        assert node_small == node_full, (name, runlocal, key)


SPEC = dict(mode=("fedicra", "fedavg_pce", "full"), n=1, rate=0.5, tag="x", table=False, runlocal=False)


def parse(arg):
  return common.parse_arg(arg, "configs/demo.py", **SPEC).to_dict()


def test_parse_arg_fills_positional_named_and_flag_tokens():
  defaults = dict(mode="fedicra", n=1, rate=0.5, tag="x", table=False, runlocal=False)
  assert parse(None) == parse("") == defaults
  assert parse("full,4,0.25,y,table") == dict(defaults, mode="full", n=4, rate=0.25, tag="y", table=True)
  assert parse("mode=full,n=4") == parse("full,4") == dict(defaults, mode="full", n=4)
  assert parse("n=4,full") == dict(defaults, mode="full", n=4)  # bare values skip keys already set by name
  assert parse("table,fedavg_pce,runlocal,rate=2") == dict(defaults, mode="fedavg_pce", table=True, runlocal=True,
                                                           rate=2.0)
  for text, value in (("true", True), ("1", True), ("False", False), ("0", False)):
    assert parse(f"table={text}")["table"] is value
  assert parse("table,runlocal=0") == dict(defaults, table=True)


KEYS = r"keys \(bare values fill them in this order\): mode=fedicra\|fedavg_pce\|full, n=<int>, rate=<float>, " \
       r"tag=<str>; flags: table, runlocal"


@pytest.mark.parametrize("arg, problem", [
    ("bogus=1", r"unknown key 'bogus' in 'bogus=1'"),
    ("n=four", r"n='four' is not an int"),
    ("full,x", r"n='x' is not an int"),
    ("rate=fast", r"rate='fast' is not a float"),
    ("table=maybe", r"table='maybe' is not true, false, 1 or 0"),
    ("mode=fedavg", r"mode='fedavg' is not allowed; allowed: fedicra\|fedavg_pce\|full"),
    ("full,1,0.5,y,extra", r"too many bare values: 'extra' has no key left to fill"),
    ("full,mode=full", r"key 'mode' given twice \(again in 'mode=full'\)"),
    ("table,table", r"key 'table' given twice"),
])
def test_parse_arg_names_the_file_the_token_and_the_keys(arg, problem):
  with pytest.raises(ValueError, match="^configs/demo.py: " + problem + ".*; " + KEYS + "$") as info:
    parse(arg)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, arg, problem", [
    ("fedicra_acdc", "fedavg", r"configs/fedicra_acdc.py: mode='fedavg' is not allowed"),
    ("fedirm_ham10000", "fedirm,table,full", r"configs/fedirm_ham10000.py: flags \['table', 'full'\] exclude each"),
    ("fedirm_ich", "scale=table", r"configs/fedirm_ich.py: unknown key 'scale'"),
    ("fcl_finetune_acdc", "two", r"configs/fcl_finetune_acdc.py: labeled_patients='two' is not an int"),
    ("fedavg_ham10000_dp", "0", r"configs/fedavg_ham10000_dp.py: the target epsilon must be > 0 or 'inf'"),
    ("fedavg_ham10000_dp", "eps=four", r"configs/fedavg_ham10000_dp.py: eps='four' is not a float"),
    ("fedavg_drive", "site4", r"configs/fedavg_drive.py: mode='site4' is not allowed; allowed: fedavg\|pooled\|"
                              r"site0\|site1\|site2\|site3;"),
    ("multimix_ham10000", "multimix,100,10,fed,claim", r"configs/multimix_ham10000.py: claim is centralised"),
    ("multimix_ham10000", "multimix,100,ten", r"configs/multimix_ham10000.py: a label budget is a count or 'all'"),
    ("fedavg", "table", r"configs/fedavg.py: too many bare values: 'table'"),
])
def test_config_files_refuse_a_bad_argument(name, arg, problem):
  with pytest.raises(ValueError, match=problem):
    load(name, arg)


def test_a_bad_config_argument_is_one_error_line():
  import subprocess
  import sys

  result = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "--config",
                           "configs/fedicra_acdc.py:mode=fedavg", "--workdir", "/nonexistent/never"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().startswith("error: config file: configs/fedicra_acdc.py: mode='fedavg' is not allowed")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# (c) every config file, one tiny runlocal run on the real data per distinct code path of its modes (the CPU budget
# of the suite: one run costs 5-25 s of compilation). A mode left out adds no code to one run here:
# - fedavg_ham10000_dp inf = fedavg_ham10000 (plain FedAvg over sampled clients);
# - fedirm lower / meanteacher are fedirm with terms switched off, upper is FedAvg over labeled clients; zero_update,
#   fixmatch and official run (two rounds each) in tests/algorithms/test_fedirm.py; fedirm_ham10000's modes are
#   fedirm.py's, on other data;
# - fcl_acdc local / simclr run (two rounds each, iid clients) in tests/algorithms/test_fcl.py; fcl over the
#   five sites here;
# - fcl_finetune_acdc N without staged = round 1 of staged (every weight training);
# - fedicra_acdc fedavg_pce = fedavg_crf without the CRF term; fedbn, local and full run per site in
#   tests/algorithms/test_fedicra.py;
# - multimix_ham10000 encssl / umtl / umtls are multimix with terms switched off; centralised multimix = the
#   centralised enc,claim run plus the federated multimix run; unet = multimix's segmentation arm alone.
# configs/fedirm_ich.py needs a prepared RSNA-ICH folder, not in the data folder: its runlocal variant runs in
# tests/data/test_rsna_ich.py::test_fedirm_ich_config_trains_on_prepared_dicom, on one prepared from tiny DICOM files.
RUNLOCAL = [
    ("fedavg", "runlocal"),
    ("fedavg_drive", "runlocal"),
    ("fedavg_ham10000", "runlocal"),
    ("fedavg_ham10000_dp", "runlocal"),
    ("fedirm", "fedirm,runlocal"),
    ("fedirm_ham10000", "runlocal"),
    ("fcl_acdc", "fcl,sites,runlocal"),
    ("fcl_finetune_acdc", "2,staged,runlocal"),
    *[("fedicra_acdc", f"{mode},runlocal") for mode in ("fedicra", "fedavg_crf")],
    ("multimix_ham10000", "multimix,fed,runlocal"),
    ("multimix_ham10000", "enc,claim,runlocal"),
]


def test_every_config_file_has_a_runlocal_run():
  assert {name for name, _ in RUNLOCAL} | {"fedirm_ich"} == set(shipped_variants())


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", RUNLOCAL)
def test_runlocal_runs_end_to_end_on_the_real_data(name, arg, data_root, monkeypatch, tmp_path):
  import math

  from fedjax_med import train

  monkeypatch.setenv("FEDJAX_MED_DATA", data_root)  # configs/common.data_file reads it when the config is built
  config = load(name, arg)
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["rounds"] == config.num_rounds <= 2
  assert summary["eval"] and all(math.isfinite(v) for v in summary["eval"].values() if isinstance(v, float))


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


def test_fcl_sites_flag_gives_each_pathology_group_its_own_client(data_root, monkeypatch):
  import numpy as np

  from configs import fcl_acdc
  from fedjax_med import experiment

  monkeypatch.setenv("FEDJAX_MED_DATA", data_root)
  exp = experiment.build(load("fcl_acdc", "fcl,sites,runlocal"))
  sites = [np.unique(d.arrays["site"]).tolist() for d in exp.client_datasets]
  assert sites == [[s] for s in fcl_acdc.SITES]
  assert [len(np.unique(d.arrays["group"])) for d in exp.client_datasets] == [16] * 5  # training patients per group
