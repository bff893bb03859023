"""Client optimizers from config."""

from __future__ import annotations

import ml_collections
import optax


def client_optimizer(client: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``client.optimizer`` in sgd (with momentum) / adam / adamw, constant ``client.learning_rate``.

  ``client.weight_decay`` is L2 added to the gradient for sgd and adam (as torch's
  ``weight_decay`` does) and decoupled for adamw.
  """
  lr, wd = client.learning_rate, client.weight_decay
  if client.optimizer == "sgd":
    base = optax.sgd(lr, momentum=client.momentum or None)
  elif client.optimizer == "adam":
    base = optax.adam(lr)
  elif client.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=wd)
  else:
    raise ValueError(f"unknown client.optimizer {client.optimizer!r}; allowed: ('sgd', 'adam', 'adamw')")
  return optax.chain(optax.add_decayed_weights(wd), base) if wd else base
