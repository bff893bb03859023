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
    phases: ``()`` (every step is the same function) or the lengths of consecutive
      phases of the local update (e.g. ``(2, 10)``: 2 steps of one kind, then 10 of
      another). With phases, ``step`` takes a fourth, static argument, the phase
      index, and the engine lowers each phase as its own loop or program: a step
      computes only its own phase's work (no branch computed and discarded). The
      lengths must add up to the cohort's local steps; every phase returns the
      same metric keys.
  """

  client_init: Callable[[PyTree, jax.Array], PyTree]
  start: Callable[[ServerState, PyTree, jax.Array], PyTree]
  step: Callable[..., tuple[PyTree, Metrics]]
  finish: Callable[[ServerState, PyTree, PyTree], tuple[PyTree, PyTree, Metrics]]
  phases: tuple[int, ...] = ()

  def phase_of(self, index: int) -> int | None:
    """The phase (static) of local step ``index``; ``None`` for a cohort without phases."""
    if not self.phases:
      return None
    end = 0
    for phase, length in enumerate(self.phases):
      end += length
      if index < end:
        return phase
    raise ValueError(f"local step {index} is past the cohort's phases {self.phases} (they must add up to the "
                     "local steps)")

  def segments(self, num_steps: int) -> list[tuple[int | None, int, int]]:
    """``(phase, first step, end step)`` of each phase; one ``(None, 0, num_steps)`` without phases."""
    if not self.phases:
      return [(None, 0, num_steps)]
    if sum(self.phases) != num_steps:
      raise ValueError(f"the cohort's phases {self.phases} add up to {sum(self.phases)} local steps, the local "
                       f"plan has {num_steps} (config.client.local_steps)")
    bounds = [0]
    for length in self.phases:
      bounds.append(bounds[-1] + length)
    return [(p, a, b) for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


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
    eval_variants: ``None`` or name -> ``(server_state, client_state) -> variables``: more per-client models to
      evaluate beside ``eval_variables`` when clients are evaluated one by one (e.g. the global model with a
      site's own embedding beside the personalised model); reported as ``<name>/<metric>``.
    server_secret: whether ``server_update`` takes a third argument, a fresh per-round PRNG key that nothing
      on disk or on the wire determines (a DP mechanism's noise and sampling, ``engine.privacy``). The caller of
      a round supplies it; the engine never stores it.
  """

  init: Callable[[PyTree, jax.Array], ServerState]
  cohorts: Mapping[str, CohortSpec]
  server_update: Callable[[ServerState, Mapping[str, ClientResults]], tuple[ServerState, Metrics]]
  eval_variables: Callable[[ServerState, PyTree | None], PyTree]
  participates: Callable[[str, int], bool] | None = None
  eval_variants: Mapping[str, Callable[[ServerState, PyTree], PyTree]] | None = None
  server_secret: bool = False
