"""Pooling layers lowered for speed on every backend.

``flax.linen.max_pool`` is a ``reduce_window``; its gradient is a ``select_and_scatter``, which XLA:CPU runs
slowly: on this project's 2-core CPU the max-pool backward took 58-67 % of a small CNN's training step (SmallCNN
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

import jax


def max_pool_blocks(x: jax.Array, size: tuple[int, int] = (2, 2)) -> jax.Array:
  """Max over non-overlapping ``size`` windows (stride = window): ``[B, H, W, C] -> [B, H // sh, W // sw, C]``."""
  sh, sw = size
  b, h, w, c = x.shape
  oh, ow = h // sh, w // sw
  x = x[:, : oh * sh, : ow * sw]
  return x.reshape(b, oh, sh, ow, sw, c).max(axis=(2, 4))
