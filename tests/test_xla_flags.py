"""The CPU default XLA flags: appended once, never duplicated, user's flags kept, opt-out honoured."""

from fedjax_med import xla_flags


def test_appends_default_to_empty_environment():
  env = {}
  assert xla_flags.apply_cpu_defaults(env) == "--xla_cpu_experimental_ynn_fusion_type="
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


def test_keeps_user_flags_and_user_value_of_the_same_flag():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_experimental_ynn_fusion_type=dot"}
  assert xla_flags.apply_cpu_defaults(env) == env["XLA_FLAGS"]
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  assert env["XLA_FLAGS"].endswith("=dot")


def test_appends_after_other_flags_and_is_idempotent():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  first = xla_flags.apply_cpu_defaults(env)
  assert first == "--xla_force_host_platform_device_count=4 --xla_cpu_experimental_ynn_fusion_type="
  assert xla_flags.apply_cpu_defaults(env) == first


def test_opt_out_leaves_flags_untouched():
  env = {"FEDJAX_MED_KEEP_XLA_FLAGS": "1"}
  assert xla_flags.apply_cpu_defaults(env) == ""
  assert "XLA_FLAGS" not in env
