"""The CPU default XLA flags: appended once, never duplicated, user's flags kept, opt-out honoured; set by the entry
points and never by ``import fedjax_med``; a flag the installed jaxlib rejects is skipped with a warning."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from fedjax_med import xla_flags

DEFAULT = "--xla_cpu_experimental_ynn_fusion_type="
BOGUS = "--xla_fedjax_med_no_such_flag=1"


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FEDJAX_MED_KEEP_XLA_FLAGS")}
  return {**env, **extra}


def test_appends_default_to_empty_environment():
  env = {}
  assert xla_flags.apply_cpu_defaults(env, check=False) == DEFAULT
  assert env["XLA_FLAGS"] == DEFAULT


def test_keeps_user_flags_and_user_value_of_the_same_flag():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_experimental_ynn_fusion_type=dot"}
  assert xla_flags.apply_cpu_defaults(env, check=False) == env["XLA_FLAGS"]
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  assert env["XLA_FLAGS"].endswith("=dot")


def test_appends_after_other_flags_and_is_idempotent():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  first = xla_flags.apply_cpu_defaults(env, check=False)
  assert first == "--xla_force_host_platform_device_count=4 " + DEFAULT
  assert xla_flags.apply_cpu_defaults(env, check=False) == first


def test_opt_out_leaves_flags_untouched():
  env = {"FEDJAX_MED_KEEP_XLA_FLAGS": "1"}
  assert xla_flags.apply_cpu_defaults(env) == ""
  assert "XLA_FLAGS" not in env


@pytest.mark.parametrize("flags", [None, "--xla_force_host_platform_device_count=2"])
def test_importing_fedjax_med_leaves_xla_flags_untouched(flags):
  code = ("import os, fedjax_med, fedjax_med.train, fedjax_med.experiment, fedjax_med.cli, fedjax_med.data.prepare; "
          "print(repr(os.environ.get('XLA_FLAGS')))")
  env = _clean_env(**({"XLA_FLAGS": flags} if flags else {}))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == repr(flags)


def test_main_py_and_the_benchmarks_set_the_flag_before_jax_is_imported():
  main = ("import os, runpy, sys; from absl import app; "
          "app.run = lambda *a, **k: print(os.environ.get('XLA_FLAGS'), 'jax' in sys.modules); "
          "sys.argv = ['main.py']; runpy.run_path('main.py', run_name='__main__')")
  benchmarks = "import os, sys, benchmarks; print(os.environ.get('XLA_FLAGS'), 'jax' in sys.modules)"
  for code in (main, benchmarks):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == f"{DEFAULT} False"


def test_a_flag_the_installed_jaxlib_rejects_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(xla_flags, "CPU_DEFAULT_FLAGS", (DEFAULT, BOGUS))
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  with caplog.at_level("WARNING", logger="fedjax_med"):
    assert xla_flags.apply_cpu_defaults(env) == "--xla_force_host_platform_device_count=1 " + DEFAULT
  version = xla_flags.jaxlib_version()
  assert f"not setting XLA flag {BOGUS}: jaxlib {version} does not accept it (" in caplog.text
  assert "Unknown flag in XLA_FLAGS" in caplog.text and DEFAULT + ":" not in caplog.text
  cache = json.loads((tmp_path / "fedjax_med" / "xla_flags.json").read_text())
  assert cache == {f"jaxlib {version} {DEFAULT}": True, f"jaxlib {version} {BOGUS}": False}

  def no_probe(flag, timeout=300.0):
    raise AssertionError("the cached answer should have been used")

  monkeypatch.setattr(xla_flags, "probe", no_probe)
  caplog.clear()
  with caplog.at_level("WARNING", logger="fedjax_med"):
    assert xla_flags.apply_cpu_defaults({}) == DEFAULT
  assert f"not setting XLA flag {BOGUS}" in caplog.text and "cached" in caplog.text


def test_a_probe_that_fails_for_another_reason_is_not_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(xla_flags, "PROBE", "import sys; sys.exit('jax is broken here')")
  ok, definitive, detail = xla_flags.probe(DEFAULT)
  assert (ok, definitive, detail) == (False, False, "(the probe failed: jax is broken here)")
  assert xla_flags.apply_cpu_defaults({}) == ""
  assert not (tmp_path / "fedjax_med").exists()
