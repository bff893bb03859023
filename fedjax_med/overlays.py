"""Predicted masks over held-out images from a finished run: ``python -m fedjax_med.plot WORKDIR --overlays K``.

Rebuilds the run's model and evaluation split from ``WORKDIR/config.json``, loads the final global model
(``global_variables.msgpack``) and draws, for the K evaluation images with the most ground-truth foreground,
the image, the ground truth and the prediction (classes coloured over the image).

Multi-task runs (MultiMix): ``--saliency K`` draws K test images with the classifier's saliency (the map the
saliency bridge feeds to the decoder), the true and predicted class, the ground-truth and the predicted mask.

Per-site runs (FedICRA and its baselines): ``--site-overlays K`` draws K test slices of each site with the
site's own personalised prediction; :func:`plot_weak_labels` draws what each site annotated.
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from fedjax_med import evaluation, experiment  # noqa: E402


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's full config as ``train.run`` recorded it in ``config_full.json``."""
  path = os.path.join(workdir, "config_full.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir} a run directory (of this version)?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.model.init_encoder = ""  # the final variables are loaded below
  return config


def final_variables(workdir: str):
  path = os.path.join(workdir, "global_variables.msgpack")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: has the run in {workdir} finished?")
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def plot_overlays(workdir: str, path: str, count: int = 6) -> str:
  config = run_config(workdir)
  if config.task.name not in ("segmentation", "weak_segmentation"):
    raise ValueError(f"--overlays needs a segmentation run; {workdir} is {config.task.name!r}")
  exp = experiment.build(config)
  data = exp.eval_dataset
  masks = data.arrays["masks"]
  chosen = np.argsort(-(masks > 0).reshape(len(masks), -1).sum(1), kind="stable")[:count]
  probs = evaluation.predict_all(exp.predict, final_variables(workdir), data.arrays["images"][chosen], len(chosen))
  num_classes = probs.shape[-1]
  fig, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.5 * len(chosen)), squeeze=False)
  for row, (index, prob) in enumerate(zip(chosen, probs)):
    image = data.arrays["images"][index][..., 0] if data.arrays["images"].shape[-1] == 1 \
        else data.arrays["images"][index]
    for col, (labels, title) in enumerate(((None, "image"), (masks[index], "ground truth"),
                                           (prob.argmax(-1), "prediction"))):
      ax = axes[row][col]
      ax.imshow(image, cmap="gray")
      if labels is not None:
        ax.imshow(np.ma.masked_equal(labels, 0), cmap="tab10", vmin=0, vmax=max(num_classes, 10) - 1, alpha=0.5)
      ax.set_title(f"{title} ({data.arrays['group'][index]})", fontsize=7)
      ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def final_states(exp: experiment.Experiment, workdir: str):
  """The run's last checkpointed server and client states (personalised models need the client states)."""
  from fedjax_med.checkpoint import Checkpointer

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    last = checkpointer.latest_round()
    if last is None:
      raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint: has the run finished a round?")
    server, clients = experiment.initial_state(exp)
    state, _ = checkpointer.restore(last, experiment.state_tree(server, clients))
  finally:
    checkpointer.close()
  return state["server"], state["clients"]


def _show(ax, image: np.ndarray, labels: np.ndarray | None, num_classes: int, title: str, hide: int = 0) -> None:
  ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
  if labels is not None:
    ax.imshow(np.ma.masked_where((labels == hide) | (labels >= num_classes), labels), cmap="tab10", vmin=0,
              vmax=max(num_classes, 10) - 1, alpha=0.55, interpolation="nearest")
  ax.set_title(title, fontsize=7)
  ax.axis("off")


