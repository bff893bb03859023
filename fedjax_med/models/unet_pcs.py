"""FedICRA's U-Net: personalised channel selection (PCS) at the bottleneck and auxiliary heads.

Lin et al., "Unifying and Personalizing Weakly-supervised Federated Medical Image Segmentation via Adaptive
Representation and Aggregation", arXiv 2304.05635. PCS: a one-hot site embedding ``e`` goes through
``E = W2 relu(W1 e)``; the channel gate is ``h = sigmoid(fc(avgpool(x) ++ E) + fc(maxpool(x) ++ E))`` with one
shared two-layer ``fc``, and the bottleneck becomes ``x * h + x``. Three auxiliary heads on the last three decoder
stages give the feature maps of the multiscale tree energy loss (they get no direct supervision).

Unlike the official code, the PCS layers are registered parameters: trained, aggregated and checkpointed.
The site embedding is the ``site/onehot`` variable (``[num_sites]``; zeros = no site), so a personalised model's
variables carry their site and ``model.apply(variables, images, train=False)`` needs no extra argument.
The gates every other site's embedding would give are computed from the same pooled features (``gates_all``):
the encoder runs once, not once per site.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_med.models import layers
from fedjax_med.models.unet import ConvBlock, UNet


class ChannelSelection(nn.Module):
  """PCS gates of pooled features ``[B, F]`` (avg, max) for each of ``embeddings [E, num_sites]`` -> ``[B, E, F]``."""

  num_sites: int
  features: int
  reduction: int = 16

  @nn.compact
  def __call__(self, avg: jax.Array, peak: jax.Array, embeddings: jax.Array) -> jax.Array:
    embed = nn.Dense(self.features, use_bias=False, name="embed_1")(embeddings)
    embed = nn.Dense(self.features, use_bias=False, name="embed_2")(nn.relu(embed))  # [E, F]
    hidden = nn.Dense(max(self.features // self.reduction, 1), use_bias=False, name="fc_1")
    out = nn.Dense(self.features, use_bias=False, name="fc_2")
    shape = (avg.shape[0], embed.shape[0], self.features)

    def score(pooled):  # [B, F] -> [B, E, F]
      both = jnp.concatenate([jnp.broadcast_to(pooled[:, None], shape), jnp.broadcast_to(embed[None], shape)], -1)
      return out(nn.relu(hidden(both)))

    return jax.nn.sigmoid(score(avg) + score(peak))


class AuxHead(nn.Module):
  """Conv3x3 - BN - ReLU - dropout - Conv1x1 (no bias), as the official ``dsn`` heads."""

  num_classes: int
  width: int
  dropout: float
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
    x = nn.relu(layers.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x))
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2))(x, deterministic=not train)
    return nn.Conv(self.num_classes, (1, 1), use_bias=False)(x)


class UNetPCS(nn.Module):
  """U-Net (parameter names as :class:`UNet`) with PCS at the bottleneck and ``num_aux`` auxiliary heads.

  Returns ``{"logits": [B, H, W, C], "aux": tuple of [B, h_i, w_i, C] (coarse to fine), "gate": [B, F] (own
  site), "gates_all": [B, K, F] (every site's embedding), "features": gated bottleneck}``.
  """

  num_classes: int
  num_sites: int = 5
  widths: Sequence[int] = (16, 32, 64, 128, 256)
  dropout: float | Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5)  # the official encoder's
  norm: str = "batch"
  group_norm_groups: int = 8
  bn_momentum: float = 0.9
  pcs_reduction: int = 16
  num_aux: int = 3
  aux_width: int = 512  # official: 512 channels in every head
  aux_dropout: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict:
    base = UNet(self.num_classes, widths=self.widths, norm=self.norm, dropout=self.dropout)
    base._check(x)
    rates = base._rates()
    if not 0 <= self.num_aux < len(self.widths):
      raise ValueError(f"UNetPCS num_aux must be in [0, {len(self.widths) - 1}]; got {self.num_aux}")
    onehot = self.variable("site", "onehot", lambda: jnp.zeros((self.num_sites,), jnp.float32)).value
    skips = []
    for i in range(len(self.widths) - 1):
      x = ConvBlock(self.widths[i], self.norm, self.group_norm_groups, rates[i], self.bn_momentum,
                    name=f"down{i}")(x, train=train)
      skips.append(x)
      x = layers.max_pool_blocks(x)
    x = ConvBlock(self.widths[-1], self.norm, self.group_norm_groups, rates[-1], self.bn_momentum,
                  name="bottleneck")(x, train=train)
    pcs = ChannelSelection(self.num_sites, self.widths[-1], self.pcs_reduction, name="pcs")
    # row 0: the own embedding (zeros for a model without a site); rows 1..K: every site's one-hot
    gates = pcs(jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2)),
                jnp.concatenate([onehot[None], jnp.eye(self.num_sites)], axis=0))
    gate, gates_all = gates[:, 0], gates[:, 1:]
    x = features = x * gate[:, None, None, :] + x
    aux = []
    for i in reversed(range(len(self.widths) - 1)):
      x = layers.BlockConvTranspose(self.widths[i], (2, 2), name=f"up{i}")(x)
      x = ConvBlock(self.widths[i], self.norm, self.group_norm_groups, 0.0, self.bn_momentum,
                    name=f"dec{i}")(jnp.concatenate([skips[i], x], axis=-1), train=train)
      if i < self.num_aux:  # the last num_aux decoder stages
        aux.append(AuxHead(self.num_classes, self.aux_width, self.aux_dropout, self.bn_momentum,
                           name=f"aux{len(aux)}")(x, train=train))
    return {"logits": nn.Conv(self.num_classes, (3, 3), name="out")(x), "aux": tuple(aux), "gate": gate,
            "gates_all": gates_all, "features": features}
