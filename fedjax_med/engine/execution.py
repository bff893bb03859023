"""How a round is lowered: the client axis and the local-step loop.

One round = local update of the selected clients of every cohort -> finiteness
check -> weighted aggregation -> server update. The per-client computation is the
same function in every strategy; only its lowering differs:

* ``vmap``: the selected clients of a cohort as one vmapped program (the
  accelerator path: one program over stacked client pytrees).
* ``unrolled``: the clients unrolled one after another inside one jitted program.
* ``sequential``: one jitted per-client program called from Python per client,
  then one jitted aggregation.
* ``sharded``: ``vmap`` with the client axis sharded over a device mesh (every local
  device of every process, ``jax.sharding.Mesh`` axis ``clients``); a cohort whose
  participant count is not a multiple of the device count is padded with copies of its
  first participant whose outputs are dropped before aggregation (they weigh nothing),
  and the aggregation's sums over clients become cross-device reductions.
* ``stepwise``: like ``sequential`` but the per-client program is split into a
  jitted begin / single step / end, the step called from Python once per local
  step (data stay on the device and dispatch is asynchronous, so there is no
  host sync per step). Its program is one step long, so it compiles in the time
  of one step where an unrolled scan of K steps takes ~K times longer.

On XLA:CPU vmapping conv weights lowers to grouped convolutions that run ~4x
slower than a loop, and a conv inside a ``lax.scan`` body runs ~20x slower than
unrolled (measured, see the project's cpu-performance notes; jax issue #12868),
hence the choice, and local steps run in a ``lax.scan`` whose ``unroll`` is a
setting. Keys are ``fold_in(fold_in(rng, round), client_id)`` so that every
strategy, participation order and resumption sees the same random numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med.engine import aggregation, privacy, sampling
from fedjax_med.engine.types import Batch, ClientResults, CohortSpec, FederatedAlgorithm, PyTree, ServerState

STRATEGIES = ("vmap", "unrolled", "sequential", "stepwise", "sharded")
CLIENT_AXIS = "clients"
WEIGHTINGS = ("num_examples", "uniform")

BatchFn = Callable[[Mapping[str, jax.Array], jax.Array, jax.Array], Batch]


class CohortData(NamedTuple):
  """The device-resident training data of one cohort.

  Attributes:
    arrays: name -> ``[num_clients, max_count, ...]`` (padded per client).
    counts: int32 ``[num_clients]`` real examples per client.
    client_ids: int32 ``[num_clients]`` global client ids (used for keys).
    steps: int32 ``[num_clients]`` local steps of each client this round (equal
      to ``LocalPlan.num_steps`` unless local epochs are used).
  """

  arrays: Mapping[str, jax.Array]
  counts: jax.Array
  client_ids: jax.Array
  steps: jax.Array


class LocalPlan(NamedTuple):
  """Static shape of a cohort's local update.

  Attributes:
    num_steps: steps of the longest client (the scan length).
    batch_size: examples per step.
    num_epochs: permutations of the data drawn per round (``sampling.num_epochs_needed``).
    max_count: size of the padded example axis.
    ragged: whether some clients take fewer steps (local epochs); their extra
      steps are masked out.
    streamed: the data arrays already hold this round's batches in order
      (``[num_clients, num_steps * batch_size, ...]`` from the grain path), so
      step s reads rows ``[s * batch_size, (s + 1) * batch_size)``.
  """

  num_steps: int
  batch_size: int
  num_epochs: int
  max_count: int
  ragged: bool
  streamed: bool = False


class RoundReport(NamedTuple):
  """Per-participant diagnostics of one round, per cohort (host arrays)."""

  client_ids: Mapping[str, np.ndarray]
  finite: Mapping[str, np.ndarray]
  metrics: Mapping[str, Mapping[str, np.ndarray]]
  server_metrics: Mapping[str, np.ndarray]


def client_key(server_state: ServerState, client_id: jax.Array) -> jax.Array:
  """The PRNG key of one client in the current round."""
  return jax.random.fold_in(jax.random.fold_in(server_state.rng, server_state.round), client_id)


class ClientPieces(NamedTuple):
  """One client's round in three pure pieces (the scan strategies fuse them, ``stepwise`` calls them apart).

  begin(server_state, client_state, count, client_id) -> (local_state, loop_inputs)
  step(local_state, loop_inputs, arrays, steps, step_index) -> (local_state, metrics)
  end(server_state, client_state, local_state, step_metrics [num_steps, ...], steps) -> (client_state, message, metrics)
  """

  begin: Callable
  step: Callable
  end: Callable


def local_step(spec: CohortSpec, batch_fn: BatchFn, ragged: bool, phase: int | None = None) -> Callable:
  """``step(local_state, (batch_indices [batch], key_loop), arrays, steps, step_index) -> (local_state, metrics)``:
  one local step (of ``phase``, for a cohort with phases) on the rows ``batch_indices`` of ``arrays``; with
  ``ragged`` a client past its own number of steps keeps its state. No input's shape depends on the number of
  local steps."""
  extra = () if phase is None else (phase,)

  def step(local, step_inputs, arrays, steps, index):
    batch_indices, key_loop = step_inputs
    key_batch, key_step = jax.random.split(jax.random.fold_in(key_loop, index))
    new_local, metrics = spec.step(local, batch_fn(arrays, batch_indices, key_batch), key_step, *extra)
    if ragged:
      active = index < steps
      new_local = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_local, local)
    return new_local, metrics

  return step


@functools.lru_cache(maxsize=32)
def _shared_jitted_step(spec: CohortSpec, batch_fn: BatchFn, ragged: bool, phase: int | None = None) -> Callable:
  """The jitted local step of ``stepwise``, one per cohort (and phase) for every runner: its program does not
  depend on the number of local steps, so ``auto``'s shortened calibration round and the run's rounds share one
  compilation (a DenseNet-121 step compiles in 20-40 s on the 2-core CPU)."""
  return jax.jit(local_step(spec, batch_fn, ragged, phase))


def client_pieces(spec: CohortSpec, batch_fn: BatchFn, plan: LocalPlan) -> ClientPieces:
  """Splits one client's round into begin / step / end around the cohort's ``CohortSpec``."""

  def begin(server_state, client_state, count, client_id):
    key_start, key_index, key_loop = jax.random.split(client_key(server_state, client_id), 3)
    if plan.streamed:
      indices = jnp.arange(plan.num_steps * plan.batch_size).reshape(plan.num_steps, plan.batch_size)
    else:
      indices = sampling.sample_indices(
          key_index, count, plan.max_count, plan.num_steps, plan.batch_size, plan.num_epochs)
    return spec.start(server_state, client_state, key_start), (indices, key_loop)

  one_step = {phase: local_step(spec, batch_fn, plan.ragged, phase) for phase, _, _ in spec.segments(plan.num_steps)}

  def step(local, loop_inputs, arrays, steps, index, phase=None):
    indices, key_loop = loop_inputs
    return one_step[phase](local, (indices[index], key_loop), arrays, steps, index)

  def end(server_state, client_state, local, step_metrics, steps):
    active = (jnp.arange(plan.num_steps) < steps).astype(jnp.float32)
    weights = lambda m: active.reshape((-1,) + (1,) * (m.ndim - 1))  # metrics may be arrays (e.g. a matrix)
    mean = lambda m: jnp.sum(m * weights(m), axis=0) / jnp.maximum(jnp.sum(active), 1.0)
    metrics = {k: mean(v) for k, v in step_metrics.items()}
    client_state, message, final_metrics = spec.finish(server_state, client_state, local)
    return client_state, message, {**metrics, **final_metrics, "local_steps": jnp.sum(active)}

  return ClientPieces(begin, step, end)


def make_client_round(spec: CohortSpec, batch_fn: BatchFn, plan: LocalPlan, unroll: int | bool) -> Callable:
  """Builds ``client_round(server_state, client_state, arrays, count, steps, client_id)``.

  Returns ``(client_state, message, metrics)`` for ONE client; metrics are the
  step metrics averaged over the active steps plus ``finish``'s metrics. The local
  steps run in a ``lax.scan`` with the given ``unroll``.
  """
  pieces = client_pieces(spec, batch_fn, plan)

  segments = spec.segments(plan.num_steps)

  def client_round(server_state, client_state, arrays, count, steps, client_id):
    local, loop_inputs = pieces.begin(server_state, client_state, count, client_id)
    parts = []
    for phase, first, end in segments:  # one loop per phase: a step computes only its own phase
      body = lambda local, index, phase=phase: pieces.step(local, loop_inputs, arrays, steps, index, phase)
      local, part = jax.lax.scan(body, local, jnp.arange(first, end), unroll=unroll)
      parts.append(part)
    step_metrics = parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
    return pieces.end(server_state, client_state, local, step_metrics, steps)

  return client_round


def _take(tree: PyTree, index) -> PyTree:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def _stack(trees: list[PyTree]) -> PyTree:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def stack_clients(trees: list[PyTree]) -> PyTree:
  """Per-client outputs of ``sequential`` / ``stepwise`` stacked on a new leading axis, outside any program.

  On CPU numpy stacks them (device buffers are host memory): ``jnp.stack`` compiles one small program per leaf
  shape and operand count, 138 programs and ~14 s in FedIRM's first DenseNet-121 round. Elsewhere ``jnp.stack``
  keeps the data on the device.
  """
  if jax.default_backend() != "cpu":
    return _stack(trees)

  def stack(*leaves):
    if jax.dtypes.issubdtype(leaves[0].dtype, jax.dtypes.extended):  # typed PRNG keys have no numpy form
      return jnp.stack(leaves)
    return jnp.asarray(np.stack([np.asarray(leaf) for leaf in leaves]))

  return jax.tree.map(stack, *trees)


class RoundRunner:
  """Runs rounds of one algorithm with one execution strategy.

  Call it as ``runner(server_state, client_states, data, selection)`` where
  ``client_states`` and ``data`` map cohort names to stacked pytrees /
  :class:`CohortData`, and ``selection`` maps cohort names to int32 arrays of the
  participating clients' positions in the cohort (a fixed length per cohort).
  Returns ``(server_state, client_states, RoundReport)``.
  """

  def __init__(self, algorithm: FederatedAlgorithm, batch_fns: Mapping[str, BatchFn],
               plans: Mapping[str, LocalPlan], *, strategy: str, unroll: int | bool, weighting: str):
    if strategy not in STRATEGIES:
      raise ValueError(f"unknown execution strategy {strategy!r}; allowed: {STRATEGIES}")
    if weighting not in WEIGHTINGS:
      raise ValueError(f"unknown aggregation weighting {weighting!r}; allowed: {WEIGHTINGS}")
    self.algorithm, self.strategy, self.weighting = algorithm, strategy, weighting
    # Only cohorts that have clients (``plans``) are built: an algorithm may define a cohort nobody is in.
    self.client_rounds = {name: make_client_round(algorithm.cohorts[name], batch_fns[name], plans[name], unroll)
                          for name in plans}
    self.plans = plans
    # sharded: every output replicated, so each process can read the report and carry the state to the next round
    self._round = jax.jit(self._whole_round, static_argnames="everyone",
                          out_shardings=replicated(client_mesh()) if strategy == "sharded" else None)
    self._one_client = {name: jax.jit(self._one_client_fn(name)) for name in plans}
    self._pieces = {name: self._jitted_pieces(algorithm.cohorts[name], batch_fns[name], plans[name]) for name in plans}
    self._finalize = jax.jit(self._finalize_round, static_argnames="everyone")

  def __call__(self, server_state, client_states, data, selection, secret_key=None):
    """``secret_key``: uint32[2], the round's secret for an algorithm with ``server_secret`` (a DP mechanism's
    key); ``None`` draws a fresh one from the OS's entropy. Ignored otherwise."""
    everyone = selects_everyone(selection, data)
    selection = {k: jnp.asarray(v, jnp.int32) for k, v in selection.items()}
    if not self.algorithm.server_secret:
      secret_key = None
    elif secret_key is None:
      secret_key = privacy.fresh_key()
    if self.strategy in ("sequential", "stepwise"):
      cohort_fn = self._sequential_cohort if self.strategy == "sequential" else self._stepwise_cohort
      per_client = {name: cohort_fn(name, server_state, client_states, data, sel) for name, sel in selection.items()}
      outputs = {name: stack_clients(outputs) for name, outputs in per_client.items()}  # after every dispatch
      result = self._finalize(server_state, client_states, data, selection, outputs, secret_key, everyone=everyone)
    else:
      if self.strategy == "sharded" and jax.process_count() > 1:
        server_state, client_states, data, selection, secret_key = to_global(
            (server_state, client_states, data, selection, secret_key))
      result = self._round(server_state, client_states, data, selection, secret_key, everyone=everyone)
    server_state, client_states, report = result
    return server_state, client_states, jax.device_get(report)

  # -- local updates -------------------------------------------------------------------------------------------------
  def _cohort_inputs(self, data: CohortData, sel):
    return _take(data.arrays, sel), data.counts[sel], data.steps[sel], data.client_ids[sel]

  def _whole_round(self, server_state, client_states, data, selection, secret_key=None, everyone=()):
    outputs = {}
    for name, sel in selection.items():
      states, (arrays, counts, steps, ids) = _take(client_states[name], sel), self._cohort_inputs(data[name], sel)
      fn = self.client_rounds[name]
      if self.strategy == "vmap":
        outputs[name] = jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0))(server_state, states, arrays, counts, steps, ids)
      elif self.strategy == "sharded":
        outputs[name] = self._sharded_cohort(fn, server_state, states, (arrays, counts, steps, ids))
      else:
        per_client = [fn(server_state, _take(states, i), _take(arrays, i), counts[i], steps[i], ids[i])
                      for i in range(sel.shape[0])]
        outputs[name] = _stack(per_client)
    return self._finalize_round(server_state, client_states, data, selection, outputs, secret_key, everyone)

  def _sharded_cohort(self, fn, server_state, states, inputs):
    """``vmap`` of ``fn`` with the client axis padded to a multiple of the devices and sharded over them."""
    mesh = client_mesh()
    count = jax.tree.leaves(inputs)[0].shape[0]
    padded = -(-count // mesh.size) * mesh.size
    order = jnp.concatenate([jnp.arange(count), jnp.zeros(padded - count, jnp.int32)])  # pads repeat client 0
    spread = lambda tree: jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x[order], client_sharding(mesh, x.ndim)), tree)
    out = jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0))(server_state, spread(states), *spread(inputs))
    return jax.tree.map(lambda x: x[:count], out)

  def client_program(self, name: str) -> Callable:
    """The jitted round of one client of cohort ``name``: ``(server_state, cohort_states, cohort_data, index)``
    -> (client_state, message, metrics); what ``sequential`` calls per client (benchmarks lower it for FLOPs)."""
    return self._one_client[name]

  def _one_client_fn(self, name: str):
    fn = self.client_rounds[name]

    def one_client(server_state, states, data: CohortData, index):
      return fn(server_state, _take(states, index), _take(data.arrays, index), data.counts[index],
                data.steps[index], data.client_ids[index])

    return one_client

  def _sequential_cohort(self, name, server_state, client_states, data, sel):
    return [self._one_client[name](server_state, client_states[name], data[name], index) for index in np.asarray(sel)]

  @staticmethod
  def _jitted_pieces(spec: CohortSpec, batch_fn: BatchFn, plan: LocalPlan) -> ClientPieces:
    pieces = client_pieces(spec, batch_fn, plan)

    def begin(server_state, states, data: CohortData, index):
      local, (indices, key_loop) = pieces.begin(server_state, _take(states, index), data.counts[index],
                                                data.client_ids[index])
      # one input per step, so that the step program's shapes do not depend on the number of steps
      step_inputs = [(row, key_loop) for row in indices]
      return local, step_inputs, _take(data.arrays, index)  # this client's data, sliced once per round

    def end(server_state, states, local, step_metrics, data: CohortData, index):
      return pieces.end(server_state, _take(states, index), local, _stack(step_metrics), data.steps[index])

    jitted = {}
    for phase, _, _ in spec.segments(plan.num_steps):
      try:
        jitted[phase] = _shared_jitted_step(spec, batch_fn, plan.ragged, phase)
      except TypeError:  # an unhashable batch function: this runner's own program
        jitted[phase] = jax.jit(local_step(spec, batch_fn, plan.ragged, phase))

    def step(local, step_inputs, arrays, steps, index: int):  # index: a host int, so the phase is known
      return jitted[spec.phase_of(index)](local, step_inputs, arrays, steps, index)

    step.programs = jitted  # phase -> jitted local step (shared across runners of one cohort where hashable)
    return ClientPieces(jax.jit(begin), step, jax.jit(end))

  def _stepwise_cohort(self, name, server_state, client_states, data, sel):
    pieces, cohort, per_client = self._pieces[name], data[name], []
    for index in np.asarray(sel):
      local, step_inputs, arrays = pieces.begin(server_state, client_states[name], cohort, index)
      step_metrics = []
      for step_index in range(self.plans[name].num_steps):
        local, metrics = pieces.step(local, step_inputs[step_index], arrays, cohort.steps[index], step_index)
        step_metrics.append(metrics)
      per_client.append(pieces.end(server_state, client_states[name], local, step_metrics, cohort, index))
    return per_client

  # -- aggregation and server update ------------------------------------------------------------------------------
  def _finalize_round(self, server_state, client_states, data, selection, outputs, secret_key=None, everyone=()):
    results, new_states, report_metrics, finite_flags, ids = {}, dict(client_states), {}, {}, {}
    for name, (states, messages, metrics) in outputs.items():
      sel, cohort = selection[name], data[name]
      finite = aggregation.is_finite(messages) & aggregation.is_finite(states)
      weights = client_weights(self.weighting, cohort.counts[sel], finite)
      results[name] = ClientResults(messages, weights, cohort.client_ids[sel])
      new_states[name] = _write_back(client_states[name], states, sel, finite, name in everyone)
      report_metrics[name], finite_flags[name], ids[name] = metrics, finite, cohort.client_ids[sel]
    secret = (secret_key,) if self.algorithm.server_secret else ()
    new_server, server_metrics = self.algorithm.server_update(server_state, results, *secret)
    new_server = new_server.replace(round=server_state.round + 1)
    return new_server, new_states, RoundReport(ids, finite_flags, report_metrics, server_metrics)


