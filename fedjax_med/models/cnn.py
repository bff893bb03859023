"""A small CNN classifier for quick runs and CPU budgets."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models import layers


class SmallCNN(nn.Module):
  """conv3x3-[BN]-ReLU-maxpool per width, global average pool, Dense-ReLU features, dropout + Dense head.

  Returns ``{"logits": [B, num_classes], "features": [B, dense]}``.
  """

  num_classes: int
  widths: Sequence[int] = (32, 64)
  dense: int = 128
  dropout: float = 0.0
  norm: str = "none"
  bn_momentum: float = 0.9  # running-statistics decay; 0.9 = PyTorch's momentum 0.1 (flax's default 0.99 lags)

  def setup(self):
    if self.norm not in ("none", "batch"):
      raise ValueError(f"SmallCNN `norm` must be 'none' or 'batch'; got {self.norm!r}")
    # A bias before batch norm has no gradient but float noise, which Adam scales up to lr-sized steps.
    self.convs = [nn.Conv(w, (3, 3), use_bias=self.norm == "none") for w in self.widths]
    self.norms = [layers.BatchNorm(momentum=self.bn_momentum) for _ in self.widths] if self.norm == "batch" else []
    self.hidden = nn.Dense(self.dense)
    self.drop = nn.Dropout(self.dropout)
    self.out = nn.Dense(self.num_classes)

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if self.norms:
        x = self.norms[i](x, use_running_average=not train)
      x = layers.max_pool_blocks(nn.relu(x))
    return nn.relu(self.hidden(jnp.mean(x, axis=(1, 2))))

  def classify(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Dropout then the final Dense on pooled features ``[B, dense]`` -> logits."""
    return self.out(self.drop(features, deterministic=not train))

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    features = self.backbone(x, train=train)
    return {"logits": self.classify(features, train=train), "features": features}
