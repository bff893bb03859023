"""What each FedICRA loss term costs in a local training step (forward + backward), measured alternately in one run.

  python -m benchmarks.fedicra_losses --config configs/fedicra_acdc.py:fedicra,table [--repeats 7] [--out FILE]

Builds the config's experiment, takes one real training batch of client 0 and times the jitted gradient of the
local objective with every term, and with each of the tree energy, gated CRF and site-contrast terms left out
(medians over ``--repeats`` alternating calls after a warm-up). The tree term's share of the step is
``1 - t(without tree) / t(all)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.strategies import load_config
from fedjax_med import experiment
from fedjax_med.algorithms import fedicra
from fedjax_med.algorithms.registered import hyper_values

VARIANTS = {"all terms": {}, "without tree": {"tree_weight": 0.0}, "without gated CRF": {"crf_weight": 0.0},
            "without site contrast": {"lc_weight": 0.0},
            "pCE only": {"tree_weight": 0.0, "crf_weight": 0.0, "lc_weight": 0.0}}


def gradient_fn(exp, hp: fedicra.Hyper):
  """jitted ``(variables, batch, rng) -> grads`` of the FedICRA objective on one batch."""
  model = exp.model

  def objective(params, state, batch, rng):
    onehot = jax.nn.one_hot(batch["client_index"][0], hp.num_sites)
    variables = {"params": params, **state, "site": {"onehot": onehot}}
    outputs, _ = model.apply(variables, batch["images"], train=True, rngs={"dropout": rng},
                             mutable=["batch_stats"])
    return fedicra.weak_losses(outputs, batch, onehot, hp)[0]

  grad = jax.grad(objective)

  @jax.jit
  def run(variables, batch, rng):
    state = {k: v for k, v in variables.items() if k not in ("params", "site")}
    return grad(variables["params"], state, batch, rng)

  return run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/fedicra_acdc.py:fedicra,table")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  sys.path.insert(0, ".")
  config = load_config(args.config)
  exp = experiment.build(config)
  values = hyper_values(config.algorithm, fedicra.Hyper, ("num_sites", "image_mean", "image_std", "ignore_index"),
                        "FedICRA", args.config)
  base = fedicra.Hyper(num_sites=exp.model.num_sites, image_mean=tuple(config.data.mean),
                       image_std=tuple(config.data.std), ignore_index=exp.task.ignore_index, **values)
  arrays = jax.tree.map(lambda x: x[0], exp.data["clients"].arrays)
  batch = exp.batch_fns["clients"](arrays, jnp.arange(config.client.batch_size), jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)
  fns = {name: gradient_fn(exp, dataclasses.replace(base, **change)) for name, change in VARIANTS.items()}
  compile_s = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(exp.variables, batch, rng))
    compile_s[name] = time.perf_counter() - start
  samples = {name: [] for name in fns}
  for _ in range(args.repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(exp.variables, batch, rng))
      samples[name].append(time.perf_counter() - start)
  median = {name: statistics.median(v) for name, v in samples.items()}
  shape = tuple(batch["images"].shape)
  print(f"\n{args.config}: one local step's gradient, batch {shape}, medians of {args.repeats} alternating calls\n")
  print("| objective | s/step (median) | relative to all terms | first call incl. compile (s) |")
  print("|---|---|---|---|")
  for name in fns:
    print(f"| {name} | {median[name]:.4f} | {median[name] / median['all terms']:.2f} | {compile_s[name]:.1f} |")
  tree_share = 1.0 - median["without tree"] / median["all terms"]
  print(f"\ntree energy term: {100 * tree_share:.0f}% of the step")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "batch_shape": shape, "median_s": median, "first_call_s": compile_s,
                 "tree_share": tree_share}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