def client_weights(weighting: str, counts: jax.Array, finite: jax.Array) -> jax.Array:
  """Aggregation weights ``[P]``: each participant's example count or 1 (``weighting``), 0 if its message is not
  finite."""
  base = counts.astype(jnp.float32) if weighting == "num_examples" else jnp.ones(counts.shape, jnp.float32)
  return jnp.where(finite, base, 0.0)


def client_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``clients``."""
  return jax.sharding.Mesh(np.array(jax.devices()), (CLIENT_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def to_global(tree: PyTree) -> PyTree:
  """Multi-process: process-local values (the same on every process) as globally replicated arrays; arrays that
  already span the mesh (the previous round's outputs) pass through."""
  sharding = replicated(client_mesh())

  def convert(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(convert, tree)


def client_sharding(mesh: jax.sharding.Mesh, ndim: int) -> jax.sharding.NamedSharding:
  """Leading (client) axis split over the mesh, the rest replicated."""
  spec = jax.sharding.PartitionSpec(CLIENT_AXIS, *([None] * (ndim - 1)))
  return jax.sharding.NamedSharding(mesh, spec)


def _write_back(all_states: PyTree, new_states: PyTree, sel: jax.Array, finite: jax.Array, everyone: bool) -> PyTree:
  """The cohort's client states after the round: participants' new states where finite, old states elsewhere.

  ``everyone`` (static): ``sel`` is every client of the cohort in order, so the write-back is a select per leaf.
  Otherwise each client's position in ``sel`` is computed once and each leaf is a gather + select. Both compile
  far faster on XLA:CPU than a scatter per leaf (FedIRM's 1,824 client-state leaves of DenseNet-121: select 1.6 s,
  gather + select 5.1 s, scatter 9.0 s for 1,092 leaves).
  """
  leaves = jax.tree.leaves(all_states)
  if not leaves:
    return all_states
  rows = lambda flags, leaf: flags.reshape((-1,) + (1,) * (leaf.ndim - 1))
  if everyone:
    return jax.tree.map(lambda old, new: jnp.where(rows(finite, new), new, old), all_states, new_states)
  num_clients, num_selected = leaves[0].shape[0], sel.shape[0]
  # position[c] = where client c sits in sel; num_selected for clients not selected or not finite
  position = jnp.full((num_clients,), num_selected, jnp.int32).at[jnp.where(finite, sel, num_clients)].set(
      jnp.arange(num_selected, dtype=jnp.int32), mode="drop")
  taken, source = position < num_selected, jnp.minimum(position, num_selected - 1)
  return jax.tree.map(lambda old, new: jnp.where(rows(taken, old), jnp.take(new, source, axis=0), old),
                      all_states, new_states)


def selects_everyone(selection: Mapping[str, np.ndarray], data: Mapping[str, CohortData]) -> tuple[str, ...]:
  """The cohorts whose selection is all their clients in order (static: it picks the write-back's lowering)."""
  return tuple(sorted(name for name, sel in selection.items()
                      if np.array_equal(np.asarray(sel), np.arange(data[name].counts.shape[0]))))


def default_unroll(backend: str) -> int | bool:
  """Full unrolling of the local-step scan on CPU (trap 1 in the CPU notes), a rolled scan elsewhere."""
  return True if backend == "cpu" else 1


def describe(strategy: str, unroll: Any) -> str:
  return f"{strategy} (local-step scan unroll={unroll})"
