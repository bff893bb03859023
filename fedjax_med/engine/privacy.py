"""Client-level differential privacy for any algorithm whose clients send parameter updates (DP-FedAvg).

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, Alg. 1):
each participating client's update ``delta`` (the whole variables tree it sends) is clipped to global L2 norm
``<= clip``; the server adds Gaussian noise ``N(0, (noise_multiplier * clip)^2)`` to each coordinate of the SUM
and divides by a FIXED denominator, the expected number of participants ``q * N`` -- not by the realised
count, which would depend on who took part. Everything happens inside the jitted round.

The mechanism's randomness (the Poisson draw and the noise) comes from a fresh per-round key drawn from the
operating system's entropy (:func:`fresh_key`, ``secrets``) by whoever runs the round; it is never written to a
checkpoint, a log or the config, and never sent to a site. Anyone holding the config, the checkpoints or the
broadcast server state (which carries the run's PRNG key, from which every client key derives) therefore cannot
recompute the noise and subtract it from a published update. ``reproducible=True`` derives the key from the run's
PRNG key instead (``fold_in(fold_in(rng, round), NOISE_STREAM)``): for simulation research only, where the same
seed must give the same numbers; it protects nothing against anyone who holds the config or a checkpoint.

Sampling: ``poisson`` -- every client takes part with probability ``q`` independently (simulated by
zeroing the weight of the clients not drawn, so shapes stay static; the training loop computes only the
drawn clients plus undrawn ones up to a fixed capacity, ``poisson_selection``); ``fixed`` -- the engine's
fixed-size sample of ``aggregation.clients_per_round``.

Accounting (``dp-accounting``, RDP or PLD): a round is ``PoissonSampled(q, Gaussian(z))`` or
``SampledWithoutReplacement(N, m, Gaussian(z))`` (replace-one adjacency), composed over rounds.

What is protected: the parameter updates. Algorithms that send other data-dependent messages (FedIRM's
relation matrices, FCL's features) are refused unless those messages are explicitly accepted as
unprotected (``privacy.unprotected_messages``), so no guarantee is claimed that does not hold.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_med.engine import aggregation
from fedjax_med.engine.types import ClientResults, FederatedAlgorithm, PyTree, ServerState

SAMPLINGS = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")
NOISE_STREAM = 0x5EED  # fold_in constant separating the noise stream from the clients' keys
DP_COHORT = "dp"


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """``clip`` S (L2), ``noise_multiplier`` z, ``sampling`` and its rate ``q`` (participants / clients)."""

  clip: float
  noise_multiplier: float
  num_clients: int
  sampling: str = "poisson"
  rate: float = 1.0
  unprotected_messages: tuple[str, ...] = ()

  def __post_init__(self):
    if self.clip <= 0:
      raise ValueError(f"config.privacy.clip must be > 0; got {self.clip}")
    if self.noise_multiplier < 0:
      raise ValueError(f"config.privacy.noise_multiplier must be >= 0; got {self.noise_multiplier}")
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"config.privacy.sampling={self.sampling!r} is not allowed; allowed: {list(SAMPLINGS)}")
    if not 0 < self.rate <= 1:
      raise ValueError(f"the client sampling rate must be in (0, 1]; got {self.rate}")

  @property
  def expected_clients(self) -> float:
    return self.rate * self.num_clients


def clip_updates(deltas: PyTree, clip: float) -> tuple[PyTree, jax.Array]:
  """Each client's tree (leaves ``[K, ...]``) scaled to global L2 norm ``<= clip``; returns (clipped, norms [K])."""
  leaves = jax.tree.leaves(deltas)
  norms = jnp.sqrt(sum(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) for x in leaves))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-12))
  return jax.tree.map(lambda x: x * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype), deltas), norms


def poisson_mask(key: jax.Array, client_ids: jax.Array, rate: float) -> jax.Array:
  """float ``[K]``: 1 where client ``client_ids[k]`` is drawn this round (independently with prob. ``rate``)."""
  draws = jax.vmap(lambda c: jax.random.uniform(jax.random.fold_in(key, c)))(client_ids)
  return (draws < rate).astype(jnp.float32)


