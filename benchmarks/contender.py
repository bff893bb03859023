"""What the throughput harness times: a contender builds once, then runs whole federated rounds on request.

Each contender lives in its own worker process (``benchmarks.worker``), so that its peak resident memory is its
own and frameworks never share a process; the harness alternates the workers round by round so that machine
noise hits every contender alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol


class Contender(Protocol):
  """One way of running a workload's federated round.

  ``setup`` builds models, optimizers and data (not timed as a round); ``run_round`` runs one whole round
  (every client's local steps and the aggregation) and returns once its results are computed (for JAX: blocked
  on); the first call includes compilation / process start-up and is reported apart. ``info`` returns extra
  facts for the report (e.g. XLA's FLOP count per round, the strategy ``auto`` picked) after the rounds.
  """

  def setup(self) -> None: ...

  def run_round(self) -> None: ...

  def info(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class TorchFedAvgTask:
  """A plain FedAvg round in PyTorch, as the PyTorch-based contenders (reference loop, Flower) run it.

  ``make_model()`` builds the workload's model (the same architecture as the JAX one, ``benchmarks.torch_models``);
  ``client_batches(k)`` gives client ``k``'s ``local_steps`` batches ``[(x NCHW float32, y), ...]`` (made once,
  kept in memory: no data loading is timed for anyone); ``loss(model, x, y)`` is the scalar training loss;
  ``optimizer`` is ``"adam"`` or ``"sgd"`` (a fresh optimizer per client per round unless a contender says
  otherwise); FedAvg weights clients equally (equal client sizes).
  """

  make_model: Callable[[], Any]
  client_batches: Callable[[int], list[tuple[Any, Any]]]
  loss: Callable[[Any, Any, Any], Any]
  num_clients: int
  optimizer: str = "adam"
  learning_rate: float = 1e-3
