"""Multi-process (multi-host) JAX for the ``sharded`` strategy: one process per host, every device in one mesh.

  FEDJAX_MED_COORDINATOR=10.0.0.1:1234 FEDJAX_MED_NUM_PROCESSES=2 FEDJAX_MED_PROCESS_ID=0 python ...   # host 0
  FEDJAX_MED_COORDINATOR=10.0.0.1:1234 FEDJAX_MED_NUM_PROCESSES=2 FEDJAX_MED_PROCESS_ID=1 python ...   # host 1

``initialize`` calls ``jax.distributed.initialize`` (before any JAX computation); on CPU it selects the gloo
collectives. ``python main.py`` does it when the three variables are set; every process then runs ``train.run``
with the same config and data: the client axis is split over all processes' devices (strategy ``sharded``) and
the aggregation is a cross-host reduction; each process receives the replicated new global state. Process 0
alone writes the metrics, results and final model and evaluates; all processes write and read the orbax
checkpoints, so the workdir must be on a filesystem every host sees (NFS, a bucket mount). Worked example, two
hosts with 4 GPUs each::

  # host 0 (10.0.0.1)                                  # host 1
  export FEDJAX_MED_COORDINATOR=10.0.0.1:1234          export FEDJAX_MED_COORDINATOR=10.0.0.1:1234
  export FEDJAX_MED_NUM_PROCESSES=2                    export FEDJAX_MED_NUM_PROCESSES=2
  export FEDJAX_MED_PROCESS_ID=0                       export FEDJAX_MED_PROCESS_ID=1
  python main.py --config configs/fedirm.py --workdir /shared/runs/fedirm   # the same command on both

The same from Python (a notebook per host)::

  from fedjax_med.engine import distributed
  distributed.initialize(*distributed.settings_from_env())
  from fedjax_med import train
  train.run(config, "/shared/runs/fedirm")

tests/engine/test_sharding.py runs ``main.py`` as two processes of two CPU devices each on 127.0.0.1 and gets the
single-process result (and the engine alone likewise). Not yet: per-host client data (every host loads every
client's data here).
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
