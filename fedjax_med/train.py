"""The one round loop: ``run(config, workdir)`` trains, evaluates, logs and checkpoints.

Re-running the same command on the same workdir resumes from the last checkpoint,
bit for bit: selection and sampling are pure functions of (seed, round, client id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
import tqdm

from fedjax_med import config as config_lib
from fedjax_med import experiment, tasks
from fedjax_med.checkpoint import Checkpointer
from fedjax_med.engine import auto, execution, privacy
from fedjax_med.engine.sampling import select_clients
from fedjax_med.logging_utils import MetricsWriter, read_metrics, summary_table, to_python

log = logging.getLogger("fedjax_med")
CONFIG_FILE = "config.json"  # what determines results (compared on resumption)
FULL_CONFIG_FILE = "config_full.json"  # every key of the latest invocation (to rebuild the run, e.g. overlays)
GLOBAL_VARIABLES_FILE = "global_variables.msgpack"
BEST_VARIABLES_FILE = "best_variables.msgpack"  # eval.select_on: the best global model so far
BEST_RECORD_FILE = "best.json"  # its round, score and selection (what a resumed run continues from)
RESULTS_FILE = "results.json"


class NonFiniteError(RuntimeError):
  """Training produced NaN/inf; the message names the round and the clients."""


# -- workdir ----------------------------------------------------------------------------------------------------------
def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir made by a different config unless ``config.overwrite``.

  With ``overwrite`` the old run is moved aside to ``WORKDIR.replaced-<time>``, not deleted.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = config_lib.fingerprint(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != new:
      if not config.overwrite:
        diffs = "; ".join(config_lib.differences(old, new)[:8])
        raise config_lib.ConfigError(
            f"workdir {workdir} holds a run made by a different config ({diffs}); use another --workdir or pass "
            "--config.overwrite=True to move the old run aside and start again")
      aside = f"{workdir.rstrip('/')}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
      shutil.move(workdir, aside)
      log.warning("moved the old run in %s to %s", workdir, aside)
  os.makedirs(workdir, exist_ok=True)
  for name, content in ((CONFIG_FILE, new), (FULL_CONFIG_FILE, json.loads(config.to_json_best_effort()))):
    target = os.path.join(workdir, name)
    with open(target + ".tmp", "w") as f:
      json.dump(content, f, indent=1, sort_keys=True)
    os.replace(target + ".tmp", target)


# -- rounds -----------------------------------------------------------------------------------------------------------
def selection_for(exp: experiment.Experiment, round_num: int | None) -> dict[str, np.ndarray]:
  """Participants per cohort in ``round_num`` (cohorts the algorithm rests that round are absent).

  ``round_num=None`` selects every cohort as in round 0 (used to measure a full round).
  """
  participates = exp.algorithm.participates
  return {name: select_clients(exp.config.seed, round_num or 0, i, len(ids), experiment.num_selected(exp, name))
          for i, (name, ids) in enumerate(sorted(exp.cohorts.items()))
          if round_num is None or participates is None or participates(name, round_num)}


NOISE_SECURE = "os_entropy"
NOISE_REPRODUCIBLE = ("reproducible from config.seed: NOT private against anyone holding the config or a checkpoint "
                      "(simulation research only)")


def mechanism_key(exp: experiment.Experiment, server_state) -> np.ndarray | None:
  """The round's secret key for an algorithm whose server update takes one (DP-FedAvg's noise and Poisson draw):
  fresh OS entropy, the same on every process of a multi-process run; with ``privacy.reproducible_noise`` derived
  from the run's PRNG key (not secret). ``None`` for other algorithms."""
  if not exp.algorithm.server_secret:
    return None
  if exp.config.privacy.get("reproducible_noise", False):
    counter = int(jax.device_get(server_state.round))
    return np.asarray(privacy.reproducible_key(jax.device_get(server_state.rng), counter))
  key = privacy.fresh_key()
  if jax.process_count() > 1:  # every process of the mesh runs the same mechanism: process 0's key for all
    from jax.experimental import multihost_utils

    key = np.asarray(multihost_utils.broadcast_one_to_all(key))
  return key


