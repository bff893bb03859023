"""DenseNet (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017) in the torchvision layout."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models import layers

STEMS = ("imagenet", "small")


def _batch_norm(train: bool, momentum: float, groups: int) -> layers.BatchNorm:
  return layers.BatchNorm(use_running_average=not train, momentum=momentum, groups=groups)


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth); output concatenated to the input."""

  growth_rate: int
  bn_size: int
  bn_momentum: float
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, *, train):
    y = nn.relu(_batch_norm(train, self.bn_momentum, self.bn_groups)(x))
    y = nn.Conv(self.bn_size * self.growth_rate, (1, 1), use_bias=False)(y)
    y = nn.relu(_batch_norm(train, self.bn_momentum, self.bn_groups)(y))
    y = nn.Conv(self.growth_rate, (3, 3), use_bias=False)(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv halving the channels, 2x2 average pool."""

  features: int
  bn_momentum: float
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.relu(_batch_norm(train, self.bn_momentum, self.bn_groups)(x))
    x = nn.Conv(self.features, (1, 1), use_bias=False)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """Returns ``{"logits": [B, num_classes], "features": [B, F]}``; dropout sits only before the head.

  ``classify`` runs the head (dropout + Dense) alone on pooled features, so MC-dropout
  passes need the backbone once.
  """

  num_classes: int
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  dropout: float = 0.0
  stem: str = "imagenet"
  bn_momentum: float = 0.9  # running-statistics decay; 0.9 = PyTorch's momentum 0.1 (flax's default 0.99 lags)
  bn_groups: int = 1  # batch-norm statistics per this many consecutive slices of the batch (layers.BatchNorm.groups)

  def setup(self):
    if self.stem not in STEMS:
      raise ValueError(f"DenseNet `stem` must be one of {STEMS}; got {self.stem!r}")
    self.head_dropout = nn.Dropout(self.dropout)
    self.classifier = nn.Dense(self.num_classes)

  def classify(self, features: jax.Array, *, train: bool) -> jax.Array:
    return self.classifier(self.head_dropout(features, deterministic=not train))

  @nn.compact
  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.stem == "imagenet":
      x = nn.Conv(self.num_init_features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
      x = nn.relu(_batch_norm(train, self.bn_momentum, self.bn_groups)(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.Conv(self.num_init_features, (3, 3), use_bias=False)(x)
    features = self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      for _ in range(num_layers):
        x = DenseLayer(self.growth_rate, self.bn_size, self.bn_momentum, self.bn_groups)(x, train=train)
      features += num_layers * self.growth_rate
      if i != len(self.block_config) - 1:
        features //= 2
        x = Transition(features, self.bn_momentum, self.bn_groups)(x, train=train)
    x = nn.relu(_batch_norm(train, self.bn_momentum, self.bn_groups)(x))
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    features = self.backbone(x, train=train)
    return {"logits": self.classify(features, train=train), "features": features}


def densenet121(num_classes: int, **kwargs) -> DenseNet:
  """torchvision's densenet121 configuration: 6,961,031 parameters with 7 classes."""
  return DenseNet(num_classes, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, **kwargs)


def densenet_narrow(num_classes: int, **kwargs) -> DenseNet:
  """A CPU-budget DenseNet-121 shape: growth 12, 24 stem features, 1,002,391 parameters with 7 classes."""
  kwargs = {"growth_rate": 12, "block_config": (6, 12, 24, 16), "num_init_features": 24, **kwargs}
  return DenseNet(num_classes, **kwargs)
