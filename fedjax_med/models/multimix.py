"""MultiMix's multi-task U-Net: a shared encoder with a classification branch, and a segmentation decoder that
also receives the saliency bridge (Haque et al., "MultiMix", ISBI 2021; MELBA 2021).

Blocks as the official code: two 3x3 conv - instance norm (no affine) - LeakyReLU(0.2), then dropout. The
classifier: max-pool of the deepest features, global average, dense. The decoder upsamples bilinearly and
concatenates the skips; at its first stage it also concatenates the *saliency bridge*: the input image and its
saliency map (the absolute input-gradient of each sample's top class score, :func:`saliency`), resized to that
stage's resolution. ``use_saliency=False`` is the UMTL ablation (no bridge).

The saliency is an input of ``__call__`` (computed by the task with the model's own classifier, eval mode, no
second-order terms); ``saliency=None`` is only for ``init`` and gives a zero map.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models import layers


class DoubleConv(nn.Module):
  features: int
  dropout: float

  @nn.compact
  def __call__(self, x, *, train):
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3))(x)
      x = nn.GroupNorm(num_groups=None, group_size=1, use_scale=False, use_bias=False, epsilon=1e-5)(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class MultiMixNet(nn.Module):
  """Returns ``{"logits": [B, num_classes], "seg_logits": [B, H, W, num_mask_classes], "features": [B, F]}``.

  Input ``[B, H, W, C]`` with H, W divisible by ``2**len(widths)`` (the classifier pools once more).
  """

  num_classes: int
  num_mask_classes: int = 2
  widths: Sequence[int] = (16, 32, 64, 128, 256)
  dropout: float = 0.25
  use_saliency: bool = True

  def setup(self):
    self.down = [DoubleConv(w, self.dropout, name=f"down{i}") for i, w in enumerate(self.widths)]
    self.head = nn.Dense(self.num_classes, name="head")
    self.dec = [DoubleConv(self.widths[i], self.dropout, name=f"dec{i}") for i in range(len(self.widths) - 1)]
    self.out = nn.Conv(self.num_mask_classes, (1, 1), name="out")

  def _encode(self, x, train):
    skips = []
    for i, block in enumerate(self.down):
      x = block(x, train=train)
      if i < len(self.down) - 1:
        skips.append(x)
        x = layers.max_pool_blocks(x)
    pooled = jnp.mean(layers.max_pool_blocks(x), axis=(1, 2))
    return skips, x, pooled

  def classify(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Class logits ``[B, num_classes]`` from the encoder alone."""
    return self.head(self._encode(x, train)[2])

  def __call__(self, x: jax.Array, *, train: bool, saliency: jax.Array | None = None) -> dict:
    factor = 2 ** len(self.widths)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"MultiMixNet input height and width must be divisible by {factor}; got {x.shape}")
    skips, deepest, pooled = self._encode(x, train)
    y = deepest
    for i in reversed(range(len(self.widths) - 1)):
      batch, height, width, channels = skips[i].shape
      y = jax.image.resize(y, (batch, height, width, y.shape[-1]), "bilinear")
      parts = [y, skips[i]]
      if self.use_saliency and i == len(self.widths) - 2:  # the first decoder stage
        sal = jnp.zeros(x.shape[:3] + (1,), x.dtype) if saliency is None else saliency
        bridge = jnp.concatenate([x, sal], axis=-1)
        parts.append(jax.image.resize(bridge, (batch, height, width, bridge.shape[-1]), "bilinear"))
      y = self.dec[i](jnp.concatenate(parts, axis=-1), train=train)
    return {"logits": self.head(pooled), "seg_logits": self.out(y), "features": pooled}


def saliency(model: MultiMixNet, variables: dict, images: jax.Array) -> jax.Array:
  """``|d max_c logit_c(x_b) / d x_b|`` per sample and pixel, max over input channels: ``[B, H, W, 1]``.

  Eval mode (no dropout, as the official code switches the encoder to eval for this pass); the result is a
  constant for the training loss (stop_gradient: no second-order terms). Each sample's score depends only on its
  own input, so the gradient of the sum is every sample's own gradient.
  """
  def top_scores(x):
    logits = model.apply(variables, x, train=False, method=MultiMixNet.classify)
    return jnp.sum(jnp.max(logits, axis=-1))

  grad = jax.grad(top_scores)(jax.lax.stop_gradient(images))
  return jax.lax.stop_gradient(jnp.max(jnp.abs(grad), axis=-1, keepdims=True))
