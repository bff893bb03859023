"""benchmarks.flower_sim: the Flower simulation steps one FedAvg round per ``run_round()``, and each round's global
model is a plain PyTorch FedAvg round's (so the contender really runs FedAvg, and never runs ahead of the harness).

Ray runs in a subprocess (it starts processes and threads that pytest's process should not keep); the task is this
module's functions, which the subprocess and Ray's actors import from here.
"""

import copy
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flwr")
pytest.importorskip("ray")

from benchmarks.contender import TorchFedAvgTask  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CLIENTS, BATCHES, ROUNDS = 3, 2, 3
MARK = "RESULT "

SCRIPT = f"""
import json, sys, time
from benchmarks.flower_sim import FlowerSimulation
import test_flower_sim as t

sim = FlowerSimulation(t.make_task(), num_rounds={ROUNDS}, timeout_s=300.0)
sim.setup()
states, rounds_s = [t.to_lists(sim.global_state())], []
for _ in range({ROUNDS}):
  start = time.perf_counter()
  sim.run_round()
  rounds_s.append(time.perf_counter() - start)
  states.append(t.to_lists(sim.global_state()))
print({MARK!r} + json.dumps(dict(states=states, rounds_s=rounds_s, info=sim.info())), flush=True)
"""


def make_model() -> torch.nn.Module:
  return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def client_batches(k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
  gen = torch.Generator().manual_seed(100 + k)
  return [(torch.randn(5, 8, generator=gen), torch.randint(0, 3, (5,), generator=gen)) for _ in range(BATCHES)]


def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
  return torch.nn.functional.cross_entropy(model(x), y)


def make_task() -> TorchFedAvgTask:
  return TorchFedAvgTask(make_model, client_batches, loss, CLIENTS, "adam", 0.05)


def to_lists(state: dict[str, torch.Tensor]) -> dict[str, list]:
  return {k: v.tolist() for k, v in state.items()}


def plain_fedavg(task: TorchFedAvgTask, rounds: int) -> list[dict[str, torch.Tensor]]:
  """The global model before round 1 and after each round of a plain PyTorch FedAvg loop."""
  torch.manual_seed(0)
  global_model = task.make_model()
  states = [copy.deepcopy(global_model.state_dict())]
  for _ in range(rounds):
    client_states = []
    for k in range(task.num_clients):
      model = copy.deepcopy(global_model)
      model.train()
      optimizer = torch.optim.Adam(model.parameters(), lr=task.learning_rate)
      for x, y in task.client_batches(k):
        value = task.loss(model, x, y)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
      client_states.append(model.state_dict())
    global_model.load_state_dict({key: torch.stack([s[key] for s in client_states]).mean(0)
                                  for key in client_states[0]})
    states.append(copy.deepcopy(global_model.state_dict()))
  return states


@pytest.mark.slow
def test_each_round_is_one_fedavg_round():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (HERE, REPO, os.environ.get("PYTHONPATH")) if p))
  done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)  # bounded, not timed: 235 s on a loaded machine, ~80 s on a quiet one
  assert done.returncode == 0, done.stderr[-4000:]
  [line] = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
  result = json.loads(line[len(MARK):])

  info = result["info"]
  assert info["framework"].startswith("flwr ") and info["cpus_per_client"] == 1.0
  assert info["setup_s"] > 0 and info["shutdown_s"] is not None and "simulation_error" not in info
  assert info["rounds"] == ROUNDS and len(result["rounds_s"]) == ROUNDS
  assert info["torch_threads_per_client"] == [1]  # Ray gives each 1-CPU actor one thread

  expected = plain_fedavg(make_task(), ROUNDS)
  assert len(result["states"]) == ROUNDS + 1
  for r, (got, want) in enumerate(zip(result["states"], expected)):
    assert set(got) == set(want)
    for key, value in want.items():
      diff = (torch.tensor(got[key]) - value).abs().max().item()
      assert diff < 1e-5, f"after round {r}: {key} differs by {diff:.2e}"
  moved = [(expected[r + 1]["0.weight"] - expected[r]["0.weight"]).abs().max().item() for r in range(ROUNDS)]
  assert min(moved) > 1e-3  # every round changed the model: the comparison above is not between two no-ops
