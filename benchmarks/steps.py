"""Raw training-step efficiency: one jitted Adam step of each benchmark model against the same PyTorch step.

  python -m benchmarks.steps [--models densenet121/16 densenet121/32 unet/16 small_cnn/32] [--repeats 15]
                             [--out DIR] [--smoke]

The throughput harness times whole federated rounds; this answers the narrower question under them: how close to
this machine's fp32 matmul peak is ONE training step of each workload's model (forward, backward, Adam update, batch
statistics), and how does it compare with PyTorch eager on the same CPU? Models, input sizes and batches are the
throughput workloads' (``benchmarks/workloads.py``): DenseNet-121 at 64x64x3 (FedIRM; batch 16, and 32 as in its
labeled step's two views), the DRIVE U-Net on 64x64x1 patches, the small CNN of the scaling workload. Both sides
start from the same weights (``torch_models.load_flax_variables``) and train on the same random batch with a
cross-entropy loss. The steps alternate JAX / PyTorch ``--repeats`` times after a warm-up; medians are reported.
GFLOP/s is XLA's cost analysis of the jitted step divided by its median time (the same count serves PyTorch's
rate, which does the same arithmetic). Writes ``DIR/steps.json`` and ``DIR/steps.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, NamedTuple

import benchmarks  # noqa: F401  (the same XLA flags as main.py)
from benchmarks import throughput, workloads


class StepCase(NamedTuple):
  """One model's training step: the registry name and kwargs, input ``[batch, size, size, channels]``, classes;
  ``dense``: per-pixel labels (segmentation) instead of one label per image."""

  model: str
  kwargs: dict
  batch: int
  size: int
  channels: int
  num_classes: int
  dense: bool


def cases(smoke: bool) -> dict[str, StepCase]:
  """The workloads' models (``name/batch``); ``smoke``: the same families at toy sizes (the test suite's run)."""
  fedirm = workloads.get("fedirm", smoke).jax_config.model
  unet = workloads.get("drive_unet", smoke).jax_config.model
  cnn = workloads.get("scaling", smoke, clients=2).jax_config.model
  size = 16 if smoke else 64
  dense_net = lambda batch: StepCase(fedirm.name, fedirm.kwargs.to_dict(), batch, size, 3, 7, False)
  return {
      f"{fedirm.name}/{4 if smoke else 16}": dense_net(4 if smoke else 16),
      f"{fedirm.name}/{8 if smoke else 32}": dense_net(8 if smoke else 32),
      f"unet/{4 if smoke else 16}": StepCase("unet", dict(unet.kwargs), 4 if smoke else 16, size, 1, 2, True),
      f"small_cnn/{4 if smoke else 32}": StepCase("small_cnn", cnn.kwargs.to_dict(), 4 if smoke else 32,
                                                  16 if smoke else 32, 3, 4, False),
  }


def batch_arrays(case: StepCase, seed: int = 0):
  """The step's input ``[B, H, W, C]`` float32 and integer labels (``[B]`` or ``[B, H, W]``), as numpy."""
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.standard_normal((case.batch, case.size, case.size, case.channels)).astype(np.float32)
  label_shape = (case.batch, case.size, case.size) if case.dense else (case.batch,)
  return images, rng.integers(0, case.num_classes, label_shape).astype(np.int32)


class JaxStep:
  """A jitted Adam step of the fedjax_med model (train mode: dropout and batch statistics as in a round)."""

  def __init__(self, case: StepCase, learning_rate: float = 1e-4):
    import jax
    import optax

    from fedjax_med import models, tasks

    self.model = model = models.get_model(case.model, case.num_classes, **case.kwargs)
    variables = models.init_variables(model, jax.random.key(0), (case.size, case.size, case.channels))
    self.variables = variables
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(learning_rate)

    def loss(params, state, images, labels, key):
      out, state = tasks.apply_model(model, params, state, images, key, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean(), state

    def step(params, state, opt_state, images, labels, key):
      (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, state, images, labels, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), state, opt_state, value

    images, labels = batch_arrays(case)
    self.inputs = (jax.numpy.asarray(images), jax.numpy.asarray(labels))
    self.carry = (params, state, tx.init(params))
    self.key = jax.random.key(1)
    self.step = jax.jit(step)
    start = time.perf_counter()
    compiled = self.step.lower(*self.carry, *self.inputs, self.key).compile()
    self.compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    self.flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))

  def run(self) -> float:
    import jax

    start = time.perf_counter()
    params, state, opt_state, value = self.step(*self.carry, *self.inputs, self.key)
    jax.block_until_ready(value)
    self.carry = (params, state, opt_state)
    return time.perf_counter() - start


