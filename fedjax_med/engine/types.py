"""The contracts between the engine and a federated algorithm.

An algorithm is a set of pure functions over explicit pytrees (compare optax's
``GradientTransformation(init, update)`` and fedjax's ``FederatedAlgorithm``):

* ``init(variables, rng) -> ServerState`` once;
* per cohort (a group of clients running the same local update, e.g. labeled and
  unlabeled clients), a :class:`CohortSpec` of four pure functions for ONE client:
  ``client_init`` (persistent per-client state), ``start`` (receive the broadcast),
  ``step`` (one local step on one batch) and ``finish`` (what the client keeps and
  what it sends to the server);
* ``server_update(server_state, results) -> (server_state, metrics)``.

The engine owns everything else: client selection, PRNG derivation, how the client
axis and the local-step loop are lowered (see ``execution.py``), finiteness
checks and bookkeeping of the round counter. It never looks at what an algorithm
is called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.struct
import jax

PyTree = Any
Batch = Mapping[str, jax.Array]
Metrics = Mapping[str, jax.Array]


@flax.struct.dataclass
class ServerState:
  """Everything the server carries between rounds.

  Attributes:
    params: the global model variables (``{"params": ..., "batch_stats": ...}``).
    opt_state: the server optimizer state (optax).
    round: int32 scalar, the number of completed rounds.
    rng: uint32[2], the run's base PRNG key; per-round keys are derived from it.
    extra: algorithm state (e.g. a relation matrix, a feature bank); ``{}`` if none.
  """

  params: PyTree
  opt_state: PyTree
  round: jax.Array
  rng: jax.Array
  extra: PyTree


class ClientResults(NamedTuple):
  """What the clients of one cohort sent in one round, stacked over participants.

  Attributes:
    messages: pytree, every leaf ``[num_participants, ...]``.
    weights: float32 ``[num_participants]`` aggregation weights; zero for a client
      whose message was not finite (it is left out of every aggregate).
    client_ids: int32 ``[num_participants]`` global client ids.
  """

  messages: PyTree
  weights: jax.Array
  client_ids: jax.Array


class CohortSpec(NamedTuple):
  """The local update of one cohort, written for a single client.

  Attributes:
    client_init: ``(variables, rng) -> client_state``; persistent state of one
      client (personal parameters, optimizer state, teacher, memory bank...).
    start: ``(server_state, client_state, rng) -> local_state``.
    step: ``(local_state, batch, rng) -> (local_state, metrics)``; scalar metrics.
    finish: ``(server_state, client_state, local_state) -> (client_state, message,
      metrics)``; ``message`` is what crosses the wire to the server.
  """

  client_init: Callable[[PyTree, jax.Array], PyTree]
  start: Callable[[ServerState, PyTree, jax.Array], PyTree]
  step: Callable[[PyTree, Batch, jax.Array], tuple[PyTree, Metrics]]
  finish: Callable[[ServerState, PyTree, PyTree], tuple[PyTree, PyTree, Metrics]]


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm: server init, one local update per cohort, server update.

  Attributes:
    init: ``(variables, rng) -> ServerState``.
    cohorts: cohort name -> :class:`CohortSpec`.
    server_update: ``(server_state, {cohort: ClientResults}) -> (server_state,
      metrics)``. It must not touch ``round`` (the engine advances it).
    eval_variables: ``(server_state, client_state | None) -> variables`` used for
      evaluation: the global model, or a client's personalised model.
    participates: optional host-side ``(cohort, round) -> bool``: whether a cohort
      trains in a round (e.g. a warm-up of the labeled clients alone); ``None`` =
      every cohort every round. A round without a cohort is a different program
      (compiled once), and ``server_update`` receives results only for those present.
  """

  init: Callable[[PyTree, jax.Array], ServerState]
  cohorts: Mapping[str, CohortSpec]
  server_update: Callable[[ServerState, Mapping[str, ClientResults]], tuple[ServerState, Metrics]]
  eval_variables: Callable[[ServerState, PyTree | None], PyTree]
  participates: Callable[[str, int], bool] | None = None