def round_selection(exp: experiment.Experiment, round_num: int, secret_key: np.ndarray | None
                    ) -> dict[str, np.ndarray]:
  """``selection_for``, narrowed under Poisson DP sampling to the clients the round's draw (with the round's
  mechanism key ``secret_key``) can count."""
  selection = selection_for(exp, round_num)
  if exp.dp is None or exp.dp.sampling != "poisson":
    return selection
  return {name: privacy.poisson_selection(exp.dp, secret_key, np.asarray(exp.cohorts[name])) for name in selection}


def check_finite(report: execution.RoundReport, round_num: int, policy: str) -> list[int]:
  """Returns the clients left out of the aggregate; raises when the round cannot continue."""
  excluded = [int(c) for name in report.finite for c, ok in zip(report.client_ids[name], report.finite[name])
              if not ok]
  participants = sum(len(v) for v in report.client_ids.values())
  if excluded and (policy == "stop" or len(excluded) == participants):
    raise NonFiniteError(f"round {round_num + 1}: non-finite update (NaN/inf) from client(s) {excluded} of "
                         f"{participants}; the run stops, the last good checkpoint is kept")
  if excluded:
    log.warning("round %d: client(s) %s sent non-finite updates and were left out of the aggregate",
                round_num + 1, excluded)
  return excluded


def skipped_clients(workdir: str) -> dict[str, list[int]]:
  """Round (1-based, as a string key) -> the clients left out of its aggregate for non-finite updates, over every
  round ``metrics.jsonl`` holds (a resumed run's earlier rounds included); rounds without any are absent."""
  return {str(row["round"]): row["excluded"] for row in read_metrics(workdir) if row.get("excluded")}


def skipped_summary(skipped: dict[str, list[int]], limit: int = 5) -> str:
  """``round 3: clients [1, 4]; round 7: ...`` for the first ``limit`` rounds."""
  text = "; ".join(f"round {r}: clients {c}" for r, c in list(skipped.items())[:limit])
  return text + ("; ..." if len(skipped) > limit else "")


def round_record(report: execution.RoundReport, round_num: int, seconds: float, excluded: list[int]) -> dict:
  clients = {}
  for name, ids in report.client_ids.items():
    for i, client in enumerate(ids):
      clients[int(client)] = {k: _value(v[i]) for k, v in report.metrics[name].items()} | {"cohort": name}
  finite = [v for c, v in clients.items() if c not in excluded]
  keys = sorted({k for v in finite for k in v if k != "cohort" and isinstance(v[k], float)})  # may differ by cohort
  train = {k: float(np.mean([v[k] for v in finite if k in v])) for k in keys}
  return {"round": round_num + 1, "seconds": seconds, "train": train, "clients": clients, "excluded": excluded,
          "server": {k: _value(v) for k, v in report.server_metrics.items()}}


def _value(x) -> float | list:
  """A metric for the JSON log: a float, or nested lists for an array metric (e.g. a relation matrix)."""
  x = np.asarray(x)
  return float(x) if x.ndim == 0 else x.tolist()


def report_of(exp: experiment.Experiment, variables, dataset) -> dict[str, Any]:
  """The task's evaluation metrics of ``variables`` on ``dataset`` (its registered report, ``tasks.TASKS``)."""
  return tasks.get_task(exp.task.name).report(exp, variables, dataset)


def evaluate(exp: experiment.Experiment, server_state, client_states=None) -> dict[str, Any]:
  """The global model on the evaluation split; with ``eval.per_client``, each client's personalised model on its
  own site's evaluation rows (``<site>/<metric>``) and the mean over sites (``<metric>``), and the same for each of
  the algorithm's ``eval_variants`` (``<variant>/<site>/<metric>``, ``<variant>/<metric>``)."""
  if not exp.config.eval.per_client:
    return report_of(exp, exp.algorithm.eval_variables(server_state, None), exp.eval_dataset)
  models = {"": exp.algorithm.eval_variables, **{f"{name}/": fn for name, fn in
                                                  (exp.algorithm.eval_variants or {}).items()}}
  report = {}
  for prefix, variables_of in models.items():
    per_site = {}
    for cohort, ids in exp.cohorts.items():
      for position, client in enumerate(ids):
        state = jax.tree.map(lambda x, p=position: x[p], client_states[cohort])
        site, rows = experiment.site_rows(exp, client)
        per_site[site] = report_of(exp, variables_of(server_state, state), exp.eval_dataset.select(rows))
    keys = sorted(set.intersection(*(set(r) for r in per_site.values())))
    report.update({prefix + k: float(np.nanmean([r[k] for r in per_site.values()])) for k in keys})
    report.update({f"{prefix}{site}/{k}": v for site, r in per_site.items() for k, v in r.items()})
  return report


