"""Frozen-encoder probe: a per-pixel linear head on a pre-trained U-Net encoder's frozen features, 3-D Dice.

  python -m fedjax_med.probe --encoder runs/fcl/pre_fcl_s0 --config configs/fcl_finetune_acdc.py:1,table \\
      [--baseline runs/fcl/pre_local_s0] [--seeds 0 1 2 3 4] [--steps 300] [--out probe.json] [--config.KEY=VALUE]

A cheap score of a pre-training, without fine-tuning (issue 21): how linearly the encoder's features separate the
structures, for the encoder of ``--encoder`` (a pre-training workdir) against ``--baseline`` (another one, or, by
default, a randomly initialised encoder), paired by seed.

* Data: what the fine-tuning config gives (``experiment.build``): the labeled patients of every client, pooled
  (the probe is not federated), and the config's evaluation split.
* Features (decoder-free): the outputs of the U-Net's encoder blocks, i.e. its skip features ``down0`` ..
  ``down{d-2}`` (before their max-pool) and the ``bottleneck``, computed in inference mode (BatchNorm with the
  checkpoint's running statistics; a random encoder's are the initial 0 / 1), each resized bilinearly to the image
  size and concatenated: ``sum(widths)`` channels per pixel (240 for the 16-128 encoder of the table protocol), then
  standardised per channel by the mean and standard deviation over the labeled slices (taken at each block's own
  resolution). The blocks' outputs are computed once; see ``head_logits`` for how the head avoids materialising
  the full-resolution map.
* Head: a 1x1 convolution (``sum(widths) -> classes``, zero-initialised) trained with Adam on the config's loss
  weights (``task.ce_weight`` x cross-entropy + ``task.dice_weight`` x soft Dice) for a fixed budget of ``--steps``
  batches of ``--batch-size`` slices drawn with the seed, no augmentation. The encoder is never differentiated.
* Score: ``dice3d`` (3-D Dice per structure per volume, mean over volumes then structures) on the evaluation split,
  exactly as the fine-tuning runs report it (``evaluation.segmentation_report``).

The seed (``config.seed``) draws the labeled patients, the random encoder and the batches. Printed: per seed both
scores and their difference; the mean difference with its 95 % t interval (``report.paired_difference``).

Budget (measured at ``configs/fcl_finetune_acdc.py:1,table``, an encoder after 2 rounds of ``fcl_acdc.py:fcl,table``,
seed 0, on the 2-core CPU with two training runs beside it): the default 300 batches at lr 5e-2 scored within
1 Dice point of 1,000 batches at 1e-2 (0.387 vs 0.396 for the encoder, 0.458 vs 0.465 for random), and the
difference moved by 0.3 points; one seed (both encoders) takes about 40 s of CPU, five seeds about 3.5 minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fedjax_med import evaluation, experiment, losses, models
from fedjax_med.data.format import DatasetError
from fedjax_med.data.pipeline import normalize

BLOCK = re.compile(r"^down(\d+)$")


def encoder_blocks(variables: dict) -> list[str]:
  """The U-Net's encoder blocks in order of depth: ``down0, down1, ..., bottleneck``."""
  params = variables["params"]
  downs = sorted((int(m[1]), name) for name in params if (m := BLOCK.match(name)))
  if not downs or "bottleneck" not in params:
    raise ValueError(f"the probe needs a U-Net (down0.., bottleneck); the model has modules {sorted(params)}")
  return [name for _, name in downs] + ["bottleneck"]


def encoder_features(model, variables: dict, x: jax.Array) -> list[jax.Array]:
  """Outputs ``[B, h_l, w_l, widths[l]]`` of the encoder blocks for normalised images ``x [B, H, W, C]``."""
  names = set(encoder_blocks(variables))
  capture = lambda module, method: method == "__call__" and module.name in names
  _, state = model.apply(variables, x, train=False, capture_intermediates=capture, mutable=["intermediates"])
  return [state["intermediates"][name]["__call__"][0] for name in encoder_blocks(variables)]


def upsampled(levels: list[jax.Array], size: tuple[int, int]) -> jax.Array:
  """``[B, H, W, sum(widths)]``: every block's output resized (bilinear) to ``size`` and concatenated."""
  return jnp.concatenate([jax.image.resize(f, (f.shape[0], *size, f.shape[-1]), "bilinear") for f in levels], -1)


