"""A 2-D U-Net (Ronneberger et al., MICCAI 2015) with configurable depth, widths, norm and dropout."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models import layers

NORMS = ("batch", "instance", "group", "none")
UPSAMPLING = ("transpose", "bilinear")


class ConvBlock(nn.Module):
  """Two 3x3 conv - norm - ReLU, then dropout."""

  features: int
  norm: str
  groups: int
  dropout: float
  bn_momentum: float = 0.9

  def _norm(self, x, train):
    if self.norm == "batch":
      return layers.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
    if self.norm == "instance":
      return nn.GroupNorm(num_groups=None, group_size=1)(x)
    if self.norm == "group":
      return nn.GroupNorm(num_groups=min(self.groups, self.features))(x)
    return x

  @nn.compact
  def __call__(self, x, *, train):
    for _ in range(2):
      x = nn.relu(self._norm(nn.Conv(self.features, (3, 3), use_bias=self.norm == "none")(x), train))
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class UNet(nn.Module):
  """U-Net: ``len(widths)`` levels, max-pool down, transposed-conv or bilinear up, skip concatenation.

  Input ``[B, H, W, C]`` with H and W divisible by ``2**(len(widths)-1)``. Returns
  ``{"logits": [B, H, W, num_classes], "features": [B, H/2**(d-1), W/2**(d-1), widths[-1]]}``.
  """

  num_classes: int
  widths: Sequence[int] = (16, 32, 64, 128, 256)
  norm: str = "batch"
  group_norm_groups: int = 8
  dropout: float | Sequence[float] = 0.0
  bn_momentum: float = 0.9  # running-statistics decay; 0.9 = PyTorch's momentum 0.1 (flax's default 0.99 lags)
  upsample: str = "transpose"

  def _rates(self) -> list[float]:
    if isinstance(self.dropout, (int, float)):
      return [float(self.dropout)] * len(self.widths)
    if len(self.dropout) != len(self.widths):
      raise ValueError(f"UNet `dropout` needs one rate per level ({len(self.widths)}); got {self.dropout}")
    return [float(r) for r in self.dropout]

  def _check(self, x):
    if len(self.widths) < 2:
      raise ValueError(f"UNet `widths` needs at least 2 levels; got {self.widths}")
    if self.norm not in NORMS:
      raise ValueError(f"UNet `norm` must be one of {NORMS}; got {self.norm!r}")
    if self.upsample not in UPSAMPLING:
      raise ValueError(f"UNet `upsample` must be one of {UPSAMPLING}; got {self.upsample!r}")
    factor = 2 ** (len(self.widths) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"UNet input height and width must be divisible by {factor} for {len(self.widths)} levels; "
                       f"got input shape {x.shape}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    self._check(x)
    rates = self._rates()
    block = lambda i, name: ConvBlock(self.widths[i], self.norm, self.group_norm_groups, rates[i], self.bn_momentum,
                                      name=name)
    skips = []
    for i in range(len(self.widths) - 1):
      x = block(i, f"down{i}")(x, train=train)
      skips.append(x)
      x = layers.max_pool_blocks(x)
    x = features = block(len(self.widths) - 1, "bottleneck")(x, train=train)
    for i in reversed(range(len(self.widths) - 1)):
      if self.upsample == "transpose":
        x = layers.BlockConvTranspose(self.widths[i], (2, 2), name=f"up{i}")(x)
      else:
        b, h, w, c = x.shape
        x = nn.Conv(self.widths[i], (1, 1), name=f"up{i}")(jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear"))
      x = block(i, f"dec{i}")(jnp.concatenate([skips[i], x], axis=-1), train=train)
    return {"logits": nn.Conv(self.num_classes, (1, 1), name="out")(x), "features": features}


class UNetEncoderProjector(nn.Module):
  """The U-Net's contracting path (same parameter names as :class:`UNet`: ``down{i}``, ``bottleneck``) followed by
  global average pooling and a projection head Dense(hidden) - ReLU - Dense(projection_dim), for contrastive
  pre-training (as the PCL / FCL encoders). Its encoder parameters load into a ``UNet`` of the same widths.

  ``num_classes`` is accepted for the registry and unused. Returns ``{"projection": [B, projection_dim],
  "features": [B, widths[-1]] (pooled bottleneck)}``.
  """

  num_classes: int = 0
  widths: Sequence[int] = (16, 32, 64, 128, 256)
  norm: str = "batch"
  group_norm_groups: int = 8
  bn_momentum: float = 0.9
  projection_dim: int = 128
  hidden: int = 0  # 0 = widths[-1] (PCL: Linear(16f, 16f))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    UNet(0, widths=self.widths, norm=self.norm)._check(x)
    block = lambda i, name: ConvBlock(self.widths[i], self.norm, self.group_norm_groups, 0.0, self.bn_momentum,
                                      name=name)
    for i in range(len(self.widths) - 1):
      x = layers.max_pool_blocks(block(i, f"down{i}")(x, train=train))
    pooled = jnp.mean(block(len(self.widths) - 1, "bottleneck")(x, train=train), axis=(1, 2))
    hidden = nn.relu(nn.Dense(self.hidden or self.widths[-1], name="proj_hidden")(pooled))
    return {"projection": nn.Dense(self.projection_dim, name="proj_out")(hidden), "features": pooled}


def encoder_parameters(variables: dict) -> dict:
  """The encoder part (``down*`` and ``bottleneck``) of a U-Net's or UNetEncoderProjector's variables."""
  return {collection: {k: v for k, v in tree.items() if k.startswith("down") or k == "bottleneck"}
          for collection, tree in variables.items()}


def load_encoder(variables: dict, encoder: dict) -> dict:
  """``variables`` of a U-Net with its encoder replaced by ``encoder`` (shapes must agree)."""
  out = {}
  for collection, tree in variables.items():
    source = encoder.get(collection, {})
    merged = dict(tree)
    for name, value in source.items():
      if name not in tree:
        raise ValueError(f"pre-trained encoder module {collection}/{name} is not in the U-Net")
      shapes = jax.tree.map(jnp.shape, tree[name]), jax.tree.map(jnp.shape, value)
      if shapes[0] != shapes[1]:
        raise ValueError(f"pre-trained encoder module {collection}/{name} has shapes {shapes[1]}, the U-Net "
                         f"{shapes[0]}: are model.kwargs.widths the same?")
      merged[name] = value
    out[collection] = merged
  return out
