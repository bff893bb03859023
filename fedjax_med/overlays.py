"""Predicted masks over held-out images from a finished run: ``python -m fedjax_med.plot WORKDIR --overlays K``.

Rebuilds the run's model and evaluation split from ``WORKDIR/config.json``, loads the final global model
(``global_variables.msgpack``) and draws, for the K evaluation images with the most ground-truth foreground,
the image, the ground truth and the prediction (classes coloured over the image).
"""

from __future__ import annotations

import json
import os

import flax.serialization
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
  predict = evaluation.make_predict(exp.task.predict_fn, tuple(config.data.mean), tuple(config.data.std),
                                    config.eval.pad_multiple)
  probs = evaluation.predict_all(predict, final_variables(workdir), data.arrays["images"][chosen], len(chosen))
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
