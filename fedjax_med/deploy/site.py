"""The two halves of a round, apart: what one site computes and what the server does with the replies.

A deployment runs the same pure functions as the simulation (``engine.execution``), split at the wire:

* :class:`SiteTrainer` (at a hospital): one client's local update, ``make_client_round`` of its cohort, on its own
  data, from the broadcast server state and its persistent client state (which never leaves the site);
* :class:`Coordinator` (at the server): the selection of each round and the algorithm's ``server_update`` over the
  messages the sites sent, stacked in client-id order.

Nothing here knows about a transport; ``deploy.flower_apps`` carries these values over Flower. Sites and server
build the same config, so the model, the PRNG keys (``fold_in(fold_in(seed key, round), client id)``) and the
server state's structure agree, and a round over the wire equals a ``sequential`` simulation round up to
floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedjax_med import experiment, train
from fedjax_med.engine import aggregation, execution
from fedjax_med.engine.types import ClientResults, PyTree, ServerState


def to_arrays(tree: PyTree) -> list[np.ndarray]:
  """A pytree's leaves as host arrays, in ``jax.tree`` order (what goes on the wire)."""
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def from_arrays(arrays: Sequence[np.ndarray], template: PyTree, what: str) -> PyTree:
  """The inverse of :func:`to_arrays` given a pytree of the same structure; checks count, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(template)
  if len(arrays) != len(leaves):
    raise ValueError(f"{what}: received {len(arrays)} arrays, the config's model expects {len(leaves)} (do server "
                     "and site run the same config and version?)")
  for i, (got, want) in enumerate(zip(arrays, leaves)):
    if np.shape(got) != np.shape(want) or np.asarray(got).dtype != np.asarray(want).dtype:
      raise ValueError(f"{what}: array {i} has shape {np.shape(got)} {np.asarray(got).dtype}, expected "
                       f"{np.shape(want)} {np.asarray(want).dtype}")
  return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])


class Reply(NamedTuple):
  """What a site sends back after its local update: the algorithm's message and scalar metrics, nothing else.

  num_examples: the site's training examples (its FedAvg weight).
  """

  site: int
  message: list[np.ndarray]
  num_examples: int
  metrics: dict[str, float]


def _locate(exp: experiment.Experiment, site: int) -> tuple[str, int]:
  for cohort, ids in exp.cohorts.items():
    if site in ids:
      return cohort, ids.index(site)
  raise ValueError(f"site {site} is not a client of this config (clients 0..{len(exp.client_datasets) - 1})")


class SiteTrainer:
  """One site's local update. ``config.data.root`` must point at the site's prepared data.

  The site builds the experiment from the config like the simulation and keeps only its own client (``site`` = its
  position in the config's partition); its data never leave it.
  """

  def __init__(self, config: ml_collections.ConfigDict, site: int):
    self.exp = exp = experiment.build(config)
    self.site = site
    self.cohort, self.position = _locate(exp, site)
    spec = exp.algorithm.cohorts[self.cohort]
    self.server_template, client_states = experiment.initial_state(exp)
    self.initial_client_state = jax.tree.map(lambda x: x[self.position], client_states[self.cohort])
    self._round = jax.jit(execution.make_client_round(spec, exp.batch_fns[self.cohort], exp.plans[self.cohort],
                                                      train.scan_unroll(config)))

  def train(self, server_arrays: Sequence[np.ndarray], client_arrays: Sequence[np.ndarray] | None
            ) -> tuple[list[np.ndarray], Reply]:
    """One local update from the broadcast server state; returns (new client state, reply)."""
    server_state = from_arrays(server_arrays, self.server_template, "server state")
    client_state = (self.initial_client_state if client_arrays is None
                    else from_arrays(client_arrays, self.initial_client_state, "client state"))
    data = self.exp.data_for_round(int(server_state.round))[self.cohort]
    take = lambda tree: jax.tree.map(lambda x: x[self.position], tree)
    client_state, message, metrics = self._round(server_state, client_state, take(data.arrays),
                                                 data.counts[self.position], data.steps[self.position],
                                                 data.client_ids[self.position])
    count = int(data.counts[self.position])
    scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}
    return to_arrays(client_state), Reply(self.site, to_arrays(message), count, scalars)


class Coordinator:
  """The server side: initial state, who trains each round, and the aggregation of the sites' replies."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.exp = exp = experiment.build(config)
    self.config = config
    self.server_state, client_states = experiment.initial_state(exp)
    # a message's structure, by abstract evaluation of one client's start and finish
    self.message_templates = {cohort: _message_template(exp, cohort, self.server_state, client_states[cohort])
                              for cohort in exp.cohorts}
    self._update = jax.jit(self._server_update)

  def selected_sites(self, round_num: int) -> list[int]:
    """Global client ids that train in ``round_num`` (the simulation's selection)."""
    selection = train.selection_for(self.exp, round_num)
    return sorted(int(self.exp.cohorts[name][p]) for name, positions in selection.items() for p in positions)

  def _server_update(self, server_state: ServerState, results: Mapping[str, ClientResults], secret_key):
    secret = (secret_key,) if self.exp.algorithm.server_secret else ()  # DP: the mechanism's key, server-side only
    new, metrics = self.exp.algorithm.server_update(server_state, results, *secret)
    return new.replace(round=server_state.round + 1), metrics

  def check(self, reply: Reply) -> None:
    """ValueError unless ``reply`` is from a client of this config and its message has the expected structure."""
    cohort, _ = _locate(self.exp, reply.site)
    from_arrays(reply.message, self.message_templates[cohort], f"message of site {reply.site}")

  def aggregate(self, replies: Sequence[Reply]) -> tuple[ServerState, dict[str, Any]]:
    """Stacks the replies per cohort in client-id order, drops non-finite ones, runs ``server_update``."""
    if not replies:
      raise ValueError("no site replied this round")
    results = {}
    for cohort, ids in self.exp.cohorts.items():
      mine = sorted((r for r in replies if r.site in ids), key=lambda r: r.site)
      if not mine:
        continue
      messages = [from_arrays(r.message, self.message_templates[cohort], f"message of site {r.site}") for r in mine]
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *messages)
      weights = execution.client_weights(self.config.aggregation.weighting,
                                         jnp.asarray([r.num_examples for r in mine]), aggregation.is_finite(stacked))
      results[cohort] = ClientResults(stacked, weights, jnp.asarray([r.site for r in mine]))
    secret = train.mechanism_key(self.exp, self.server_state)  # drawn here, never sent to a site
    self.server_state, metrics = self._update(self.server_state, results, secret)
    return self.server_state, {k: np.asarray(v).tolist() for k, v in jax.device_get(metrics).items()}


def _message_template(exp: experiment.Experiment, cohort: str, server_state: ServerState, states: PyTree) -> PyTree:
  """The structure (shapes, dtypes) of one client's message, by abstract evaluation (no computation)."""
  spec = exp.algorithm.cohorts[cohort]
  state = jax.tree.map(lambda x: x[0], states)
  local = jax.eval_shape(spec.start, server_state, state, jax.random.PRNGKey(0))
  _, message, _ = jax.eval_shape(spec.finish, server_state, state, local)
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), message)