def fresh_key() -> np.ndarray:
  """uint32[2]: a PRNG key of 64 bits from the operating system's CSPRNG (``secrets``), for one round's mechanism."""
  return np.frombuffer(secrets.token_bytes(8), dtype=np.uint32).copy()


def reproducible_key(rng: jax.Array, round_num) -> jax.Array:
  """The mechanism key derived from the run's PRNG key (``privacy.reproducible_noise``): NOT secret."""
  return jax.random.fold_in(jax.random.fold_in(rng, round_num), NOISE_STREAM)


def sampling_key(mechanism_key: jax.Array) -> jax.Array:
  """The key of a round's Poisson draw (the first half of the mechanism's key; the noise uses the second)."""
  return jax.random.split(mechanism_key)[0]


def poisson_capacity(num_clients: int, rate: float, sigmas: float = 5.0) -> int:
  """Clients computed per round under Poisson sampling: ``qN + 5 sqrt(qN(1-q))`` (exceeded with probability
  < 3e-7 per round; such a round computes every client)."""
  mean = rate * num_clients
  return min(num_clients, math.ceil(mean + sigmas * math.sqrt(mean * (1 - rate))) + 1)


def poisson_selection(dp: DPConfig, mechanism_key: jax.Array, client_ids: np.ndarray) -> np.ndarray:
  """Positions (in a cohort of global ``client_ids``) of the clients to compute this round: every client the
  round's Poisson draw picks, filled up to a fixed capacity with undrawn clients (static shapes across rounds).

  The draw is the one the jitted mechanism makes (``noisy_mean``): undrawn clients get weight 0 there, so
  computing only this subset gives the result of computing all clients (summation order aside), at
  ``capacity / N`` of the cost. A draw larger than the capacity computes every client.
  """
  client_ids = np.asarray(client_ids)
  drawn = np.asarray(poisson_mask(sampling_key(mechanism_key), jnp.asarray(client_ids), dp.rate)) > 0
  capacity = poisson_capacity(len(client_ids), dp.rate)
  if drawn.sum() > capacity:
    return np.arange(len(client_ids), dtype=np.int32)
  fill = np.flatnonzero(~drawn)[: capacity - int(drawn.sum())]
  return np.sort(np.concatenate([np.flatnonzero(drawn), fill])).astype(np.int32)


