"""Layers whose gradients XLA:CPU runs slowly in their flax form, rewritten as reshapes and matmuls.

Both give flax's values and parameters (same names, shapes and initialisers), so checkpoints and results carry over.

**Max-pool.** ``flax.linen.max_pool`` is a ``reduce_window``; its gradient is a ``select_and_scatter``, which XLA:CPU
runs slowly: on this project's 2-core CPU the max-pool backward took 58-67 % of a small CNN's training step (SmallCNN
(32, 64, 128) at 32x32, batch 32: 44.6 ms per SGD step with ``nn.max_pool``, 18.5 ms with the reshape below; a
4-level U-Net encoder at 64x64, batch 16: 41.0 -> 13.4 ms). A non-overlapping window is a reshape followed by a
``max`` reduction, whose gradient is an elementwise comparison that XLA fuses with its neighbours.

Same forward values as ``nn.max_pool`` with ``padding="VALID"`` (rows and columns that do not fill a window are
dropped). Same gradient wherever a window's maximum is unique; where several entries tie for the maximum the
gradient is split equally between them (``jnp.max``'s rule) instead of going to the first one. After a ReLU the
common tie is a window of zeros, where the ReLU's gradient is zero either way.

Overlapping windows (the DenseNet stem's 3x3 / 2) keep ``nn.max_pool``: a max over strided slices measured no
faster there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_blocks(x: jax.Array, size: tuple[int, int] = (2, 2)) -> jax.Array:
  """Max over non-overlapping ``size`` windows (stride = window): ``[B, H, W, C] -> [B, H // sh, W // sw, C]``."""
  sh, sw = size
  b, h, w, c = x.shape
  oh, ow = h // sh, w // sw
  x = x[:, : oh * sh, : ow * sw]
  return x.reshape(b, oh, sh, ow, sw, c).max(axis=(2, 4))


class BlockConvTranspose(nn.Module):
  """``nn.ConvTranspose(features, kernel_size, strides=kernel_size)`` as a matmul and a depth-to-space reshape.

  ``[B, H, W, C_in] -> [B, kh * H, kw * W, features]``; parameters ``kernel [kh, kw, C_in, features]`` and
  ``bias [features]`` initialised as flax's. flax applies the kernel flipped in both spatial axes (a convolution,
  not a correlation, over the dilated input), so output pixel ``(kh*i + a, kw*j + b)`` takes ``kernel[kh-1-a,
  kw-1-b]``.
  """

  features: int
  kernel_size: tuple[int, int] = (2, 2)
  kernel_init: jax.nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: jax.nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    blocks = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel[::-1, ::-1])
    b, h, _, w, _, o = blocks.shape
    return blocks.reshape(b, h * kh, w * kw, o) + bias
