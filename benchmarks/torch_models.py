"""PyTorch mirrors of fedjax_med's Flax models (same layers, order, biases and parameter counts), so the throughput
benchmark compares the frameworks on the same network.

Inputs are NCHW float32 (the Flax models take NHWC). Every mirror lists its leaf layers under their Flax parameter
paths (``flax_layout``), which ``load_flax_variables`` uses to copy a Flax variables dict in; the tests check that the
two frameworks then compute the same outputs. Initialisation is PyTorch's default, not Flax's: the benchmark times
steps, it does not compare learning curves.

``bn_momentum`` is Flax's running-statistics decay (0.9 = PyTorch's ``momentum=0.1``), so a Flax config's model
kwargs can be passed unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Layout = list[tuple[str, nn.Module]]  # (Flax path "A/B/C", torch leaf layer), in the order the forward pass uses them


class _AutoNames:
  """Flax's automatic names in a compact method: a per-type counter (``Conv_0``, ``BatchNorm_0``, ``Conv_1``...)."""

  def __init__(self, prefix: str = ""):
    self.prefix, self.counts = prefix, {}

  def __call__(self, kind: str) -> str:
    index = self.counts.get(kind, 0)
    self.counts[kind] = index + 1
    return f"{self.prefix}{kind}_{index}"


def _batch_norm(features: int, bn_momentum: float) -> nn.BatchNorm2d:
  # Flax's decay d keeps d of the old statistic; PyTorch's momentum is the weight of the new one. Rounding keeps
  # 1 - 0.9 from printing as 0.09999999999999998.
  return nn.BatchNorm2d(features, eps=1e-5, momentum=round(1.0 - bn_momentum, 12))


def _check_divisible(x: torch.Tensor, levels: int) -> None:
  factor = 2 ** (levels - 1)
  if x.shape[2] % factor or x.shape[3] % factor:
    raise ValueError(f"UNet input height and width must be divisible by {factor} for {levels} levels; "
                     f"got input shape {tuple(x.shape)} (NCHW)")


# --------------------------------------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth); ``[B, C, H, W] -> [B, C + growth, H, W]``."""

  flax_kind = "DenseLayer"

  def __init__(self, in_features: int, growth_rate: int, bn_size: int, bn_momentum: float):
    super().__init__()
    self.norm1 = _batch_norm(in_features, bn_momentum)
    self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False)
    self.norm2 = _batch_norm(bn_size * growth_rate, bn_momentum)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv1(F.relu(self.norm1(x)))
    y = self.conv2(F.relu(self.norm2(y)))
    return torch.cat([x, y], dim=1)

  def flax_layout(self, prefix: str) -> Layout:
    names = _AutoNames(prefix + "/")
    return [(names("BatchNorm"), self.norm1), (names("Conv"), self.conv1), (names("BatchNorm"), self.norm2),
            (names("Conv"), self.conv2)]


class _Transition(nn.Module):
  """BN-ReLU-1x1 conv to ``out_features``, 2x2 average pool; ``[B, C, H, W] -> [B, out, H/2, W/2]``."""

  flax_kind = "Transition"

  def __init__(self, in_features: int, out_features: int, bn_momentum: float):
    super().__init__()
    self.norm = _batch_norm(in_features, bn_momentum)
    self.conv = nn.Conv2d(in_features, out_features, 1, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2, 2)

  def flax_layout(self, prefix: str) -> Layout:
    names = _AutoNames(prefix + "/")
    return [(names("BatchNorm"), self.norm), (names("Conv"), self.conv)]


