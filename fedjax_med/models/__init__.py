"""Model registry: name -> builder ``(num_classes, **kwargs) -> flax module``.

Every model maps ``[B, H, W, C]`` float inputs to a dict: classifiers
``{"logits": [B, K], "features": [B, F]}`` (with a ``classify`` method for the head
alone), segmenters ``{"logits": [B, H, W, K], "features": bottleneck}``.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp

from fedjax_med.models import unet
from fedjax_med.models.cnn import SmallCNN
from fedjax_med.models.densenet import DenseNet, densenet121, densenet_narrow
from fedjax_med.models.multimix import MultiMixNet
from fedjax_med.models.unet import UNet, UNetEncoderProjector
from fedjax_med.models.unet_pcs import UNetPCS
from fedjax_med.registry import Registry

MODELS = Registry("model")  # name -> (builder, the flax module class whose fields it accepts)
MODELS.add("unet", (UNet, UNet))
MODELS.add("unet_pcs", (UNetPCS, UNetPCS))
MODELS.add("multimix", (MultiMixNet, MultiMixNet))
MODELS.add("unet_encoder_projector", (UNetEncoderProjector, UNetEncoderProjector))
MODELS.add("densenet121", (densenet121, DenseNet))
MODELS.add("densenet_narrow", (densenet_narrow, DenseNet))
MODELS.add("densenet", (DenseNet, DenseNet))
MODELS.add("small_cnn", (SmallCNN, SmallCNN))


def _accepted(module: type[nn.Module]) -> set[str]:
  return {f.name for f in dataclasses.fields(module)} - {"parent", "name", "num_classes"}


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a registered model; unknown names and keywords raise ValueError listing what is allowed."""
  builder, module = MODELS.get(name, what="model")
  unknown = sorted(set(kwargs) - _accepted(module))
  if unknown:
    raise ValueError(f"model {name!r} does not take {unknown}; it takes {sorted(_accepted(module))}")
  return builder(num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, rng: jax.Array, input_shape) -> dict:
  """``model.init`` on zeros of ``[1, *input_shape]`` in eval mode, as one jitted program: run eagerly, every
  initialiser and layer op of a DenseNet-121 compiles on its own (hundreds of small XLA programs, tens of
  seconds on a 2-core CPU)."""
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False))
  return dict(init(rng))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


__all__ = ["MODELS", "DenseNet", "SmallCNN", "UNet", "count_params", "get_model", "init_variables"]


def load_pretrained_encoder(variables: dict, workdir: str) -> dict:
  """``variables`` of a U-Net with the encoder of the global model saved by a run in ``workdir``
  (``global_variables.msgpack``, e.g. FCL pre-training); the decoder keeps its fresh initialisation."""
  path = os.path.join(workdir, "global_variables.msgpack")
  if not os.path.exists(path):
    raise FileNotFoundError(f"model.init_encoder: {path} does not exist; has the pre-training run in {workdir} "
                            "finished?")
  with open(path, "rb") as f:
    pretrained = flax.serialization.msgpack_restore(f.read())
  return unet.load_encoder(variables, unet.encoder_parameters(pretrained))