def _most_foreground(masks: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
  candidates = np.flatnonzero(rows)
  order = np.argsort(-(masks[candidates] > 0).reshape(len(candidates), -1).sum(1), kind="stable")
  return candidates[order[:count]]


def plot_site_predictions(workdir: str, path: str, count: int = 2) -> str:
  """For each site of a per-site run (``eval.per_client``): ``count`` of its test slices with the most foreground,
  the ground truth and the site's personalised prediction (FedICRA: ALA decoder + site embedding)."""
  config = run_config(workdir)
  if not config.eval.per_client:
    raise ValueError(f"--site-overlays needs a run with config.eval.per_client=True; {workdir} has False")
  exp = experiment.build(config)
  server, clients = final_states(exp, workdir)
  data = exp.eval_dataset
  images, masks = data.arrays["images"], data.arrays["masks"]
  num_classes = exp.meta["num_mask_classes"]
  rows_out = []
  for cohort, ids in exp.cohorts.items():
    for position, client in enumerate(ids):
      site, rows = experiment.site_rows(exp, client)
      chosen = _most_foreground(masks, rows, count)
      variables = exp.algorithm.eval_variables(server, jax.tree.map(lambda x, p=position: x[p], clients[cohort]))
      probs = evaluation.predict_all(exp.predict, variables, images[chosen], len(chosen))
      rows_out += [(site, i, p.argmax(-1)) for i, p in zip(chosen, probs)]
  fig, axes = plt.subplots(len(rows_out), 2, figsize=(4.4, 2.2 * len(rows_out)), squeeze=False)
  for (site, index, pred), (ax_gt, ax_pred) in zip(rows_out, axes):
    _show(ax_gt, images[index], masks[index], num_classes, f"{site}: ground truth")
    _show(ax_pred, images[index], pred, num_classes, f"{site}: its model's prediction")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_weak_labels(config: ml_collections.ConfigDict, path: str, count: int = 2) -> str:
  """Each client's training annotations over its images (``count`` slices with the most foreground per client):
  the weak label the client trains on beside the full mask it was made from. Unannotated pixels are clear."""
  exp = experiment.build(config)
  forms = tuple(config.data.weak_forms) or ("as in the data",) * len(exp.client_datasets)
  ignore = experiment.ignore_index_of(exp.meta)
  num_classes = exp.meta["num_mask_classes"]
  panels = []
  for client, (data, form) in enumerate(zip(exp.client_datasets, forms)):
    site = str(data.arrays[config.partition.column][0]) if config.partition.column in data.arrays else str(client)
    for index in _most_foreground(data.arrays["masks"], np.ones(len(data), bool), count):
      panels.append((site, form, data.arrays["images"][index], data.arrays["scribbles"][index],
                     data.arrays["masks"][index]))
  fig, axes = plt.subplots(len(panels), 2, figsize=(4.4, 2.2 * len(panels)), squeeze=False)
  for (site, form, image, weak, full), (ax_weak, ax_full) in zip(panels, axes):
    annotated = float(np.mean(weak != ignore))
    _show(ax_weak, image, np.where(weak == ignore, num_classes, weak), num_classes,
          f"{site}: {form} ({100 * annotated:.1f}% of pixels)", hide=-1)
    _show(ax_full, image, full, num_classes, f"{site}: full mask")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _typical_lesions(masks: np.ndarray, count: int, low: float = 0.1, high: float = 0.6) -> np.ndarray:
  """``count`` rows evenly spread over those whose foreground covers ``low``-``high`` of the image (all rows if
  too few do): a lesion with background around it, where a saliency map can be read."""
  fraction = (masks > 0).reshape(len(masks), -1).mean(1)
  candidates = np.flatnonzero((fraction >= low) & (fraction <= high))
  if len(candidates) < count:
    candidates = np.arange(len(masks))
  return candidates[np.linspace(0, len(candidates) - 1, min(count, len(candidates))).astype(int)]


def plot_saliency(workdir: str, path: str, count: int = 6) -> str:
  """For a multitask run: ``count`` test images (lesions covering 10-60 % of the image, spread over the split)
  with ``|d top logit / d x|`` (the saliency bridge's input, normalised per image), the true / predicted class
  and the true / predicted mask."""
  from fedjax_med.data.pipeline import normalize
  from fedjax_med.models.multimix import saliency

  config = run_config(workdir)
  if config.task.name != "multitask":
    raise ValueError(f"--saliency needs a multitask (MultiMix) run; {workdir} is {config.task.name!r}")
  exp = experiment.build(config)
  data, variables = exp.eval_dataset, final_variables(workdir)
  images, masks = data.arrays["images"], data.arrays["masks"]
  chosen = _typical_lesions(masks, count)
  x = normalize(images[chosen], tuple(config.data.mean), tuple(config.data.std))
  # one compiled program, not the model op by op
  sal, class_probs, seg = jax.device_get(jax.jit(lambda v, x: (
      saliency(exp.model, v, x)[..., 0], exp.task.predict_fn(v, x), exp.task.predict_seg_fn(v, x).argmax(-1)))(
          variables, x))
  names = exp.meta.get("class_names") or [str(k) for k in range(exp.meta["num_classes"])]
  same_dataset = exp.cls_eval_dataset is None  # with a second classification dataset the true class is unknown
  fig, axes = plt.subplots(len(chosen), 4, figsize=(8.8, 2.2 * len(chosen)), squeeze=False)
  for row, index in enumerate(chosen):
    truth = int(data.arrays["labels"][index]) if same_dataset and "labels" in data.arrays else -1
    predicted = int(class_probs[row].argmax())
    _show(axes[row][0], images[index], None, 2,
          f"true: {names[truth] if truth >= 0 else '?'}, predicted: {names[predicted]} ({class_probs[row].max():.2f})")
    axes[row][1].imshow(sal[row] / max(float(sal[row].max()), 1e-12), cmap="inferno")
    axes[row][1].set_title("saliency |d top logit / dx|", fontsize=7)
    axes[row][1].axis("off")
    _show(axes[row][2], images[index], masks[index], exp.meta["num_mask_classes"], "ground-truth mask")
    _show(axes[row][3], images[index], seg[row], exp.meta["num_mask_classes"], "predicted mask")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
