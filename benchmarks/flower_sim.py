"""Flower 1.42 simulation of FedAvg on a ``TorchFedAvgTask``, run one round per ``run_round()`` call.

The throughput harness's ``flower`` contender: what a user of Flower would run for the workload's FedAvg round, i.e.
``flwr.simulation.run_simulation`` (Ray backend, one virtual SuperNode per client) of a ``ServerApp`` driving the
Message-API ``FedAvg`` strategy over every client each round (no federated evaluation), and a ``ClientApp`` written
as Flower's PyTorch tutorial writes it (build the model, load the global arrays, fresh optimizer, one step per
batch, reply with the arrays and ``num-examples``).

How the rounds are stepped: ``run_simulation`` blocks until all rounds are done, so it runs in a background thread,
and the strategy's server-side evaluation callback (``evaluate_fn`` of ``FedAvg.start``, called before round 1 and
after every round) is a gate: it hands the current global arrays to the harness's thread, then waits until
``run_round()`` releases the next round. Before starting the strategy the ServerApp sends every client a query and
waits for the answers (Flower starts the ServerApp before Ray), so ``setup()`` returns with Ray, its actors, the
ClientApp and the clients' data ready, the server waiting at the gate before round 1; ``run_round()`` releases one
round and returns when its aggregated arrays reach the gate. A round's time includes Flower's polling: the
simulation picks messages up every 0.1 s and the server pulls replies every 0.1 s.

The global model after the latest round is ``global_state()`` (a PyTorch ``state_dict``), e.g. to check that the
rounds computed FedAvg.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid
from typing import Any

import torch

from benchmarks.contender import TorchFedAvgTask
from benchmarks.torch_reference import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"
POLL_S = 0.5  # how often run_round() checks that the simulation is alive while it waits

# Each Ray actor process makes every client's batches once and keeps them, as Flower's tutorials keep their whole
# dataset in a module-level cache in each process: the task promises data made once and kept in memory, so no round
# pays for making it. Keyed by the simulation's token so that two simulations in one process never share data.
_CLIENT_DATA: dict[str, list[list[tuple[Any, Any]]]] = {}


def client_data(token: str, task: TorchFedAvgTask, partition_id: int) -> list[tuple[Any, Any]]:
  """Client ``partition_id``'s batches; the first call in a process makes (and keeps) every client's."""
  if token not in _CLIENT_DATA:
    _CLIENT_DATA[token] = [task.client_batches(k) for k in range(task.num_clients)]
  return _CLIENT_DATA[token][partition_id]


def keep_local_and_quiet() -> None:
  """Sets the environment so that Ray and Flower stay on this machine and say little: no usage statistics or
  telemetry (both would try the network), and the repository importable in Ray's worker processes."""
  os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
  os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
  # On Linux Ray replaces a node address of 127.0.0.1 by the address other machines reach it at (found by "connecting"
  # to a public DNS server) and its gRPC servers then listen on every interface; as on a laptop (macOS, Windows),
  # this keeps the node, and every server of it, on the loopback interface.
  os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
  # Both libraries read these variables when they are imported: if one was imported before, set its copy too.
  if (telemetry := sys.modules.get("flwr.supercore.telemetry")) is not None:
    telemetry.FLWR_TELEMETRY_ENABLED = "0"
  if (ray_constants := sys.modules.get("ray._private.ray_constants")) is not None:
    ray_constants.ENABLE_RAY_CLUSTER = False
  # Ray's actors unpickle the ClientApp, which refers to this package by name; Flower appends $PYTHONPATH to the
  # actors' path, and an absolute entry does not depend on the actors' working directory.
  paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  if REPO not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO, *paths])
  import flwr.supercore.logger  # noqa: F401  (sets Flower's logger to DEBUG when first imported: lower it after)

  logging.getLogger("flwr").setLevel(logging.WARNING)


class SimulationStopped(RuntimeError):
  """Raised inside the server to end the simulation before its last round (``close()``, or the process exits)."""