class TorchStep:
  """The same step in PyTorch eager: the mirror model (``torch_models``) with the JAX side's initial weights."""

  def __init__(self, case: StepCase, variables, learning_rate: float = 1e-4):
    import torch

    from benchmarks import torch_models

    self.model = workloads.torch_model(case.model, case.kwargs, case.num_classes, case.channels)()
    torch_models.load_flax_variables(self.model, variables)
    self.model.train()
    self.opt = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
    images, labels = batch_arrays(case)
    self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    self.labels = torch.from_numpy(labels).long()

  def run(self) -> float:
    import torch

    start = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    out = self.model(self.images)
    logits = out[1] if isinstance(out, tuple) else out
    torch.nn.functional.cross_entropy(logits, self.labels).backward()
    self.opt.step()
    return time.perf_counter() - start


def measure(case: StepCase, repeats: int, with_torch: bool) -> dict[str, Any]:
  """Median seconds per step of each side (alternating, after one warm-up call each), XLA's FLOPs and compile."""
  jax_step = JaxStep(case)
  sides = {"jax": jax_step}
  if with_torch:
    sides["torch"] = TorchStep(case, jax_step.variables)
  for side in sides.values():
    side.run()
  times = {name: [] for name in sides}
  for _ in range(repeats):
    for name, side in sides.items():
      times[name].append(side.run())
  row = {"case": case._asdict(), "flops_per_step": jax_step.flops, "compile_s": jax_step.compile_s,
         "times_s": times, "s_per_step": {name: statistics.median(t) for name, t in times.items()}}
  return row


def summarise(row: dict[str, Any], peak: float) -> dict[str, Any]:
  rates = {name: row["flops_per_step"] / s / 1e9 for name, s in row["s_per_step"].items()}
  out = {**row, "gflops": rates, "fraction_of_peak": {name: r / peak for name, r in rates.items()}}
  if "torch" in row["s_per_step"]:
    out["jax_speedup_over_torch"] = row["s_per_step"]["torch"] / row["s_per_step"]["jax"]
  return out


def markdown(result: dict[str, Any]) -> str:
  lines = [f"#### steps: one training step (Adam, train mode), {result['repeats']} alternating calls, medians; "
           f"machine: {result['machine']}; fp32 matmul peak {result['peak_gflops']:.0f} GFLOP/s.", "",
           "| model / batch | input | GFLOP per step | JAX ms | PyTorch ms | JAX / PyTorch speed | JAX % of peak | "
           "PyTorch % of peak | JAX compile s |", "|---|---|---|---|---|---|---|---|---|"]
  for name, row in result["cases"].items():
    case, ms = row["case"], {k: v * 1e3 for k, v in row["s_per_step"].items()}
    torch_ms = f"{ms['torch']:.1f}" if "torch" in ms else ""
    speed = f"{row['jax_speedup_over_torch']:.2f}x" if "jax_speedup_over_torch" in row else ""
    torch_peak = f"{row['fraction_of_peak']['torch']:.0%}" if "torch" in ms else ""
    lines.append(f"| {name} | {case['size']}x{case['size']}x{case['channels']} | {row['flops_per_step'] / 1e9:.2f} | "
                 f"{ms['jax']:.1f} | {torch_ms} | {speed} | {row['fraction_of_peak']['jax']:.0%} | {torch_peak} | "
                 f"{row['compile_s']:.1f} |")
  return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=None, help="cases as name/batch (default: all of them)")
  parser.add_argument("--repeats", type=int, default=15, help="timed calls per side after one warm-up")
  parser.add_argument("--smoke", action="store_true", help="toy sizes (the test suite's run)")
  parser.add_argument("--no-torch", action="store_true", help="JAX only (no `bench` extra needed)")
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args(argv)
  available = cases(args.smoke)
  chosen = args.models or list(available)
  unknown = sorted(set(chosen) - set(available))
  if unknown:
    parser.error(f"unknown cases {unknown}; available: {sorted(available)}")
  print("measuring the fp32 matmul peak ...", flush=True)
  peak = throughput.measure_peak(5, timeout_s=600.0)
  result = {"machine": throughput.machine(), "peak": peak, "peak_gflops": peak["peak_gflops"],
            "repeats": args.repeats, "smoke": args.smoke,
            "command": "python -m benchmarks.steps " + " ".join(argv if argv is not None else sys.argv[1:]),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cases": {}}
  for name in chosen:
    print(f"{name} ...", flush=True)
    row = measure(available[name], args.repeats, not args.no_torch)
    result["cases"][name] = summarise(row, peak["peak_gflops"])
  throughput.write_report(result, markdown(result), args.out, "steps" + ("_smoke" if args.smoke else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
