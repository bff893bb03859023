"""Layers whose gradients XLA:CPU runs slowly in their flax form, rewritten as reshapes and matmuls.

Each gives flax's values and parameters (same names, shapes and initialisers), so checkpoints carry over.

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

**Transposed convolution with stride = kernel** (the U-Net's 2x2 / 2 up-sampling). ``nn.ConvTranspose`` lowers to
a convolution over a zero-dilated input, mostly multiplications by the inserted zeros: 25.1 ms forward + backward
for 32 -> 16 channels from 32x32 to 64x64, batch 16. Every input pixel produces its own ``k x k`` output block, so
the layer is one matmul ``[..., C_in] x [C_in, k*k*C_out]`` and a depth-to-space reshape: 8.4 ms; a 4-level U-Net
Adam step (batch norm, 64x64, batch 16) 252 -> 161 ms.

**Batch norm in training mode.** Differentiating flax's ``BatchNorm`` through its batch statistics leaves XLA many
reductions and broadcasts per layer; the closed-form gradient (Ioffe & Szegedy, "Batch Normalization", ICML 2015,
section 3) needs two per-channel sums. DenseNet-121 (120 batch norms) Adam step at 64x64, batch 16: 349 -> 293 ms,
its compilation 34 -> 24 s. Same variables (``params``: scale, bias; ``batch_stats``: mean, var), defaults and
running-average update as ``flax.linen.BatchNorm`` with its default fast variance ``E[x^2] - E[x]^2``.
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


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over every axis but the last, as flax's fast variance: E[x^2] - E[x]^2."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)


def _normalize(x, mean, var, scale, bias, epsilon) -> tuple[jax.Array, jax.Array]:
  """``(x - mean) / sqrt(var + epsilon) * scale + bias`` in flax's operation order, and ``1 / sqrt(var + epsilon)``."""
  inv = jax.lax.rsqrt(var + epsilon)
  return (x - mean) * (inv * scale) + bias, inv


def _batch_norm_forward(x, scale, bias, epsilon):
  mean, var = _moments(x)
  y, inv = _normalize(x, mean, var, scale, bias, epsilon)
  return y, mean, var, inv


@jax.custom_vjp
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode batch norm of ``x [..., C]`` over all axes but the last -> ``(y, batch mean [C], batch var [C])``."""
  return _batch_norm_forward(x, scale, bias, epsilon)[:3]


def _batch_norm_fwd(x, scale, bias, epsilon):
  y, mean, var, inv = _batch_norm_forward(x, scale, bias, epsilon)
  return (y, mean, var), (x, scale, mean, inv)


def _batch_norm_bwd(residuals, cotangents):
  x, scale, mean, inv = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x - mean
  xhat = centred * inv
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xhat, axes)
  # dL/dx through y (the textbook form) plus through the batch mean and variance, if anything used them
  dx = (scale * inv) * (dy - dbias / n - xhat * (dscale / n)) + dmean / n + dvar * (2.0 / n) * centred
  return dx, dscale, dbias, None


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def grouped_batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, groups: int):
  """:func:`batch_norm_train` on each of ``groups`` equal consecutive slices of the batch axis of ``x [N, ..., C]``
  ("ghost" batches) -> ``(y [N, ..., C], batch means [groups, C], batch variances [groups, C])``.

  Only the normalisation is mapped over the groups; the layers around it see one batch of ``N``, so convolutions
  run over all ``N`` images at once (on XLA:CPU faster than mapping the whole network over the groups).
  """
  if x.shape[0] % groups:
    raise ValueError(f"batch norm groups={groups} must divide the batch axis; got shape {x.shape}")
  grouped = x.reshape(groups, -1, x.shape[-1])
  y, mean, var = jax.vmap(batch_norm_train, in_axes=(0, None, None, None))(grouped, scale, bias, epsilon)
  return y.reshape(x.shape), mean, var


class BatchNorm(nn.Module):
  """Drop-in for ``flax.linen.BatchNorm`` over the last axis, with the closed-form training-mode gradient.

  ``groups > 1`` (training only): statistics per consecutive slice of the batch axis, and the running statistics
  updated once per slice in order, so one call on ``groups`` concatenated batches equals ``groups`` calls one after
  another (how FedIRM runs its augmented views as one pass).
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", nn.initializers.ones, features)
    bias = self.param("bias", nn.initializers.zeros, features)
    if use_running_average:
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)[0]
    if self.groups == 1:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
      means, variances = [mean], [var]  # the ungrouped program unchanged (no slices)
    else:
      y, means, variances = grouped_batch_norm_train(x, scale, bias, self.epsilon, self.groups)
    if not self.is_initializing():
      for mean, var in zip(means, variances):
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