class DenseNet(nn.Module):
  """DenseNet in the torchvision layout, as ``fedjax_med.models.densenet.DenseNet``.

  ``forward``: ``[B, C, H, W] -> (features [B, F], logits [B, num_classes])``; dropout sits only before the head.
  """

  def __init__(self, num_classes: int, in_channels: int = 3, growth_rate: int = 32,
               block_config: Sequence[int] = (6, 12, 24, 16), num_init_features: int = 64, bn_size: int = 4,
               dropout: float = 0.0, stem: str = "imagenet", bn_momentum: float = 0.9):
    super().__init__()
    if stem not in ("imagenet", "small"):
      raise ValueError(f"DenseNet `stem` must be one of ('imagenet', 'small'); got {stem!r}")
    self.stem = stem
    if stem == "imagenet":
      self.stem_conv = nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)
      self.stem_norm = _batch_norm(num_init_features, bn_momentum)
    else:  # small images: one 3x3 conv, no norm and no pooling (as the Flax stem)
      self.stem_conv = nn.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False)
      self.stem_norm = None
    layers: list[nn.Module] = []
    features = num_init_features
    for i, num_layers in enumerate(block_config):
      for _ in range(num_layers):
        layers.append(_DenseLayer(features, growth_rate, bn_size, bn_momentum))
        features += growth_rate
      if i != len(block_config) - 1:
        layers.append(_Transition(features, features // 2, bn_momentum))
        features //= 2
    self.blocks = nn.Sequential(*layers)
    self.final_norm = _batch_norm(features, bn_momentum)
    self.num_features = features
    self.head_dropout = nn.Dropout(dropout)
    self.classifier = nn.Linear(features, num_classes)

  def backbone(self, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, F]`` globally average-pooled features."""
    x = self.stem_conv(x)
    if self.stem_norm is not None:
      x = F.max_pool2d(F.relu(self.stem_norm(x)), 3, stride=2, padding=1)
    x = F.relu(self.final_norm(self.blocks(x)))
    return x.mean(dim=(2, 3))

  def classify(self, features: torch.Tensor) -> torch.Tensor:
    """Dropout then Linear: ``[B, F] -> [B, num_classes]``."""
    return self.classifier(self.head_dropout(features))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C, H, W] -> (features [B, F], logits [B, num_classes])``."""
    features = self.backbone(x)
    return features, self.classify(features)

  def flax_layout(self) -> Layout:
    names = _AutoNames()
    layout = [(names("Conv"), self.stem_conv)]
    if self.stem_norm is not None:
      layout.append((names("BatchNorm"), self.stem_norm))
    for layer in self.blocks:
      layout += layer.flax_layout(names(layer.flax_kind))
    return layout + [(names("BatchNorm"), self.final_norm), ("classifier", self.classifier)]


def densenet121(num_classes: int, **kwargs: Any) -> DenseNet:
  """torchvision's densenet121 configuration: 6,961,031 parameters with 7 classes."""
  return DenseNet(num_classes, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, **kwargs)


# ------------------------------------------------------------------------------------------------------------- U-Net


class _ConvBlock(nn.Module):
  """Two (3x3 conv - norm - ReLU), then dropout; ``[B, C, H, W] -> [B, features, H, W]``."""

  def __init__(self, in_channels: int, features: int, norm: str, dropout: float, bn_momentum: float):
    super().__init__()
    # The conv bias is dropped before batch norm, which would cancel it (as the Flax block).
    bias = norm == "none"
    self.conv1 = nn.Conv2d(in_channels, features, 3, padding=1, bias=bias)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=bias)
    self.norm1 = _batch_norm(features, bn_momentum) if norm == "batch" else None
    self.norm2 = _batch_norm(features, bn_momentum) if norm == "batch" else None
    self.drop = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
      x = conv(x)
      x = F.relu(norm(x) if norm is not None else x)
    return self.drop(x)

  def flax_layout(self, prefix: str) -> Layout:
    names = _AutoNames(prefix + "/")
    layout = []
    for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
      layout.append((names("Conv"), conv))
      if norm is not None:
        layout.append((names("BatchNorm"), norm))
    return layout


def _check_norm(model: str, norm: str) -> None:
  if norm not in ("batch", "none"):
    raise ValueError(f"{model} `norm` must be 'batch' or 'none' in the PyTorch mirror; got {norm!r}")


class UNet(nn.Module):
  """U-Net as ``fedjax_med.models.unet.UNet`` with transposed-conv upsampling and batch or no norm.

  ``forward``: ``[B, C, H, W] -> logits [B, num_classes, H, W]``, H and W divisible by ``2**(len(widths)-1)``.
  """

  def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int] = (16, 32, 64, 128, 256),
               norm: str = "batch", dropout: float | Sequence[float] = 0.0, bn_momentum: float = 0.9,
               upsample: str = "transpose"):
    super().__init__()
    _check_norm("UNet", norm)
    if upsample != "transpose":
      raise ValueError(f"UNet `upsample` must be 'transpose' in the PyTorch mirror; got {upsample!r}")
    widths = tuple(widths)
    if len(widths) < 2:
      raise ValueError(f"UNet `widths` needs at least 2 levels; got {widths}")
    if isinstance(dropout, (int, float)):
      rates = [float(dropout)] * len(widths)
    elif len(dropout) != len(widths):
      raise ValueError(f"UNet `dropout` needs one rate per level ({len(widths)}); got {dropout}")
    else:
      rates = [float(r) for r in dropout]
    self.widths = widths
    inputs = (in_channels, *widths[:-2])
    self.down = nn.ModuleList(_ConvBlock(c, w, norm, r, bn_momentum) for c, w, r in zip(inputs, widths[:-1], rates))
    self.bottleneck = _ConvBlock(widths[-2], widths[-1], norm, rates[-1], bn_momentum)
    # up[i] brings level i+1's output to level i; dec[i] sees [skip, upsampled] = 2 * widths[i] channels.
    self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1))
    self.dec = nn.ModuleList(_ConvBlock(2 * widths[i], widths[i], norm, rates[i], bn_momentum)
                             for i in range(len(widths) - 1))
    self.out = nn.Conv2d(widths[0], num_classes, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, num_classes, H, W]`` logits."""
    _check_divisible(x, len(self.widths))
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x)
      x = F.max_pool2d(x, 2, 2)
    x = self.bottleneck(x)
    for i in reversed(range(len(self.widths) - 1)):
      x = self.dec[i](torch.cat([skips[i], self.up[i](x)], dim=1))
    return self.out(x)

  def flax_layout(self) -> Layout:
    layout = []
    for i, block in enumerate(self.down):
      layout += block.flax_layout(f"down{i}")
    layout += self.bottleneck.flax_layout("bottleneck")
    for i in reversed(range(len(self.widths) - 1)):
      layout += [(f"up{i}", self.up[i])] + self.dec[i].flax_layout(f"dec{i}")
    return layout + [("out", self.out)]


class UNetEncoderProjector(nn.Module):
  """The U-Net contracting path, global average pool, then Linear(hidden) - ReLU - Linear(projection_dim).

  ``forward``: ``[B, C, H, W] -> projection [B, projection_dim]``; ``hidden=0`` means ``widths[-1]``.
  """

  def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "batch",
               projection_dim: int = 128, hidden: int = 0, bn_momentum: float = 0.9, num_classes: int = 0):
    super().__init__()
    del num_classes  # accepted as the Flax model does, unused
    _check_norm("UNetEncoderProjector", norm)
    widths = tuple(widths)
    if len(widths) < 2:
      raise ValueError(f"UNetEncoderProjector `widths` needs at least 2 levels; got {widths}")
    self.widths = widths
    inputs = (in_channels, *widths[:-2])
    self.down = nn.ModuleList(_ConvBlock(c, w, norm, 0.0, bn_momentum) for c, w in zip(inputs, widths[:-1]))
    self.bottleneck = _ConvBlock(widths[-2], widths[-1], norm, 0.0, bn_momentum)
    self.proj_hidden = nn.Linear(widths[-1], hidden or widths[-1])
    self.proj_out = nn.Linear(hidden or widths[-1], projection_dim)

  def encode(self, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, widths[-1]]`` pooled bottleneck features."""
    _check_divisible(x, len(self.widths))
    for block in self.down:
      x = F.max_pool2d(block(x), 2, 2)
    return self.bottleneck(x).mean(dim=(2, 3))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, projection_dim]``."""
    return self.proj_out(F.relu(self.proj_hidden(self.encode(x))))

  def flax_layout(self) -> Layout:
    layout = []
    for i, block in enumerate(self.down):
      layout += block.flax_layout(f"down{i}")
    layout += self.bottleneck.flax_layout("bottleneck")
    return layout + [("proj_hidden", self.proj_hidden), ("proj_out", self.proj_out)]


# --------------------------------------------------------------------------------------------------------- SmallCNN


class SmallCNN(nn.Module):
  """conv3x3-[BN]-ReLU-maxpool per width, global average pool, Linear-ReLU features, dropout + Linear head.

  ``forward``: ``[B, C, H, W] -> (features [B, dense], logits [B, num_classes])``.
  """

  def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int] = (32, 64), dense: int = 128,
               dropout: float = 0.0, norm: str = "none", bn_momentum: float = 0.9):
    super().__init__()
    if norm not in ("none", "batch"):
      raise ValueError(f"SmallCNN `norm` must be 'none' or 'batch'; got {norm!r}")
    inputs = (in_channels, *widths[:-1])
    # No conv bias before batch norm, as the Flax model (it would only carry float noise).
    self.convs = nn.ModuleList(nn.Conv2d(c, w, 3, padding=1, bias=norm == "none") for c, w in zip(inputs, widths))
    self.norms = nn.ModuleList(_batch_norm(w, bn_momentum) for w in widths) if norm == "batch" else None
    self.hidden = nn.Linear(widths[-1], dense)
    self.drop = nn.Dropout(dropout)
    self.out = nn.Linear(dense, num_classes)

  def backbone(self, x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, dense]`` features."""
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if self.norms is not None:
        x = self.norms[i](x)
      x = F.max_pool2d(F.relu(x), 2, 2)
    return F.relu(self.hidden(x.mean(dim=(2, 3))))

  def classify(self, features: torch.Tensor) -> torch.Tensor:
    """Dropout then Linear: ``[B, dense] -> [B, num_classes]``."""
    return self.out(self.drop(features))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C, H, W] -> (features [B, dense], logits [B, num_classes])``."""
    features = self.backbone(x)
    return features, self.classify(features)

  def flax_layout(self) -> Layout:
    layout = []
    for i, conv in enumerate(self.convs):
      layout.append((f"convs_{i}", conv))
      if self.norms is not None:
        layout.append((f"norms_{i}", self.norms[i]))
    return layout + [("hidden", self.hidden), ("out", self.out)]


# ------------------------------------------------------------------------------------------------- Flax -> PyTorch


def _leaf_modules(tree: Mapping, prefix: str = "") -> dict[str, Mapping]:
  """``{"A/B": {"kernel": array, ...}}``: every sub-dict holding arrays, keyed by its path."""
  out: dict[str, Mapping] = {}
  arrays = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
  if arrays:
    out[prefix.rstrip("/")] = arrays
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_leaf_modules(value, f"{prefix}{key}/"))
  return out


def _flax_to_torch(layer: nn.Module, name: str, array: np.ndarray) -> np.ndarray:
  if name == "kernel" and isinstance(layer, nn.ConvTranspose2d):
    # Flax's ConvTranspose (transpose_kernel=False) correlates the stride-dilated input with the kernel as stored;
    # torch's is the gradient of a convolution, i.e. it applies the spatially flipped kernel. So flip H and W, and
    # [kh, kw, in, out] -> torch's [in, out, kh, kw].
    return array[::-1, ::-1].transpose(2, 3, 0, 1)
  if name == "kernel" and isinstance(layer, nn.Conv2d):
    return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if name == "kernel" and isinstance(layer, nn.Linear):
    return array.T  # [in, out] -> [out, in]
  return array


_TARGETS = {  # (collection, Flax entry) -> torch attribute, per layer type
    nn.Conv2d: {("params", "kernel"): "weight", ("params", "bias"): "bias"},
    nn.ConvTranspose2d: {("params", "kernel"): "weight", ("params", "bias"): "bias"},
    nn.Linear: {("params", "kernel"): "weight", ("params", "bias"): "bias"},
    nn.BatchNorm2d: {("params", "scale"): "weight", ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                     ("batch_stats", "var"): "running_var"},
}


def load_flax_variables(module: nn.Module, variables: Mapping) -> None:
  """Copies a Flax variables dict (``{"params": ..., "batch_stats": ...}``) into a mirror built with the same
  configuration. Raises ValueError naming the entry when a path is missing or extra, or when shapes differ."""
  layout = module.flax_layout()
  trees = {c: _leaf_modules(variables.get(c, {})) for c in ("params", "batch_stats")}
  extra = sorted(set(variables) - set(trees))
  if extra:
    raise ValueError(f"Flax variables have collections {extra} that the PyTorch mirror has no place for")
  paths = {path for path, _ in layout}
  for collection, leaves in trees.items():
    unused = sorted(set(leaves) - paths)
    if unused:
      raise ValueError(f"Flax {collection}/{unused[0]} has no PyTorch counterpart (built with another config?)")
  with torch.no_grad():
    for path, layer in layout:
      wanted = {key: attr for key, attr in _TARGETS[type(layer)].items() if getattr(layer, attr) is not None}
      for (collection, entry), attr in wanted.items():
        source = trees[collection].get(path, {})
        if entry not in source:
          raise ValueError(f"Flax {collection}/{path}/{entry} is missing (PyTorch {type(layer).__name__} needs it)")
        target = getattr(layer, attr)
        value = _flax_to_torch(layer, entry, np.asarray(source[entry]))
        if tuple(value.shape) != tuple(target.shape):
          raise ValueError(f"Flax {collection}/{path}/{entry} has shape {np.shape(source[entry])}, which maps to "
                           f"{value.shape}; the PyTorch {type(layer).__name__} expects {tuple(target.shape)}")
        target.copy_(torch.tensor(np.ascontiguousarray(value), dtype=target.dtype))
      leftover = set(trees["params"].get(path, {})) | set(trees["batch_stats"].get(path, {}))
      leftover -= {entry for _, entry in wanted}
      if leftover:
        raise ValueError(f"Flax {path} has entries {sorted(leftover)} that the PyTorch {type(layer).__name__} lacks")
