"""The throughput harness end to end on tiny sizes (speed is never asserted), and its workloads' two sides."""

import json
import os
import subprocess
import sys

import jax
import pytest

torch = pytest.importorskip("torch")

from benchmarks import workloads  # noqa: E402
from fedjax_med import models  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path):
  # jax:sequential and torch only: the Flower contender (Ray's start-up, ~80 s of this test's 110 s on a quiet
  # machine) is tests/benchmarks/test_flower_sim.py's, and jax:auto's measured pick is tests/test_train.py's
  contenders = ["jax:sequential", "torch"]
  command = [sys.executable, "-m", "benchmarks.throughput", "--workload", "scaling", "--smoke", "--clients", "2",
             "--rounds", "2", "--out", str(tmp_path), "--timeout", "300", "--contenders", *contenders]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "scaling_smoke.json").read_text())
  assert result["peak_gflops"] > 0 and result["protocol"]["clients"] == 2
  assert result["compilation_cache"] == {"dir_given": False, "entries_at_start": 0}
  rows = result["runs"]["2"]
  assert list(rows) == contenders
  for row in rows.values():
    assert len(row["rounds_s"]) == 2 and all(t > 0 for t in row["rounds_s"])
    assert row["s_per_round"] > 0 and row["images_per_s"] > 0 and row["first_round_s"] > 0
    assert row["peak_rss_mb"] > 50  # a Python process with a framework loaded
  jax_row = rows["jax:sequential"]
  assert jax_row["info"]["flops_per_round"] > 0 and 0 < jax_row["fraction_of_peak"]
  assert set(jax_row["speedup"]) == {"torch"}
  assert jax_row["info"]["strategy"] == "sequential"
  table = (tmp_path / "scaling_smoke.md").read_text()
  assert all(f"| {name}" in table for name in contenders)


@pytest.mark.parametrize("name", ["fedirm", "drive_unet", "fcl", "scaling"])
def test_both_sides_train_the_same_model(name):
  """The PyTorch round's model has the JAX model's parameter count, and one PyTorch round runs and changes it."""
  workload = workloads.get(name, smoke=True, clients=2, rounds=1)
  config = workload.jax_config
  model = models.get_model(config.model.name, workload.num_classes, **config.model.kwargs)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), workload.input_shape))
  reference = workload.torch_round()
  reference.setup()
  torch_params = sum(p.numel() for p in reference.global_model.parameters())
  assert torch_params == models.count_params(shapes["params"])
  before = [p.detach().clone() for p in reference.global_model.parameters()]
  reference.run_round()
  after = list(reference.global_model.parameters())
  assert any(not torch.equal(a, b) for a, b in zip(after, before))
  assert all(torch.isfinite(p).all() for p in after)
  assert reference.info()["params"] == torch_params


def test_cache_state_counts_the_entries_a_warm_cache_starts_with(tmp_path):
  from benchmarks import throughput

  assert throughput.cache_state(str(tmp_path / "absent")) == {"dir_given": True, "entries_at_start": 0}
  for name in ("a", "b"):
    (tmp_path / name).write_text("x")
  state = throughput.cache_state(str(tmp_path))
  assert state == {"dir_given": True, "entries_at_start": 2}
  assert "(warm)" in throughput.cache_note({"compilation_cache": state})
  assert "compile cold" in throughput.cache_note({"compilation_cache": throughput.cache_state("")})
