"""The raw-step benchmark on toy sizes: it runs both sides from the same weights and reports completely."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import steps  # noqa: E402


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path):
  assert steps.main(["--smoke", "--repeats", "2", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "steps_smoke.json").read_text())
  assert result["peak_gflops"] > 0 and result["repeats"] == 2
  assert set(result["cases"]) == set(steps.cases(smoke=True))
  for row in result["cases"].values():
    assert row["flops_per_step"] > 0 and row["compile_s"] > 0
    assert {side: len(t) for side, t in row["times_s"].items()} == {"jax": 2, "torch": 2}
    assert 0 < row["fraction_of_peak"]["jax"] and row["jax_speedup_over_torch"] > 0
  table = (tmp_path / "steps_smoke.md").read_text()
  assert all(f"| {name} |" in table for name in result["cases"])


def test_both_sides_compute_the_same_first_loss():
  """Same weights, same batch: the first step's loss agrees (dropout off), so both time the same computation."""
  case = steps.cases(smoke=True)["small_cnn/4"]
  jax_step = steps.JaxStep(case)
  torch_step = steps.TorchStep(case, jax_step.variables)
  _, _, _, jax_loss = jax_step.step(*jax_step.carry, *jax_step.inputs, jax_step.key)
  out = torch_step.model(torch_step.images)
  torch_loss = torch.nn.functional.cross_entropy(out[1] if isinstance(out, tuple) else out, torch_step.labels)
  np.testing.assert_allclose(float(jax_loss), float(torch_loss.detach()), rtol=1e-4)
