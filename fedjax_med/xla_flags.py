"""XLA flags fedjax_med's entry points set before JAX starts.

On XLA:CPU this jaxlib routes convolutions and dots through YNNPACK fusions by default;
turning them off (``--xla_cpu_experimental_ynn_fusion_type=`` with an empty value) falls back to
XLA's Eigen kernels, measured 1.25-1.56x faster on DenseNet-121 and U-Net training steps on a
2-core Zen 3 with identical first-step losses (see benchmarks/ and the developers' notes). The
flag only concerns the CPU backend, so GPU runs are unaffected. Numbers differ from the default
kernels' in the last bits, which is why every entry point sets the same flags.

``import fedjax_med`` leaves ``XLA_FLAGS`` alone: a library does not rewrite its host's environment. The
entry points call ``apply_cpu_defaults()`` before anything imports JAX: ``main.py``, the benchmarks
(``benchmarks/__init__.py``), ``python -m fedjax_med.plot`` before it builds an experiment, and the tests'
``conftest.py``. A notebook or script that wants the same kernels calls it first, before importing JAX.

XLA aborts the whole process on a flag its build does not know (``Unknown flag in XLA_FLAGS``), and
experimental flags come and go between jaxlib releases. So each default flag is first tried in a short
subprocess (``import jax; jax.devices()`` with only that flag); a flag the installed jaxlib rejects is
skipped with a warning naming it. The answer is cached per jaxlib version in
``$XDG_CACHE_HOME/fedjax_med/xla_flags.json`` (``~/.cache`` by default), so the probe (about a second)
runs once per installation. ``FEDJAX_MED_KEEP_XLA_FLAGS=1`` leaves ``XLA_FLAGS`` untouched.

Importing this module never imports JAX; the flags must be in the environment before JAX
initialises its backends.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

CPU_DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
PROBE = "import jax; jax.devices()"
REJECTED_MARK = "Unknown flag"  # XLA's fatal message: "Unknown flag in XLA_FLAGS: --name=value"
CACHE_FILE = "xla_flags.json"

log = logging.getLogger("fedjax_med")


def apply_cpu_defaults(environ: dict[str, str] | None = None, check: bool = True) -> str:
  """Appends the CPU default flags that ``XLA_FLAGS`` does not name and the installed jaxlib accepts.

  Args:
    environ: the environment to change (default ``os.environ``).
    check: probe each flag to be added with the installed jaxlib first (see the module docstring); False
      appends them unchecked.

  Returns:
    the new value of ``XLA_FLAGS`` (unchanged when nothing is added).
  """
  env = os.environ if environ is None else environ
  current = env.get("XLA_FLAGS", "")
  if env.get("FEDJAX_MED_KEEP_XLA_FLAGS") == "1":
    return current
  names = {flag.split("=", 1)[0] for flag in current.split()}
  extra = [flag for flag in CPU_DEFAULT_FLAGS if flag.split("=", 1)[0] not in names]
  if check:
    extra = [flag for flag in extra if accepted(flag)]
  if not extra:
    return current
  value = " ".join([current, *extra]).strip()
  env["XLA_FLAGS"] = value
  return value


def accepted(flag: str) -> bool:
  """Whether the installed jaxlib accepts ``flag`` in ``XLA_FLAGS``; logs a warning naming it when not."""
  version = jaxlib_version()
  if version is None:
    log.warning("not setting XLA flag %s: jaxlib is not installed", flag)
    return False
  key = f"jaxlib {version} {flag}"
  cache = _read_cache()
  if key in cache:
    ok, detail = bool(cache[key]), "(cached answer of an earlier probe)"
  else:
    ok, definitive, detail = probe(flag)
    if definitive:
      _write_cache({**cache, key: ok})
  if not ok:
    log.warning("not setting XLA flag %s: jaxlib %s does not accept it %s", flag, version, detail)
  return ok


def probe(flag: str, timeout: float = 300.0) -> tuple[bool, bool, str]:
  """Starts JAX's CPU backend in a subprocess with ``XLA_FLAGS=flag``.

  Returns:
    (accepted, definitive, detail): definitive is False when the subprocess failed for another reason than
    the flag (then the answer is not cached); detail is the last line of its error output.
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=flag, JAX_PLATFORMS="cpu", FEDJAX_MED_KEEP_XLA_FLAGS="1")
  try:
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                            timeout=timeout)
  except (OSError, subprocess.TimeoutExpired) as e:
    return False, False, f"(the probe failed: {e})"
  if result.returncode == 0:
    return True, True, ""
  lines = result.stderr.strip().splitlines()
  last = lines[-1] if lines else f"exit status {result.returncode}"
  rejected = REJECTED_MARK in result.stderr
  return False, rejected, f"({last.strip()})" if rejected else f"(the probe failed: {last.strip()})"


def jaxlib_version() -> str | None:
  """The installed jaxlib's version, read from its package metadata (no import)."""
  from importlib import metadata

  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return None


def cache_path() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "fedjax_med", CACHE_FILE)


def _read_cache() -> dict[str, bool]:
  try:
    with open(cache_path()) as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_cache(cache: dict[str, bool]) -> None:
  """Best effort: a read-only home only means probing again next time."""
  path = cache_path()
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError:
    try:
      os.remove(tmp)
    except OSError:
      pass
