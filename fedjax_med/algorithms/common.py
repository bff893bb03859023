"""Helpers shared by the algorithms and the tasks: the train-mode forward, the variables' split into parameters and
state, a client's model delta, the exponential moving average (mean teacher, momentum encoder), the initial server
state and the global model as the evaluated one.

This module imports nothing of ``fedjax_med.algorithms`` (the tasks import it too).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjax_med.engine.types import PyTree, ServerState


def apply_train(model: nn.Module, params: PyTree, state: PyTree, images: jax.Array, rng: jax.Array, *,
                constants: PyTree | None = None, **kwargs) -> tuple[PyTree, dict]:
  """Train-mode ``model.apply`` with dropout drawn from ``rng``; returns (outputs, the new ``state``).

  Args:
    state: the non-parameter collections the forward updates (batch statistics); may be empty (no batch norm),
      then it is returned as it is.
    constants: collections the forward reads but never updates (e.g. FedICRA's site embedding).
    kwargs: passed to ``model.apply`` (e.g. ``method=``, ``saliency=``).
  """
  variables = {"params": params, **state, **(constants or {})}
  if state:
    out, new_state = model.apply(variables, images, train=True, rngs={"dropout": rng}, mutable=list(state), **kwargs)
    return out, dict(new_state)
  return model.apply(variables, images, train=True, rngs={"dropout": rng}, **kwargs), state


def split_state(variables: PyTree) -> tuple[PyTree, dict]:
  """``(variables['params'], the other collections)``."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def model_delta(server_state: ServerState, local) -> PyTree:
  """The client's variables (``local['params']`` + ``local['state']``) minus the broadcast global ones."""
  return jax.tree.map(jnp.subtract, {"params": local["params"], **local["state"]}, server_state.params)


def ema(average: PyTree, new: PyTree, decay: jax.Array | float) -> PyTree:
  """``decay * average + (1 - decay) * new`` leaf by leaf: the mean teacher (Tarvainen & Valpola, NeurIPS 2017)
  and the momentum encoder (He et al., MoCo, CVPR 2020)."""
  return jax.tree.map(lambda a, n: decay * a + (1.0 - decay) * n, average, new)


def initial_server_state(variables: PyTree, rng: jax.Array, server_tx: optax.GradientTransformation,
                         extra: PyTree | None = None) -> ServerState:
  """Round 0: the initial ``variables``, ``server_tx``'s state of their parameters, and the algorithm's ``extra``
  state (``{}`` when None)."""
  return ServerState(params=variables, opt_state=server_tx.init(variables["params"]), round=jnp.zeros((), jnp.int32),
                     rng=rng, extra={} if extra is None else extra)


def global_variables(server_state: ServerState, client_state) -> PyTree:
  """``FederatedAlgorithm.eval_variables`` of an algorithm without personalisation: the global model for every
  client."""
  del client_state
  return server_state.params