def evaluate_local(exp: experiment.Experiment, server_state, client_states) -> dict[str, Any]:
  """:func:`evaluate`; in a multi-process run on this process's copy of the (replicated) states, so that no other
  process takes part (one process: the states stay on the device)."""
  if jax.process_count() > 1:  # replicated -> one local device, once (not per evaluation batch)
    server_state, client_states = jax.device_put(jax.device_get((server_state, client_states)),
                                                 jax.local_devices()[0])
  return evaluate(exp, server_state, client_states)


def choose_strategy(exp, server_state, client_states) -> tuple[str, dict]:
  cfg = exp.config.execution
  if jax.process_count() > 1:  # several processes share one mesh: only the sharded strategy spans it
    if cfg.strategy not in ("auto", "sharded"):
      raise config_lib.ConfigError(f"a run over {jax.process_count()} processes needs config.execution.strategy="
                                   f"'sharded' (or 'auto'); got {cfg.strategy!r}")
    return "sharded", {}
  if cfg.strategy != "auto":
    return cfg.strategy, {}
  make_runner = lambda strategy, plans: execution.RoundRunner(
      exp.algorithm, exp.batch_fns, plans, strategy=strategy, unroll=scan_unroll(exp.config),
      weighting=exp.config.aggregation.weighting)
  best, timings = auto.calibrate(make_runner, server_state, client_states, exp.data_for_round(0), exp.plans,
                                 selection_for(exp, None), tuple(cfg.candidates), cfg.calibration_steps,
                                 cfg.calibration_repeats, cfg.calibration_clients, exp.config.num_rounds,
                                 scan_unroll(exp.config), cfg.calibration_budget_s)
  for name, t in timings.items():
    if "skipped_after_s" in t:
      log.info("auto: %-10s not measured: the calibration had spent %.0f s (execution.calibration_budget_s=%g)",
               name, t["skipped_after_s"], cfg.calibration_budget_s)
      continue
    log.info("auto: %-10s %.3f s per shortened round (+%.1f s compile) -> est. %.0f s for the run", name,
             t["round_s"], t["compile_s"], t["run_estimate_s"])
  log.info("auto picked %s on backend %s", best, jax.default_backend())
  return best, timings


def scan_unroll(config: ml_collections.ConfigDict) -> int | bool:
  unroll = config.execution.scan_unroll
  return execution.default_unroll(jax.default_backend()) if unroll < 0 else (True if unroll == 0 else unroll)


def privacy_record(exp: experiment.Experiment, rounds: int) -> dict[str, Any]:
  """ε spent after ``rounds`` rounds at the configured δ, and the mechanism's parameters."""
  cfg = exp.config.privacy
  eps = privacy.epsilon(exp.dp, rounds, cfg.delta, cfg.accountant, exp.config.aggregation.clients_per_round)
  return {"epsilon": eps, "delta": cfg.delta, "noise_multiplier": exp.dp.noise_multiplier, "clip": exp.dp.clip,
          "sampling": exp.dp.sampling, "rate": exp.dp.rate, "accountant": cfg.accountant,
          "noise_source": NOISE_REPRODUCIBLE if cfg.get("reproducible_noise", False) else NOISE_SECURE}


def privacy_budget_exceeded(exp: experiment.Experiment, rounds: int) -> str | None:
  """A message if ``rounds`` rounds would spend more than ``privacy.target_epsilon``; None otherwise."""
  cfg = exp.config.privacy
  if exp.dp is None or cfg.target_epsilon <= 0:
    return None
  eps = privacy.epsilon(exp.dp, rounds, cfg.delta, cfg.accountant, exp.config.aggregation.clients_per_round)
  if eps <= cfg.target_epsilon:
    return None
  return (f"privacy budget: round {rounds} would bring epsilon to {eps:.3f} > privacy.target_epsilon="
          f"{cfg.target_epsilon} at delta={cfg.delta}")


