"""A tiny conv model and toy clients shared by the engine and algorithm tests."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjax_med.data.format import PreparedDataset


class TinyConvNet(nn.Module):
  """conv - relu - batch norm - mean pool - dense: conv weights, batch stats and a head in 3 layers."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = jnp.mean(x, axis=(1, 2))
    return {"logits": nn.Dense(self.num_classes)(x), "features": x}


def toy_client(seed: int, count: int) -> PreparedDataset:
  """``count`` random 8x8 grey images with labels in {0, 1, 2}."""
  rng = np.random.default_rng(seed)
  return PreparedDataset({
      "images": rng.integers(0, 255, (count, 8, 8, 1), dtype=np.uint8),
      "labels": rng.integers(0, 3, count).astype(np.int32),
      "group": np.arange(count).astype(str), "site": np.full(count, "s"), "split": np.full(count, "train"),
  }, {})
