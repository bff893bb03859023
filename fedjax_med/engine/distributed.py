"""Multi-process (multi-host) JAX for the ``sharded`` strategy: one process per host, every device in one mesh.

  FEDJAX_MED_COORDINATOR=10.0.0.1:1234 FEDJAX_MED_NUM_PROCESSES=2 FEDJAX_MED_PROCESS_ID=0 python ...   # host 0
  FEDJAX_MED_COORDINATOR=10.0.0.1:1234 FEDJAX_MED_NUM_PROCESSES=2 FEDJAX_MED_PROCESS_ID=1 python ...   # host 1

``initialize`` calls ``jax.distributed.initialize`` (before any JAX computation); on CPU it selects the gloo
collectives. Every process then builds the same experiment and calls the same ``RoundRunner(strategy=
'sharded')``: the client axis is split over all processes' devices and the aggregation is a cross-host
reduction; each process receives the replicated new global state. Worked example (every host runs it)::

  from fedjax_med.engine import distributed
  distributed.initialize(*distributed.settings_from_env())
  from fedjax_med import experiment, train
  from fedjax_med.engine import execution
  exp = experiment.build(config)                      # same config (and data) on every host
  server, clients = experiment.initial_state(exp)
  runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy="sharded", unroll=1,
                                 weighting=config.aggregation.weighting)
  for r in range(config.num_rounds):
    server, clients, report = runner(server, clients, exp.data, train.selection_for(exp, r))

tests/engine/test_sharding.py runs it with two processes of two CPU devices each on 127.0.0.1 and gets the
single-process result. Not yet: ``train.run`` (logs, checkpoints, evaluation) with several processes, and
per-host client data (every host loads every client's data here).
"""

from __future__ import annotations

import os

import jax

ENV = ("FEDJAX_MED_COORDINATOR", "FEDJAX_MED_NUM_PROCESSES", "FEDJAX_MED_PROCESS_ID")


def settings_from_env() -> tuple[str, int, int] | None:
  """(coordinator address, process count, process id) from the environment; None when not set."""
  values = [os.environ.get(k, "") for k in ENV]
  if not any(values):
    return None
  missing = [k for k, v in zip(ENV, values) if not v]
  if missing:
    raise ValueError(f"multi-process run: {missing} unset (all of {list(ENV)} are needed)")
  return values[0], int(values[1]), int(values[2])


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
  """``jax.distributed.initialize`` with CPU collectives over gloo; a no-op for one process."""
  if num_processes <= 1:
    return
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id)
