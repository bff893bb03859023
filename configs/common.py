"""Helpers shared by the configs: the data root, the baseline modes of a comparison, the one grammar of a config's
argument (``parse_arg``) and the common part of its ``runlocal`` smoke-size variant (``apply_runlocal``)."""

import os

import ml_collections


def data_file(relative: str) -> str:
  """``$FEDJAX_MED_DATA/relative`` when that variable is set, else '' (then pass --config.data.root)."""
  root = os.environ.get("FEDJAX_MED_DATA", "")
  return os.path.join(root, relative) if root else ""


ACDC_SITES = ("DCM", "HCM", "MINF", "NOR", "RV")  # the ACDC pathology groups (the compact file's site column)


def acdc_site_partition(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """One client per ACDC pathology group (``ACDC_SITES``): the natural non-iid split of the ACDC configs."""
  config.partition.method = "column"
  config.partition.column = "site"
  config.partition.clients = ACDC_SITES
  config.partition.num_clients = len(ACDC_SITES)
  return config


def apply_mode(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  """Same-budget baselines of a federated config.

  ``fedavg`` leaves the config as it is. ``pooled`` trains one client on all training
  data and ``siteK`` trains client K alone; both run ``num_clients`` times as many
  rounds (of the same local steps), i.e. as many gradient steps as the whole
  federation takes. Rounds rather than local steps are multiplied so that the
  unrolled local-step program, and its compile time, stay the same size.
  """
  if mode in ("", "fedavg"):
    return config
  if mode == "pooled":
    config.partition.method = "pooled"
  elif mode.startswith("site") and mode[4:].isdigit():
    config.partition.only_client = int(mode[4:])
  else:
    last = config.partition.num_clients - 1
    raise ValueError(f"unknown config mode {mode!r}; allowed: fedavg, pooled, site0..site{last}")
  scale = config.partition.num_clients
  config.num_rounds *= scale
  config.eval.every *= scale
  config.checkpoint.every *= scale
  return config


# --- the config argument: ``configs/X.py:ARG`` -------------------------------------------------------------------

_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _describe(spec: dict) -> str:
  """The keys of a spec as one line: valued keys in positional order, then the flags."""
  valued, flags = [], []
  for key, default in spec.items():
    if isinstance(default, tuple):
      valued.append(f"{key}={'|'.join(str(c) for c in default)}")
    elif isinstance(default, bool):
      flags.append(key)
    else:
      valued.append(f"{key}=<{type(default).__name__}>")
  return f"keys (bare values fill them in this order): {', '.join(valued) or 'none'}; flags: {', '.join(flags)}"


def _convert(key: str, text: str, default, where: str, spec: dict):
  kind = type(default[0] if isinstance(default, tuple) else default)
  try:
    if kind is bool:
      value = _BOOLS[text.lower()]
    else:
      value = kind(text)
  except (KeyError, ValueError):
    want = "true, false, 1 or 0" if kind is bool else {int: "an int", float: "a float"}.get(kind, "a str")
    raise ValueError(f"{where}: {key}={text!r} is not {want}; {_describe(spec)}") from None
  if isinstance(default, tuple) and value not in default:
    raise ValueError(f"{where}: {key}={text!r} is not allowed; allowed: {'|'.join(str(c) for c in default)}; "
                     f"{_describe(spec)}")
  return value


def parse_arg(arg: str | None, where: str, **spec) -> ml_collections.ConfigDict:
  """Parses a config file's argument (the text after ``configs/X.py:``) into its named keys.

  ``spec`` maps each key, in positional order, to its default: a str, int, float or bool (the value's type), or a
  tuple of the allowed values whose first element is the default. ``arg`` is comma-separated tokens:
  ``key=value`` sets a key; a bare token naming a bool key (a flag such as ``table`` or ``runlocal``) sets it True;
  any other bare token sets the next valued (non-bool) key not set yet, in the order of ``spec``. So
  ``fedavg_pce,table`` and ``mode=fedavg_pce,table`` are the same. Any mistake (an unknown key, a value of the
  wrong type or not among the choices, a bare value too many, a key set twice) raises one ValueError naming
  ``where`` (the config file), the token and the allowed keys.
  """
  values = {key: default[0] if isinstance(default, tuple) else default for key, default in spec.items()}
  given: set[str] = set()
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    if "=" in token:
      key, _, text = token.partition("=")
      key = key.strip()
      if key not in spec:
        raise ValueError(f"{where}: unknown key {key!r} in {token!r}; {_describe(spec)}")
    elif isinstance(spec.get(token), bool):
      key, text = token, "true"
    else:
      key = next((k for k, d in spec.items() if not isinstance(d, bool) and k not in given), None)
      if key is None:
        raise ValueError(f"{where}: too many bare values: {token!r} has no key left to fill; {_describe(spec)}")
      text = token
    if key in given:
      raise ValueError(f"{where}: key {key!r} given twice (again in {token!r}); {_describe(spec)}")
    given.add(key)
    values[key] = _convert(key, text.strip(), spec[key], where, spec)
  return ml_collections.ConfigDict(values)


def one_scale(args: ml_collections.ConfigDict, where: str, *flags: str) -> str:
  """The one scale flag of ``flags`` set in ``args`` ('' = none); two at once is an error."""
  chosen = [f for f in flags if args[f]]
  if len(chosen) > 1:
    raise ValueError(f"{where}: flags {chosen} exclude each other; pick at most one of {list(flags)}")
  return chosen[0] if chosen else ""


def baseline_modes(num_clients: int) -> tuple[str, ...]:
  """The modes of ``apply_mode``: fedavg (the default), pooled, site0..site{num_clients - 1}."""
  return ("fedavg", "pooled", *(f"site{k}" for k in range(num_clients)))


# --- runlocal: a seconds-long end-to-end check of a config ------------------------------------------------------


def apply_runlocal(config: ml_collections.ConfigDict, rounds: int = 1, local_steps: int = 1,
                   batch_size: int = 4) -> ml_collections.ConfigDict:
  """The smoke-size parts common to every config's ``runlocal``: ``rounds`` rounds of at most ``local_steps`` local
  steps on batches of at most ``batch_size``, evaluated and checkpointed once at the end, on a small eval batch,
  quiet logs, no measured strategy choice. Same algorithm, task and data; each config shrinks its model itself
  and sets the method's warm-up rounds so that every phase runs within ``rounds``."""
  config.num_rounds = rounds
  config.client.local_steps = min(config.client.local_steps, local_steps)
  config.client.batch_size = min(config.client.batch_size, batch_size)
  config.eval.every = rounds
  config.eval.batch_size = min(config.eval.batch_size, 16)
  config.checkpoint.every = rounds
  if config.execution.strategy == "auto":  # auto first measures every strategy on shortened rounds
    config.execution.strategy = "sequential"
  config.execution.scan_unroll = 1  # one compiled step body, not one per local step
  config.log.progress = False
  config.log.tensorboard = False
  return config


def tiny_densenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """runlocal's DenseNet: the narrow DenseNet's shape cut to two one-layer blocks of growth 4 (densenet121 too)."""
  config.model.name = "densenet_narrow"
  config.model.kwargs.update(growth_rate=4, block_config=(1, 1), num_init_features=8)
  return config