def noisy_mean(results: Mapping[str, ClientResults], key: jax.Array, dp: DPConfig) -> tuple[PyTree, dict]:
  """The DP mean of every cohort's ``delta``: (sum of clipped updates + noise) / expected participants."""
  total, count, clipped_count, norms_sum = None, 0.0, 0.0, 0.0
  k_sample, k_noise = jax.random.split(key)  # k_sample = sampling_key(key)
  for result in results.values():
    taking_part = (result.weights > 0).astype(jnp.float32)
    if dp.sampling == "poisson":
      taking_part = taking_part * poisson_mask(k_sample, result.client_ids, dp.rate)
    clipped, norms = clip_updates(result.messages["delta"], dp.clip)
    part = aggregation.weighted_sum(clipped, taking_part)
    total = part if total is None else jax.tree.map(jnp.add, total, part)
    count = count + jnp.sum(taking_part)
    clipped_count = clipped_count + jnp.sum(taking_part * (norms > dp.clip))
    norms_sum = norms_sum + jnp.sum(taking_part * norms)
  leaves, treedef = jax.tree.flatten(total)
  keys = jax.random.split(k_noise, len(leaves))
  noised = [x + dp.noise_multiplier * dp.clip * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  mean = jax.tree.unflatten(treedef, [x / dp.expected_clients for x in noised])
  metrics = {"dp_participants": count, "dp_clipped_fraction": clipped_count / jnp.maximum(count, 1.0),
             "dp_mean_update_norm": norms_sum / jnp.maximum(count, 1.0)}
  return mean, metrics


def with_dp(algorithm: FederatedAlgorithm, dp: DPConfig) -> FederatedAlgorithm:
  """``algorithm`` whose server sees only the DP mean of the updates (as one pseudo-client of weight 1).

  Its ``server_update`` takes the round's mechanism key as a third argument (``server_secret``): the caller draws
  it (:func:`fresh_key`, or :func:`reproducible_key` in the opt-in reproducible mode) and passes the same key to
  :func:`poisson_selection`.
  """

  def server_update(state: ServerState, results: Mapping[str, ClientResults], mechanism_key: jax.Array):
    for name, result in results.items():
      extra = sorted(set(result.messages) - {"delta"} - set(dp.unprotected_messages))
      if extra:
        raise ValueError(f"DP-FedAvg protects parameter updates only; cohort {name!r} also sends {extra}. "
                         "List them in config.privacy.unprotected_messages to accept them unprotected.")
    mean, metrics = noisy_mean(results, mechanism_key, dp)
    private = {DP_COHORT: ClientResults({"delta": jax.tree.map(lambda x: x[None], mean)}, jnp.ones(1),
                                        jnp.full((1,), -1, jnp.int32))}
    others = {n: r._replace(messages={k: v for k, v in r.messages.items() if k != "delta"},
                            weights=r.weights) for n, r in results.items() if set(r.messages) - {"delta"}}
    new_state, server_metrics = algorithm.server_update(state, {**others, **private})
    return new_state, {**server_metrics, **metrics, "dp_update_norm": optax.tree.norm(mean["params"])}

  if algorithm.server_secret:
    raise ValueError("with_dp: the algorithm's server update already takes a secret key (DP applied twice?)")
  return algorithm._replace(server_update=server_update, server_secret=True)


# -- accounting (host side) -----------------------------------------------------------------------------------------
def _dp_accounting():
  """The optional ``dp-accounting`` package (extra ``dp``), imported only when a run accounts for privacy."""
  try:
    import dp_accounting
  except ImportError as e:
    raise ImportError("privacy accounting needs dp-accounting: pip install 'fedjax_med[dp]'") from e
  return dp_accounting


def round_event(dp: DPConfig, clients_per_round: int = 0):
  dp_accounting = _dp_accounting()
  gaussian = dp_accounting.GaussianDpEvent(dp.noise_multiplier)
  if dp.sampling == "poisson":
    return dp_accounting.PoissonSampledDpEvent(dp.rate, gaussian)
  return dp_accounting.SampledWithoutReplacementDpEvent(dp.num_clients, clients_per_round or dp.num_clients,
                                                        gaussian)


def make_accountant(kind: str, sampling: str):
  dp_accounting = _dp_accounting()
  from dp_accounting import pld, rdp

  relation = dp_accounting.NeighboringRelation
  if kind not in ACCOUNTANTS:
    raise ValueError(f"config.privacy.accountant={kind!r} is not allowed; allowed: {list(ACCOUNTANTS)}")
  if kind == "pld" and sampling == "fixed":  # dp-accounting's PLD has no sampling-without-replacement event
    raise ValueError("config.privacy.accountant='pld' supports sampling='poisson' only; use 'rdp' for fixed-size "
                     "client sampling")
  adjacency = relation.ADD_OR_REMOVE_ONE if sampling == "poisson" else relation.REPLACE_ONE
  return rdp.RdpAccountant(neighboring_relation=adjacency) if kind == "rdp" else pld.PLDAccountant(adjacency)


def epsilon(dp: DPConfig, rounds: int, delta: float, kind: str = "rdp", clients_per_round: int = 0) -> float:
  """ε after ``rounds`` rounds at ``delta`` (inf without noise)."""
  if rounds == 0:
    return 0.0
  if dp.noise_multiplier == 0:
    return float("inf")
  accountant = make_accountant(kind, dp.sampling)
  accountant.compose(round_event(dp, clients_per_round), rounds)
  return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, dp: DPConfig, kind: str = "rdp",
                    clients_per_round: int = 0) -> float:
  """The smallest noise multiplier whose ε after ``rounds`` rounds at ``delta`` is ``<= target_epsilon``."""
  dp_accounting = _dp_accounting()

  def event(z: float):
    return dp_accounting.SelfComposedDpEvent(round_event(dataclasses.replace(dp, noise_multiplier=z),
                                                         clients_per_round), rounds)

  return float(dp_accounting.calibrate_dp_mechanism(lambda: make_accountant(kind, dp.sampling), event,
                                                    target_epsilon, delta))
