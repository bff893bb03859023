"""A small CNN classifier for quick runs and CPU budgets, and the classifier head shared by the classifiers.

Also holds the argument checks the model modules share (they raise ``ValueError`` naming the argument).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CNN_NORMS = ("none", "batch")


def check_positive_int(owner: str, name: str, value) -> None:
  """Raises ValueError unless ``value`` is an integer >= 1 (bools are rejected)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{owner} `{name}` must be a positive integer; got {value!r}")


def check_positive_ints(owner: str, name: str, values) -> None:
  """Raises ValueError unless ``values`` is a non-empty sequence of positive integers."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
    raise ValueError(f"{owner} `{name}` must be a non-empty sequence of positive integers; got {values!r}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
      raise ValueError(f"{owner} `{name}` must be a non-empty sequence of positive integers; got {values!r}")


def check_rate(owner: str, name: str, value) -> None:
  """Raises ValueError unless ``value`` is a dropout rate in [0, 1)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise ValueError(f"{owner} `{name}` must be a dropout rate in [0, 1); got {value!r}")


def check_choice(owner: str, name: str, value, choices: Sequence[str]) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{owner} `{name}` must be one of {tuple(choices)}; got {value!r}")


class ClassifierHead(nn.Module):
  """Dropout (train mode only, when ``dropout > 0``) then a Dense layer with bias.

  Attributes:
    num_classes: Number of output logits K.
    dropout: Dropout rate applied to the pooled features; uses the ``'dropout'`` rng collection.
  """

  num_classes: int
  dropout: float = 0.0

  def __post_init__(self):
    check_positive_int("ClassifierHead", "num_classes", self.num_classes)
    check_rate("ClassifierHead", "dropout", self.dropout)
    super().__post_init__()

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Maps pooled features ``[B, F]`` to logits ``[B, num_classes]``."""
    if train and self.dropout > 0:
      features = nn.Dropout(self.dropout, deterministic=False)(features)
    return nn.Dense(self.num_classes, name="dense")(features)


class SmallCNNBackbone(nn.Module):
  """conv3x3-[BN]-ReLU-maxpool2 per width, global average pool, Dense-ReLU.

  Attributes:
    widths: Output channels of each conv stage.
    dense: Width F of the final Dense-ReLU (the pooled feature size).
    norm: ``"none"`` or ``"batch"`` (batch statistics in the ``batch_stats`` collection).
  """

  widths: Sequence[int]
  dense: int
  norm: str

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, H, W, C]`` to features ``[B, dense]``."""
    for width in self.widths:
      x = nn.Conv(width, (3, 3), use_bias=self.norm == "none")(x)
      if self.norm == "batch":
        x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.relu(nn.Dense(self.dense)(x))


class SmallCNN(nn.Module):
  """A small CNN classifier.

  Input ``[B, H, W, C]`` float32 with H, W >= ``2**len(widths)``. ``__call__`` returns
  ``{"logits": [B, num_classes], "features": [B, dense]}``; ``features`` are taken before the head's dropout.
  ``classify`` runs the head (dropout + Dense) alone on precomputed features ``[B, dense]``.

  Attributes:
    num_classes: Number of classes K.
    widths: Output channels of each conv3x3-ReLU-maxpool stage.
    dense: Width of the Dense-ReLU layer producing the features.
    dropout: Dropout rate on the features before the final Dense (train mode only).
    norm: ``"none"`` or ``"batch"`` (batch norm after each conv).
  """

  num_classes: int
  widths: Sequence[int] = (32, 64)
  dense: int = 128
  dropout: float = 0.0
  norm: str = "none"

  def __post_init__(self):
    check_positive_int("SmallCNN", "num_classes", self.num_classes)
    check_positive_ints("SmallCNN", "widths", self.widths)
    check_positive_int("SmallCNN", "dense", self.dense)
    check_rate("SmallCNN", "dropout", self.dropout)
    check_choice("SmallCNN", "norm", self.norm, CNN_NORMS)
    super().__post_init__()

  def setup(self):
    self.backbone = SmallCNNBackbone(tuple(self.widths), self.dense, self.norm)
    self.head = ClassifierHead(self.num_classes, self.dropout)

  def classify(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Dropout then the final Dense on pooled features ``[B, dense]``; returns logits ``[B, num_classes]``."""
    return self.head(features, train=train)

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Maps ``[B, H, W, C]`` images to ``{"logits": [B, num_classes], "features": [B, dense]}``."""
    if x.ndim != 4 or min(x.shape[1:3]) < 2 ** len(self.widths):
      raise ValueError(f"SmallCNN input must be [B, H, W, C] with H, W >= {2 ** len(self.widths)} for "
                       f"{len(self.widths)} pooling stages; got input shape {tuple(x.shape)}")
    features = self.backbone(x, train=train)
    return {"logits": self.classify(features, train=train), "features": features}