def head_logits(head: dict, levels: list[jax.Array], size: tuple[int, int]) -> jax.Array:
  """The per-pixel linear head on the standardised, upsampled, concatenated features: ``[B, H, W, classes]``.

  Computed block by block at the block's own resolution, then upsampled: bilinear resizing is linear and keeps
  constants, so ``resize(z_l) @ W_l = resize(z_l @ W_l)`` and the head never holds the ``sum(widths)``-channel map
  at full resolution (``upsampled`` builds it, for the tests).
  """
  logits, start = head["bias"], 0
  for f in levels:
    end = start + f.shape[-1]
    z = (f - head["mean"][start:end]) / head["std"][start:end]
    block = z @ head["kernel"][start:end]
    logits = logits + jax.image.resize(block, (block.shape[0], *size, block.shape[-1]), "bilinear")
    start = end
  return logits


def fit_head(model, variables: dict, images: np.ndarray, masks: np.ndarray, num_classes: int, *,
             config: ml_collections.ConfigDict, steps: int, batch_size: int, learning_rate: float, seed: int) -> dict:
  """A head trained on the frozen ``variables``: {mean, std (per channel), kernel, bias}.

  Args:
    images: uint8 ``[N, H, W, C]`` labeled slices; masks: int ``[N, H, W]`` (values outside [0, classes) ignored).
  """
  mean, std = config.data.mean, config.data.std
  featurise = jax.jit(lambda v, im: encoder_features(model, v, normalize(im, mean, std)))
  chunks = [featurise(variables, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
  levels = [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(chunks[0]))]  # native sizes
  flat = [f.reshape(-1, f.shape[-1]) for f in levels]  # statistics over the pixels at each block's own resolution
  stats = {"mean": np.concatenate([f.mean(0) for f in flat]), "std": np.concatenate([f.std(0) for f in flat]) + 1e-6}
  masks = np.where((masks >= 0) & (masks < num_classes), masks, -1).astype(np.int32)
  weights = {"kernel": jnp.zeros((stats["mean"].shape[0], num_classes)), "bias": jnp.zeros((num_classes,))}
  tx, size = optax.adam(learning_rate), images.shape[1:3]

  def loss_fn(w, batch_levels, y):
    logits, ones = head_logits({**stats, **w}, batch_levels, size), jnp.ones(y.shape)
    ce = losses.weighted_mean(losses.cross_entropy(logits, y, ones), (y >= 0).astype(jnp.float32))
    return config.task.ce_weight * ce + config.task.dice_weight * jnp.mean(losses.soft_dice_loss(logits, y, ones))

  @jax.jit
  def step(w, opt_state, batch_levels, y):
    updates, opt_state = tx.update(jax.grad(loss_fn)(w, batch_levels, y), opt_state, w)
    return optax.apply_updates(w, updates), opt_state

  opt_state, rng = tx.init(weights), np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
    weights, opt_state = step(weights, opt_state, [f[idx] for f in levels], masks[idx])
  return {**stats, **weights}


def score(model, variables: dict, head: dict, exp: experiment.Experiment) -> dict[str, float]:
  """3-D Dice (and the 2-D report) of encoder + head on the config's evaluation split."""
  config = exp.config
  predict_fn = lambda v, x: jax.nn.softmax(
      head_logits(v["head"], encoder_features(model, v["encoder"], x), x.shape[1:3]), axis=-1)
  predict = evaluation.make_predict(predict_fn, config.data.mean, config.data.std, config.eval.pad_multiple)
  probs = evaluation.predict_all(predict, {"encoder": variables, "head": head}, exp.eval_dataset.arrays["images"],
                                 config.eval.batch_size)
  return evaluation.segmentation_report(probs, exp.eval_dataset)


def labeled_slices(exp: experiment.Experiment) -> tuple[np.ndarray, np.ndarray]:
  """Images and masks of every client's labeled patients, pooled."""
  images = np.concatenate([np.asarray(c.arrays["images"]) for c in exp.client_datasets])
  masks = np.concatenate([np.asarray(c.arrays["masks"]) for c in exp.client_datasets])
  return images, masks


def probe_seed(config: ml_collections.ConfigDict, encoder: str, baseline: str, seed: int, *, steps: int,
               batch_size: int, learning_rate: float) -> dict[str, dict[str, float]]:
  """{"encoder": report, "baseline": report} for one seed; ``baseline`` "" = the seed's random initialisation."""
  config = copy.deepcopy(config)
  config.seed = seed
  config.model.init_encoder = ""  # loaded below, with the code experiment.build uses for fine-tuning
  exp = experiment.build(config)
  if exp.task.name != "segmentation":
    raise ValueError(f"the probe needs a segmentation config (configs/fcl_finetune_acdc.py); got {exp.task.name!r}")
  images, masks = labeled_slices(exp)
  num_classes = int(exp.meta["num_mask_classes"])
  out = {}
  for name, workdir in (("encoder", encoder), ("baseline", baseline)):
    variables = models.load_pretrained_encoder(exp.variables, workdir) if workdir else exp.variables
    head = fit_head(exp.model, variables, images, masks, num_classes, config=config, steps=steps,
                    batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    out[name] = score(exp.model, variables, head, exp)
  return out


def summary_table(per_seed: dict[int, dict], encoder: str, baseline: str, metric: str = "dice3d") -> str:
  from fedjax_med.report import paired_difference

  base_name = baseline or "random initialisation"
  lines = [f"| seed | {encoder} | {base_name} | difference |", "|---|---|---|---|"]
  for seed, reports in sorted(per_seed.items()):
    a, b = reports["encoder"][metric], reports["baseline"][metric]
    lines.append(f"| {seed} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
  mean, low, high, pairs = paired_difference({s: r["encoder"][metric] for s, r in per_seed.items()},
                                             {s: r["baseline"][metric] for s, r in per_seed.items()})
  lines.append(f"\n{metric}: {encoder} - {base_name} = {mean:+.4f}, 95 % CI [{low:+.4f}, {high:+.4f}] over "
               f"{pairs} paired seeds")
  return "\n".join(lines)


def parse_config(argv: list[str]) -> ml_collections.ConfigDict:
  """``--config FILE[:ARG]`` and ``--config.KEY=VALUE`` overrides, parsed as ``main.py`` does."""
  from absl import flags
  from ml_collections import config_flags

  flag_values, argv = flags.FlagValues(), ["probe", *argv]
  config_flags.DEFINE_config_file("config", None, "fine-tuning config file", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)  # the overrides it accepts come from argv
  flag_values(argv)
  if flag_values.config is None:
    raise ValueError("--config is required (e.g. configs/fcl_finetune_acdc.py:1,table)")
  return flag_values.config


def config_or_error(rest: list[str]) -> ml_collections.ConfigDict | None:
  """``parse_config(rest)``, or None after printing its one ``error:`` line (for the modules' ``main``)."""
  from fedjax_med import cli

  try:
    config = parse_config(rest)
    config.keys()  # a config file that failed to load only raises when first used
  except Exception as e:  # absl and ml_collections raise several types for a bad --config or override
    print(f"error: {cli.describe_flag_error(rest, e)}", file=sys.stderr)
    return None
  return config


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.probe", description=__doc__.splitlines()[0])
  parser.add_argument("--encoder", required=True, help="pre-training workdir (global_variables.msgpack)")
  parser.add_argument("--baseline", default="", help="another pre-training workdir; default: random initialisation")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--steps", type=int, default=300, help="head training batches")
  parser.add_argument("--batch-size", type=int, default=32, help="slices per batch")
  parser.add_argument("--lr", type=float, default=5e-2, help="Adam learning rate of the head")
  parser.add_argument("--out", default="", help="write every seed's reports and the paired difference as JSON")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  config = config_or_error(rest)
  if config is None:
    return 2
  try:
    per_seed = {s: probe_seed(config, args.encoder, args.baseline, s, steps=args.steps, batch_size=args.batch_size,
                              learning_rate=args.lr) for s in args.seeds}
  except (ValueError, FileNotFoundError, DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  table = summary_table(per_seed, args.encoder, args.baseline)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"encoder": args.encoder, "baseline": args.baseline, "steps": args.steps, "batch_size": args.batch_size,
                 "lr": args.lr, "per_seed": per_seed, "table": table}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