class FlowerSimulation:
  """A Flower 1.42 simulation of ``task``'s FedAvg that runs one round per ``run_round()`` (a ``Contender``).

  ``num_rounds`` is the number of ``run_round()`` calls the harness will make; the simulation is started for
  exactly that many rounds and finishes after the last. ``cpus_per_client`` is Flower's ``client_resources``
  ``num_cpus`` (Ray runs ``CPUs // cpus_per_client`` clients at once). ``timeout_s`` bounds the wait for Ray's
  start-up and for any one round (the strategy's reply timeout too): past it, or if the simulation crashes or a
  client fails, ``setup()`` / ``run_round()`` raise instead of hanging.
  """

  def __init__(self, task: TorchFedAvgTask, num_rounds: int, cpus_per_client: float = 1.0,
               timeout_s: float = 600.0):
    if num_rounds < 1:
      raise ValueError(f"num_rounds must be at least 1, got {num_rounds}")
    self.task, self.num_rounds = task, num_rounds
    self.cpus_per_client, self.timeout_s = cpus_per_client, timeout_s
    self._release: queue.Queue[bool] = queue.Queue()  # harness -> server: True runs the next round, False stops
    self._results: queue.Queue[tuple[int, Any]] = queue.Queue()  # server -> harness: (round, arrays or exception)
    self._thread: threading.Thread | None = None
    self._error: BaseException | None = None  # what ended the simulation thread, if it did not end cleanly
    self._arrays: Any = None  # the latest global ArrayRecord
    self._rounds_done = 0
    self._facts: dict[str, Any] = {}
    self.setup_s: float | None = None
    self.shutdown_s: float | None = None

  # -- the apps --------------------------------------------------------------------------------------------------------
  def _client_app(self) -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    task, token = self.task, uuid.uuid4().hex
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
      partition_id = int(context.node_config["partition-id"])
      model = task.make_model()
      model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
      model.train()
      optimizer = make_optimizer(task.optimizer, model.parameters(), task.learning_rate)
      batches = client_data(token, task, partition_id)
      examples, running_loss = 0, 0.0
      for x, y in batches:
        loss = task.loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        examples += len(x)
        running_loss += loss.item()
      metrics = MetricRecord({"train_loss": running_loss / max(len(batches), 1), "num-examples": examples,
                              "torch-threads": torch.get_num_threads()})
      return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                     reply_to=msg)

    @app.query()
    def warm_up(msg: Message, context: Context) -> Message:
      client_data(token, task, int(context.node_config["partition-id"]))
      return Message(content=RecordDict(), reply_to=msg)

    return app

  def _server_app(self) -> Any:
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    owner, clients = self, self.task.num_clients

    class CheckedFedAvg(FedAvg):
      """Flower's FedAvg; a round that lost a client raises (FedAvg itself would average the others silently)."""

      def aggregate_train(self, server_round, replies):
        replies = owner._check_replies(replies, server_round, f"Flower round {server_round}")
        threads = {int(m.content["metrics"]["torch-threads"]) for m in replies}
        owner._facts["torch_threads_per_client"] = sorted(threads)
        return super().aggregate_train(server_round, replies)

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
      self._warm_up(grid)
      torch.manual_seed(0)
      initial = ArrayRecord(self.task.make_model().state_dict())
      strategy = CheckedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                               min_available_nodes=clients)
      strategy.start(grid=grid, initial_arrays=initial, num_rounds=self.num_rounds, timeout=self.timeout_s,
                     evaluate_fn=self._gate)

    return app

  def _warm_up(self, grid: Any) -> None:
    """Sends every client a query and waits for all answers, so that round 1 finds Ray started, its actors up, the
    ClientApp loaded and the data made. The ServerApp thread starts before Flower initialises Ray: without this the
    gate before round 1 would open before Ray is up, and round 1 would pay for Ray's start-up."""
    from flwr.app import Message, MessageType, RecordDict

    clients, deadline = self.task.num_clients, time.monotonic() + self.timeout_s
    while len(nodes := list(grid.get_node_ids())) < clients:  # the SuperNodes register once the simulation starts
      if time.monotonic() > deadline:
        raise self._fail(0, TimeoutError(f"{len(nodes)} of {clients} Flower SuperNodes registered within "
                                         f"{self.timeout_s:.0f} s"))
      time.sleep(0.05)
    replies = grid.send_and_receive(
        [Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes],
        timeout=self.timeout_s)
    self._check_replies(replies, 0, "Flower start-up")

  def _check_replies(self, replies: Any, server_round: int, what: str) -> list[Any]:
    """``replies`` as a list if every client answered without an error, else raises (and tells the harness)."""
    replies, clients = list(replies), self.task.num_clients
    failed = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
    if failed or len(replies) != clients:
      raise self._fail(server_round, RuntimeError(
          f"{what}: {len(replies) - len(failed)} of {clients} clients answered within {self.timeout_s:.0f} s"
          + (f"; errors: {'; '.join(failed)}" if failed else "")))
    return replies

  # -- the gate (server thread) ----------------------------------------------------------------------------------------
  def _fail(self, server_round: int, error: BaseException) -> BaseException:
    """Hands ``error`` to the harness's thread (so that it raises at once, not after Ray's shutdown); returns it."""
    self._results.put((server_round, error))
    return error

  def _gate(self, server_round: int, arrays: Any) -> None:
    """The strategy's ``evaluate_fn``: publishes the global arrays after ``server_round``, then waits for the next
    ``run_round()`` unless that was the last round."""
    if server_round == 0:  # Ray and the actors are up: facts of the cluster for info()
      import ray

      cpus = ray.cluster_resources().get("CPU", 0.0)
      self._facts.update(ray_cpus=cpus, parallel_clients=int(cpus // self.cpus_per_client))
    self._results.put((server_round, arrays))
    if server_round >= self.num_rounds:
      return None
    # No deadline here: the harness runs the other contenders' rounds in between, for as long as they take. The
    # wait ends with run_round(), close(), or the process's exit (see setup()).
    if not self._release.get():
      raise SimulationStopped(f"stopped after round {server_round} of {self.num_rounds}")
    return None

  # -- the simulation (background thread) ------------------------------------------------------------------------------
  def _simulate(self, server_app: Any, client_app: Any) -> None:
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": {"num_cpus": self.cpus_per_client, "num_gpus": 0},
        # Ray on the loopback interface only, without its dashboard; quiet.
        "init_args": {"include_dashboard": False, "_node_ip_address": LOOPBACK, "logging_level": "WARNING"},
    }
    try:
      run_simulation(server_app=server_app, client_app=client_app, num_supernodes=self.task.num_clients,
                     backend_name="ray", backend_config=backend_config)
    except BaseException as error:  # kept for the harness's thread, which raises it
      self._error = error

  def _next_result(self, what: str) -> Any:
    """The next (round, arrays) from the server, or raises: the simulation failed, ended early, or took too long."""
    deadline = time.monotonic() + self.timeout_s
    while True:
      try:
        server_round, payload = self._results.get(timeout=POLL_S)
      except queue.Empty:
        if not self._thread.is_alive():
          # The thread may have put its last words just before ending.
          if not self._results.empty():
            continue
          raise RuntimeError(f"the Flower simulation ended before {what}: {self._error!r}") from self._error
        if time.monotonic() > deadline:
          self.close(wait=False)
          raise TimeoutError(f"the Flower simulation did not finish {what} within {self.timeout_s:.0f} s") from None
        continue
      if isinstance(payload, BaseException):
        raise RuntimeError(f"the Flower simulation failed in {what}: {payload}") from payload
      return server_round, payload

  # -- the Contender protocol ------------------------------------------------------------------------------------------
  def setup(self) -> None:
    """Starts the simulation (Ray, the actors, the ServerApp) and returns when it waits before round 1."""
    start = time.perf_counter()
    keep_local_and_quiet()
    server_app, client_app = self._server_app(), self._client_app()
    # Not a daemon: a process that leaves early (setup() timed out while Ray was starting, an error in the harness)
    # waits at exit for Flower to shut Ray down, instead of killing Ray's start-up half-way and orphaning its agents.
    self._thread = threading.Thread(target=self._simulate, args=(server_app, client_app), name="flower-simulation")
    # That wait must end: at exit Python joins the thread pool Flower runs its clients in before the main thread
    # counts as ended, and that pool runs until the server ends. Threading's exit hooks run before those joins (an
    # ``atexit`` hook would run after them), so stop the server there; after the last round this does nothing.
    threading._register_atexit(self.close, False)
    self._thread.start()
    _, self._arrays = self._next_result("starting (Ray start-up and the initial model)")
    self.setup_s = time.perf_counter() - start

  def run_round(self) -> None:
    """Runs one Flower round (every client's training and the FedAvg aggregation) and returns when it is done."""
    if self._thread is None:
      raise RuntimeError("call setup() first")
    if self._rounds_done >= self.num_rounds:
      raise RuntimeError(f"the simulation was started for {self.num_rounds} rounds, all of them ran")
    round_number = self._rounds_done + 1
    self._release.put(True)
    server_round, self._arrays = self._next_result(f"round {round_number}")
    if server_round != round_number:
      raise RuntimeError(f"expected the global model after round {round_number}, the server gave round {server_round}")
    self._rounds_done = round_number

  def global_state(self) -> dict[str, torch.Tensor]:
    """The global model after the latest round (before round 1: the initial model) as a PyTorch ``state_dict``.

    These are Flower's aggregated arrays as they are: an integer buffer (BatchNorm's ``num_batches_tracked``) comes
    back as float64, since Flower averages it; ``load_state_dict`` casts it back."""
    if self._arrays is None:
      raise RuntimeError("call setup() first")
    return {k: v.clone() for k, v in self._arrays.to_torch_state_dict().items()}

  def close(self, wait: bool = True) -> None:
    """Ends the simulation before its last round (a no-op after it); with ``wait``, until Ray has shut down."""
    self._release.put(False)
    if wait and self._thread is not None:
      self._thread.join(self.timeout_s)

  def info(self) -> dict[str, Any]:
    """Facts for the report; after the last round, first waits for the simulation to shut down (``shutdown_s``)."""
    import flwr
    import ray

    if self._thread is not None and self._rounds_done == self.num_rounds and self.shutdown_s is None:
      start = time.perf_counter()
      self._thread.join(self.timeout_s)
      self.shutdown_s = time.perf_counter() - start
    facts = {"framework": f"flwr {flwr.__version__}", "ray": ray.__version__, "torch": torch.__version__,
             "cpus_per_client": self.cpus_per_client, "setup_s": self.setup_s, "shutdown_s": self.shutdown_s,
             "rounds": self._rounds_done, "clients": self.task.num_clients, "strategy": "FedAvg (Message API)",
             **self._facts}
    if self._error is not None:
      facts["simulation_error"] = repr(self._error)
    return facts
