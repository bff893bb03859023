"""What the tree energy loss asks of a model: the Dice of its filtered target against the full masks.

FedICRA's tree energy loss (Liang et al., CVPR 2022; Lin et al., arXiv 2304.05635) pulls the softmax ``p`` towards
its tree-filtered copy ``TF(p)`` on every unannotated pixel. Where ``argmax TF(p)`` is further from the truth than
``argmax p``, the loss teaches the wrong label. This tool measures both on each site's training slices, on the
unannotated pixels only (where the loss acts), against the full masks (which training never sees):

  # p = each site's model from a run's last checkpoint: the image tree at each --sigmas, and the run's own loss
  # target (image tree, then the auxiliary heads' trees, with the run's settings)
  python -m fedjax_med.tree_target --workdir runs/fedicra/fedicra_s0
  # p = the one-hot full masks (a perfect model): what the image tree alone does to the truth
  python -m fedjax_med.tree_target --config configs/fedicra_acdc.py:fedicra,table

``--sigmas`` are the image tree's effective scales on a one-channel image, ``w = exp(-d^2 / sigma)`` (the official
setting, 0.02 on a grayscale image repeated to three channels, is ``0.02 / 3``).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_med.data.format import DatasetError
from fedjax_med.metrics.classification import confusion_matrix

DEFAULT_SIGMAS = (0.001, 0.002, 0.02 / 3, 0.02)
BATCH = 48  # slices filtered together (one host MST call)


def confusion(pred: np.ndarray, truth: np.ndarray, where: np.ndarray, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts over the pixels where ``where`` (rows = true class, columns = predicted)."""
  return confusion_matrix(np.asarray(pred)[where], np.asarray(truth)[where], num_classes)


def dice_of(counts: np.ndarray) -> np.ndarray:
  """Per-class Dice ``2 tp / (2 tp + fp + fn)`` of a ``[C, C]`` confusion matrix (0 where a class is absent and not
  predicted)."""
  tp = np.diag(counts)
  return 2 * tp / np.maximum(counts.sum(0) + counts.sum(1), 1)


def image_tree_targets(probs: jax.Array, unit_image: jax.Array, sigmas: tuple[float, ...]) -> dict[str, jax.Array]:
  """``{"sigma=s": TF(probs)}`` by the image's minimum spanning tree; probs ``[B, H, W, C]``, image ``[B, H, W, 1]``."""
  from fedjax_med.losses import tree_filter

  tree = tree_filter.spanning_trees(unit_image)
  return {f"image tree, sigma={s:.4g}": tree_filter.tree_filter(probs, unit_image, tree, s) for s in sigmas}


def site_dice(exp, probs_and_targets, ignore: int, num_classes: int) -> dict[str, dict[str, np.ndarray]]:
  """Per site, per name: per-class Dice on the unannotated pixels of the site's training slices.

  ``probs_and_targets(client_index, batch)`` -> ``{name: [B, H, W, C]}``; batch: the slices' ``images`` (uint8) and
  ``masks``.
  """
  column = exp.config.partition.column
  result = {}
  for client, data in enumerate(exp.client_datasets):
    arrays = data.arrays
    site = str(arrays[column][0]) if column in arrays else str(client)
    counts: dict[str, np.ndarray] = {}
    for start in range(0, len(arrays["images"]), BATCH):
      batch = {k: np.asarray(arrays[k][start:start + BATCH]) for k in ("images", "masks")}
      unannotated = np.asarray(arrays["scribbles"][start:start + BATCH]) == ignore
      outputs = jax.device_get(probs_and_targets(client, batch))
      for name, p in outputs.items():
        counts[name] = counts.get(name, 0) + confusion(p.argmax(-1), batch["masks"], unannotated, num_classes)
    result[site] = {name: dice_of(c) for name, c in counts.items()}
  return result


def oracle_targets(exp, sigmas: tuple[float, ...]):
  """``(client, batch) -> targets`` of the one-hot full masks."""
  num_classes = exp.meta["num_mask_classes"]

  @jax.jit
  def targets(masks, images):
    probs = jax.nn.one_hot(masks, num_classes)
    return {"truth (one-hot masks)": probs,
            **image_tree_targets(probs, images.astype(jnp.float32)[..., :1] / 255.0, sigmas)}

  return lambda client, batch: targets(batch["masks"], batch["images"])


def model_targets(exp, workdir: str, sigmas: tuple[float, ...]):
  """``(client, batch) -> targets`` of each site's model from the run's last checkpoint."""
  from fedjax_med import overlays
  from fedjax_med.algorithms import fedicra
  from fedjax_med.data.pipeline import normalize
  from fedjax_med.losses import tree_filter

  config = exp.config
  server, clients = overlays.final_states(exp, workdir)
  (cohort, ids), = exp.cohorts.items()
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  algo = config.algorithm

  @jax.jit
  def targets(variables, images):
    outputs = exp.model.apply(variables, normalize(images, mean, std), train=False)
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    probs = jax.nn.softmax(logits, axis=-1)
    unit = images.astype(jnp.float32) / 255.0
    result = {"model": probs, **image_tree_targets(probs, unit[..., :1], sigmas)}
    if isinstance(outputs, dict) and outputs.get("aux") and "tree_low_sigma" in algo:
      result["the run's loss target"] = tree_filter.multiscale_tree_filter(
          probs, fedicra.tree_image(unit, algo.tree_gray_channels), outputs["aux"], algo.tree_low_sigma,
          algo.tree_high_sigma)
    return result

  def per_client(client, batch):
    state = jax.tree.map(lambda x: x[ids.index(client)], clients[cohort])
    return targets(exp.algorithm.eval_variables(server, state), batch["images"])

  return per_client


def markdown(per_site: dict[str, dict[str, np.ndarray]], class_names: list[str]) -> str:
  # the probabilities first, then their targets (jit returns dicts in key order)
  names = sorted(next(iter(per_site.values())), key=lambda n: (n not in ("model", "truth (one-hot masks)"), n))
  header = ["probabilities / target"] + class_names
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name in names:
    mean = np.mean([per_site[s][name] for s in per_site], axis=0)
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str, sigmas: tuple[float, ...]) -> str:
  from fedjax_med import experiment

  exp = experiment.build(config)
  if "scribbles" not in exp.client_datasets[0].arrays:
    raise ValueError(f"{config.data.name}: tree_target needs weak labels (config.data.weak_forms) and full masks")
  ignore, num_classes = experiment.ignore_index_of(exp.meta), exp.meta["num_mask_classes"]
  fn = model_targets(exp, workdir, sigmas) if workdir else oracle_targets(exp, sigmas)
  per_site = site_dice(exp, fn, ignore, num_classes)
  names = ["background"] + [f"class {k}" for k in range(1, num_classes)]
  return markdown(per_site, names)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.tree_target", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="", help="a FedICRA or FedAvg run: its last checkpoint's site models")
  parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.workdir:
      from fedjax_med import overlays

      config = overlays.run_config(args.workdir)
    else:
      from fedjax_med.probe import config_or_error

      config = config_or_error(rest)
      if config is None:
        return 2
    print(run(config, args.workdir, tuple(args.sigmas)))
  except (ValueError, FileNotFoundError, DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