def save_global_variables(workdir: str, variables) -> str:
  """Writes the final global model variables to ``workdir/global_variables.msgpack`` (atomically): the
  input of a later stage, e.g. fine-tuning from a pre-trained encoder (``model.init_encoder``)."""
  path = os.path.join(workdir, GLOBAL_VARIABLES_FILE)
  with open(path + ".tmp", "wb") as f:
    f.write(variables_bytes(variables))
  os.replace(path + ".tmp", path)
  return path


def variables_bytes(variables) -> bytes:
  return flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))


# -- best-validation model selection (eval.select_on) -----------------------------------------------------------------
def selection_of(config: ml_collections.ConfigDict) -> dict[str, str] | None:
  """The split, metric and direction (max | min) the best global model is selected by; None when off."""
  cfg = config.eval
  if not cfg.select_on:
    return None
  return {"split": cfg.select_on, "metric": cfg.select_metric or cfg.key_metric, "mode": cfg.select_mode}


def global_variables_local(exp: experiment.Experiment, server_state):
  """The global model's variables on the host (multi-process: this process's copy of the replicated state)."""
  if jax.process_count() > 1:
    server_state = jax.device_get(server_state)
  return jax.device_get(exp.algorithm.eval_variables(server_state, None))


def save_best(workdir: str, variables, record: dict) -> None:
  """``best_variables.msgpack`` (written as the final global variables) and ``best.json`` (``record`` and the
  variables' sha256), both through a temporary file and a rename. A crash between the two renames leaves
  ``best.json.tmp`` matching the new variables; :func:`load_best` takes it then."""
  data = variables_bytes(variables)
  record = {**record, "sha256": hashlib.sha256(data).hexdigest()}
  variables_path, record_path = os.path.join(workdir, BEST_VARIABLES_FILE), os.path.join(workdir, BEST_RECORD_FILE)
  with open(record_path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  with open(variables_path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(variables_path + ".tmp", variables_path)
  os.replace(record_path + ".tmp", record_path)


def load_best(workdir: str, selection: dict[str, str], like) -> dict | None:
  """The best model a resumed run had kept (its record and ``variables``, structured as ``like``); None if there
  is none or it was selected by another split, metric or direction (the selection then starts again, warned)."""
  variables_path = os.path.join(workdir, BEST_VARIABLES_FILE)
  if not os.path.exists(variables_path):
    return None
  with open(variables_path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  for path in (os.path.join(workdir, BEST_RECORD_FILE), os.path.join(workdir, BEST_RECORD_FILE + ".tmp")):
    try:
      with open(path) as f:
        record = json.load(f)
    except (OSError, ValueError):
      continue
    if record.get("sha256") == digest:
      break
  else:
    log.warning("%s has no matching %s: the best-model selection starts again", variables_path, BEST_RECORD_FILE)
    return None
  if record["selection"] != selection:
    log.warning("the best model kept in %s was selected by %s; this run selects by %s: the selection starts again",
                workdir, record["selection"], selection)
    return None
  return {**record, "variables": flax.serialization.from_bytes(like, data)}


def update_best(exp: experiment.Experiment, variables, round_num: int, best: dict | None, workdir: str
                ) -> tuple[dict | None, float]:
  """Scores the global ``variables`` after ``round_num`` rounds on ``eval.select_on`` and keeps (in memory and in
  the workdir) the better of them and ``best``; a tie keeps the earlier. Returns (best, this score)."""
  selection = selection_of(exp.config)
  report = report_of(exp, variables, exp.select_dataset)
  if selection["metric"] not in report:
    raise config_lib.ConfigError(f"config.eval.select_metric={selection['metric']!r} is not among this task's "
                                 f"metrics {sorted(report)}")
  score = float(report[selection["metric"]])
  better = best is None or (score > best["score"] if selection["mode"] == "max" else score < best["score"])
  if np.isfinite(score) and better:
    record = {"round": round_num, "score": score, "selection": selection}
    save_best(workdir, variables, record)
    best = {**record, "variables": variables}
  return best, score


# -- the run ----------------------------------------------------------------------------------------------------------
class _NoWriter:
  """The metrics writer of a process other than the first one of a multi-process run."""

  def write(self, record: dict) -> None:
    pass

  def close(self) -> None:
    pass


def _sync(name: str) -> None:
  """A barrier across the processes of a multi-process run (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


COMPILATION_CACHE_ENV = "FEDJAX_MED_COMPILATION_CACHE"  # overrides config.execution.compilation_cache (a path)


def use_compilation_cache(path: str, min_compile_seconds: float = 0.5) -> None:
  """Points XLA's persistent compilation cache at ``path`` ("" = leave JAX's setting alone): a later run of the
  same programs (another seed, a resumed run, a rerun) loads them instead of compiling them again. Programs that
  compiled in less than ``min_compile_seconds`` are not stored. The environment variable
  ``FEDJAX_MED_COMPILATION_CACHE`` replaces ``path`` when set (where the cache lives is the machine's business,
  not the run's: the test suite points it at an empty folder of its own)."""
  path = os.environ.get(COMPILATION_CACHE_ENV, path)
  if not path:
    return
  from jax.experimental.compilation_cache import compilation_cache

  path = os.path.abspath(os.path.expanduser(path))
  if jax.config.jax_compilation_cache_dir != path:
    compilation_cache.reset_cache()  # the cache is set up once per process, at the first compile
    compilation_cache.set_cache_dir(path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns the final summary.

  Multi-process (``engine.distributed.initialize`` called first, one process per host): every process runs this
  with the same config and data and the client axis is sharded over all processes' devices (strategy
  ``sharded``); process 0 alone writes the metrics, the results, the final model and the progress bar and runs the
  evaluations; the checkpoints are written and read by all through orbax, so ``workdir`` must be on a filesystem
  every host sees.
  """
  # Set up: validate, build, workdir.
  lead = jax.process_index() == 0
  config_lib.validate(config)
  use_compilation_cache(config.execution.compilation_cache, config.execution.compilation_cache_min_seconds)
  exp = experiment.build(config)
  if exp.meta.get("synthetic") and lead:
    log.warning("DATA IS SYNTHETIC: the embedded default dataset (%s), not real images", exp.meta["source"])
  if exp.dp is not None and config.privacy.get("reproducible_noise", False) and lead:
    log.warning("privacy.reproducible_noise=True: the DP noise is %s", NOISE_REPRODUCIBLE)
  if lead:
    prepare_workdir(config, workdir)
  _sync("fedjax_med:workdir")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep)

  # Initial or restored state.
  server_state, client_states = experiment.initial_state(exp)
  start_round = checkpointer.latest_round() or 0
  if start_round:
    state, record = checkpointer.restore(start_round, experiment.state_tree(server_state, client_states))
    server_state, client_states = state["server"], state["clients"]
    strategy, timings = record["strategy"], record.get("calibration", {})
    log.info("resumed %s at round %d (strategy %s)", workdir, start_round, strategy)
  else:
    strategy, timings = choose_strategy(exp, server_state, client_states)
  runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy=strategy,
                                 unroll=scan_unroll(config), weighting=config.aggregation.weighting)
  writer = MetricsWriter(workdir, start_round, tensorboard=config.log.tensorboard) if lead else _NoWriter()
  selection, best = selection_of(config) if lead else None, None
  if selection and start_round:
    best = load_best(workdir, selection, global_variables_local(exp, server_state))
  elif selection:  # a new run: what an attempt that never checkpointed kept is not this run's
    for name in (BEST_VARIABLES_FILE, BEST_RECORD_FILE):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  record = {"strategy": strategy, "calibration": timings, "backend": jax.default_backend(),
            "config": config_lib.fingerprint(config)}

  # Train loop.
  last_eval: dict[str, Any] = {}
  bar = tqdm.tqdm(total=config.num_rounds, initial=start_round, disable=not (config.log.progress and lead),
                  unit="round")
  start_time = time.perf_counter()
  rounds_done, privacy_stop = start_round, None
  try:
    for round_num in range(start_round, config.num_rounds):
      privacy_stop = privacy_budget_exceeded(exp, round_num + 1)
      if privacy_stop:
        log.warning("%s; stopping after round %d", privacy_stop, round_num)
        break
      tick = time.perf_counter()
      secret = mechanism_key(exp, server_state)  # lives for this round only
      server_state, client_states, report = runner(server_state, client_states, exp.data_for_round(round_num),
                                                   round_selection(exp, round_num, secret), secret_key=secret)
      del secret
      excluded = check_finite(report, round_num, config.aggregation.nonfinite)
      row = round_record(report, round_num, time.perf_counter() - tick, excluded)
      done = rounds_done = round_num + 1
      if exp.dp is not None:
        row["privacy"] = privacy_record(exp, done)
      if (done % config.eval.every == 0 or done == config.num_rounds) and lead:
        last_eval = row["eval"] = evaluate_local(exp, server_state, client_states)
        if selection:
          best, score = update_best(exp, global_variables_local(exp, server_state), done, best, workdir)
          row["select"] = {"split": selection["split"], selection["metric"]: score,
                           "best_round": best["round"] if best else None}
      writer.write(row)
      if done % config.checkpoint.every == 0 or done == config.num_rounds:
        checkpointer.save(done, experiment.state_tree(server_state, client_states), record)
      key = config.eval.key_metric
      bar.set_postfix(loss=f"{row['train'].get('loss', float('nan')):.4f}",
                      **({key: f"{last_eval[key]:.4f}"} if key in last_eval else {}))
      bar.update(1)
  finally:
    bar.close()
    writer.close()
    checkpointer.close()

  # Summary.
  stopped_unsaved = privacy_stop and rounds_done % config.eval.every != 0
  if lead and (not last_eval or stopped_unsaved):  # resumed a finished run, or the budget stopped it in between
    last_eval = evaluate_local(exp, server_state, client_states)
    if selection and (stopped_unsaved or best is None):
      best, _ = update_best(exp, global_variables_local(exp, server_state), rounds_done, best, workdir)
  if privacy_stop and rounds_done % config.checkpoint.every:
    final = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.keep)
    final.save(rounds_done, experiment.state_tree(server_state, client_states), record)
    final.close()
  summary = {"workdir": workdir, "rounds": rounds_done, "strategy": strategy, "calibration": timings,
             "train_seconds_this_process": time.perf_counter() - start_time, "eval": last_eval,
             "num_clients": len(exp.client_datasets), "synthetic_data": bool(exp.meta.get("synthetic")),
             "class_names": list(exp.meta.get("class_names", []))}
  if exp.dp is not None:
    summary["privacy"] = {**privacy_record(exp, rounds_done), "stopped_by_budget": bool(privacy_stop)}
  if jax.process_count() > 1:
    summary["num_processes"] = jax.process_count()
  if not lead:
    _sync("fedjax_med:done")
    return summary
  summary["skipped_clients"] = skipped_clients(workdir)
  if summary["skipped_clients"]:
    log.warning("%d of %d rounds left clients out of the aggregate for non-finite updates (%s); the run may have "
                "diverged: check the learning rates (results.json 'skipped_clients')",
                len(summary["skipped_clients"]), rounds_done, skipped_summary(summary["skipped_clients"]))
  if selection and best is None:
    log.warning("eval.select_on=%r: no finite %s score, so no best model is reported", selection["split"],
                selection["metric"])
  elif selection:  # the best model on the evaluation split, beside the last round's
    best_eval = report_of(exp, best["variables"], exp.eval_dataset)
    summary["eval"] = {**last_eval, **{f"best/{k}": v for k, v in best_eval.items()}, "best_round": best["round"]}
    summary["selection"] = {**selection, "round": best["round"], "score": best["score"]}
  with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
    json.dump(to_python(summary), f, indent=1)
  save_global_variables(workdir, exp.algorithm.eval_variables(server_state, None))
  print(summary_table(last_eval, f"Final evaluation on {config.data.name}/{config.data.eval_split} "
                      f"after {rounds_done} rounds ({strategy}):"))
  if selection and best is not None:
    print(summary_table(best_eval, f"The best model on {selection['split']} by {selection['metric']} (round "
                        f"{best['round']}, {best['score']:.4f}) on {config.data.name}/{config.data.eval_split}:"))
  _sync("fedjax_med:done")
  return summary
