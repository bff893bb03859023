"""One contender in its own process, driven line by line by ``benchmarks.throughput``.

  python -m benchmarks.worker '{"workload": "fedirm", "contender": "jax:auto", "smoke": false, "clients": 0,
                                 "rounds": 5}'

Contenders: ``jax:STRATEGY`` (an execution strategy of fedjax_med, or ``auto``), ``torch`` (the official-style
PyTorch round), ``flower`` (Flower simulation of FedAvg with the PyTorch model), ``peak`` (this machine's fp32
matmul rate). After ``setup`` the worker prints one ``BENCH {...}`` line; then every ``round`` line on stdin runs
one round and answers ``BENCH {"round_s": ..., "rss_mb": ...}``; ``info`` answers with the contender's facts and
the peak memory, then the worker exits. Only ``BENCH`` lines are protocol: frameworks may print anything else.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import benchmarks  # noqa: F401  (the same XLA flags as main.py)

MARK = "BENCH "


def tree_rss_mb(pid: int | None = None) -> float:
  """Resident memory of a process and all its descendants (Flower's Ray workers are descendants), in MiB."""
  pid = pid or os.getpid()
  parents, rss = {}, {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue
    parents[int(entry)] = int(fields.get("PPid", "0").split()[0])
    rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
  def descends(p: int) -> bool:
    while p > 1:
      if p == pid:
        return True
      p = parents.get(p, 0)
    return False
  return sum(kb for p, kb in rss.items() if descends(p)) / 1024


class JaxRound:
  """fedjax_med's round of the workload's config with one execution strategy (``auto`` calibrates in setup)."""

  def __init__(self, config, strategy: str):
    self.config, self.strategy = config, strategy

  def setup(self) -> None:
    from fedjax_med import experiment, train
    from fedjax_med.engine import execution

    self.config.execution.strategy = self.strategy
    self.exp = exp = experiment.build(self.config)
    self.server, self.clients = experiment.initial_state(exp)
    self.data, self.selection = exp.data_for_round(0), train.selection_for(exp, None)
    start = time.perf_counter()
    self.picked, self.calibration = train.choose_strategy(exp, self.server, self.clients)
    self.calibration_s = time.perf_counter() - start
    self.runner = execution.RoundRunner(exp.algorithm, exp.batch_fns, exp.plans, strategy=self.picked,
                                        unroll=train.scan_unroll(self.config),
                                        weighting=self.config.aggregation.weighting)

  def run_round(self) -> None:
    import jax

    self.server, self.clients, _ = self.runner(self.server, self.clients, self.data, self.selection)
    jax.block_until_ready(self.server)

  def flops_per_round(self) -> float:
    """XLA's FLOP count of every selected client's round (the ``sequential`` program, lowered, not compiled)."""
    import jax.numpy as jnp

    total = 0.0
    for name, sel in self.selection.items():
      lowered = self.runner.client_program(name).lower(self.server, self.clients[name], self.data[name],
                                                       jnp.int32(0))
      cost = lowered.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      total += float(cost.get("flops", 0.0)) * len(sel)
    return total

  def info(self) -> dict[str, Any]:
    import jax

    from fedjax_med import models

    return {"framework": f"jax {jax.__version__} ({jax.default_backend()})", "strategy": self.picked,
            "auto_calibration": self.calibration, "calibration_s": self.calibration_s,
            "flops_per_round": self.flops_per_round(), "params": models.count_params(self.exp.variables["params"]),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


class MatmulPeak:
  """fp32 matmul rate of this machine: the best of XLA and PyTorch on 2048 x 2048 (a 'round' is one product)."""

  size = 2048

  def setup(self) -> None:
    import jax
    import jax.numpy as jnp

    self.x = jax.random.normal(jax.random.key(0), (self.size, self.size), jnp.float32)
    self.dot = jax.jit(lambda a: a @ a)
    self.dot(self.x).block_until_ready()
    self.times = {"jax": [], "torch": []}
    try:
      import torch
      self.t = torch.randn(self.size, self.size)
    except ImportError:
      self.t = None

  def run_round(self) -> None:
    start = time.perf_counter()
    self.dot(self.x).block_until_ready()
    self.times["jax"].append(time.perf_counter() - start)
    if self.t is not None:
      start = time.perf_counter()
      _ = self.t @ self.t
      self.times["torch"].append(time.perf_counter() - start)

  def info(self) -> dict[str, Any]:
    flops = 2 * self.size**3
    rates = {k: flops / min(v) / 1e9 for k, v in self.times.items() if v}
    return {"matmul_gflops": rates, "peak_gflops": max(rates.values())}


def make_contender(spec: dict[str, Any]):
  from benchmarks import workloads

  kind = spec["contender"]
  if kind == "peak":
    return MatmulPeak()
  workload = workloads.get(spec["workload"], spec.get("smoke", False), spec.get("clients", 0), spec["rounds"])
  if kind.startswith("jax:"):
    return JaxRound(workload.jax_config, kind.split(":", 1)[1])
  if kind == "torch":
    return workload.torch_round()
  if kind == "flower":
    if workload.torch_task is None:
      raise ValueError(f"workload {spec['workload']!r} has no FedAvg task for the Flower simulation")
    from benchmarks import flower_sim
    return flower_sim.FlowerSimulation(workload.torch_task(), num_rounds=spec["rounds"] + 1)
  raise ValueError(f"unknown contender {kind!r}; allowed: jax:STRATEGY, jax:auto, torch, flower, peak")


def say(message: dict[str, Any]) -> None:
  sys.stdout.write(MARK + json.dumps(message) + "\n")
  sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
  spec = json.loads((argv or sys.argv[1:])[0])
  if spec.get("torch_threads"):
    import torch
    torch.set_num_threads(int(spec["torch_threads"]))
  if spec.get("compilation_cache") and spec["contender"].startswith("jax:"):
    from fedjax_med import train
    train.use_compilation_cache(spec["compilation_cache"])
  contender = make_contender(spec)
  start = time.perf_counter()
  contender.setup()
  say({"setup_s": time.perf_counter() - start})
  peak_tree = 0.0
  for line in sys.stdin:
    command = line.strip()
    if command == "round":
      start = time.perf_counter()
      contender.run_round()
      elapsed = time.perf_counter() - start
      peak_tree = max(peak_tree, tree_rss_mb())
      say({"round_s": elapsed})
    elif command == "info":
      info = contender.info()
      own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      say({**info, "peak_rss_mb": max(own, peak_tree), "peak_rss_own_mb": own, "peak_rss_tree_mb": peak_tree})
      return 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
