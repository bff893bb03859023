"""What ``main.py`` runs: default workdir, error reporting, exit codes."""

from __future__ import annotations

import logging
import os
import sys

import ml_collections

from fedjax_med import config as config_lib
from fedjax_med.data.format import DatasetError

log = logging.getLogger("fedjax_med")


def _config_keys(config_arg: str, dotted_parent: str) -> list[str]:
  """The keys at ``dotted_parent`` of the config file named by ``--config`` (best effort)."""
  import importlib.util

  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_fedjax_med_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  node = module.get_config(arg) if arg else module.get_config()
  for part in filter(None, dotted_parent.split(".")):
    node = node[part]
  return sorted(node.keys())


def describe_flag_error(argv: list[str], error: Exception) -> str:
  """One line naming the bad ``--config.key`` override and the keys allowed there."""
  message = str(error).strip("'\"").replace("\\n", " ").replace("\n", " ")
  if "Error whilst parsing config file" in message:  # keep the config's own exception, not the traceback
    message = "config file: " + message[message.rfind("Error: ") - 5:].split(" ", 1)[-1]
  if "No such file or directory" in message:
    missing = message.split("No such file or directory:")[-1].strip(" '")
    return f"config file not found: {missing}"
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None and "--config" in argv[:-1]:
    config_arg = argv[argv.index("--config") + 1]
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    parent, _, leaf = dotted.rpartition(".")
    try:
      keys = _config_keys(config_arg, parent) if config_arg else []
    except Exception:  # the config file itself is broken: report the original error
      keys = []
    if keys and leaf not in keys:
      where = "config" + ("." + parent if parent else "")
      return f"unknown config key {dotted!r} in {arg}; keys allowed under {where}: {keys}"
    if dotted.split(".")[-1] in message or arg in message:
      return f"bad value in {arg}: {message}"
  return message


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("workdirs", name)


def workdir_problem(workdir: str) -> str | None:
  """Why the run could not write ``workdir`` (None when it can): checked before the data is loaded, so a
  read-only or mistyped location fails at once and leaves nothing behind."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.lexists(existing):  # the deepest part of the path that exists
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"workdir {workdir} cannot be created: {existing} is a file, not a folder; pass another --workdir"
  checkpoints = os.path.join(path, "checkpoints")
  for target in (existing, checkpoints) if os.path.isdir(checkpoints) else (existing,):
    if os.access(target, os.W_OK | os.X_OK):
      continue
    try:
      read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    except OSError:
      read_only = False
    why = "is on a read-only file system" if read_only else "is not writable by this user"
    where = f"workdir {workdir}" if target == path else f"workdir {workdir} cannot be written: {target}"
    return f"{where} {why}; pass --workdir DIR on a writable disk"
  return None


def main(config: ml_collections.ConfigDict, workdir: str | None, config_path: str) -> int:
  """Runs training; expected failures print one ``error: ...`` line and exit with status 2."""
  from fedjax_med import train  # importing JAX is allowed before jax.distributed.initialize; computing is not
  from fedjax_med.engine import distributed

  workdir = workdir or default_workdir(config_path)
  problem = workdir_problem(workdir)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  try:
    settings = distributed.settings_from_env()  # multi-host: FEDJAX_MED_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
    if settings is not None:
      distributed.initialize(*settings)  # before any JAX computation
    train.run(config, workdir)
  except (config_lib.ConfigError, DatasetError, train.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:  # builder-level validation (models, partitioners, algorithms)
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # the workdir stopped being writable during the run (disk full, remounted read-only)
    inside = e.filename and os.path.abspath(str(e.filename)).startswith(os.path.abspath(workdir) + os.sep)
    if not (inside or e.filename and os.path.abspath(str(e.filename)) == os.path.abspath(workdir)):
      raise
    print(f"error: cannot write {e.filename}: {e.strerror}; free space or pass --workdir DIR on a writable disk "
          "(the run resumes from its last checkpoint)", file=sys.stderr)
    return 2
  return 0
