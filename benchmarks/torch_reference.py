"""PyTorch references of each benchmark workload's round, written in the style of the methods' official codes.

What "official style" means here (the work a researcher's PyTorch run does; methods.md describes the codes):
clients train one after another; each client starts from ``copy.deepcopy`` of the global model; a per-client Adam
(its state kept across rounds as a ``state_dict`` and loaded into a fresh optimizer every round, as FedIRM's
``optim_locals``, or a fresh one when the JAX config does not keep it); the round ends with an unweighted
state-dict average (buffers included) loaded into the global model. Data is made once and kept in memory as
tensors, so no contender pays for loading or augmenting images.

The FedIRM round also does FedIRM's algorithmic work as the official code does it: on unlabeled clients the
persistent EMA teacher forwards the second view, the student runs ``mc_passes + 1`` extra full forwards for the
MC-dropout entropy (no_grad, train mode), the pseudo-label relation matrix, the symmetric KL to the server matrix
and the squared-softmax consistency; labeled clients forward both views and accumulate their relation matrix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.contender import TorchFedAvgTask


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
  """Unweighted mean of every entry (integer buffers such as ``num_batches_tracked`` cast back), as FedAvg.py."""
  out = {}
  for key in states[0]:
    mean = torch.stack([s[key].float() for s in states]).mean(0)
    out[key] = mean.to(states[0][key].dtype)
  return out


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
  if name == "adam":
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
  if name == "sgd":
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; allowed: adam, sgd")


class FedAvgLoop:
  """A plain FedAvg round: deep-copy the global model per client, train its batches, average the state dicts."""

  def __init__(self, task: TorchFedAvgTask, persist_optimizer: bool = False, seed: int = 0):
    self.task, self.persist, self.seed = task, persist_optimizer, seed

  def setup(self) -> None:
    torch.manual_seed(self.seed)
    self.global_model = self.task.make_model()
    self.batches = [self.task.client_batches(k) for k in range(self.task.num_clients)]
    self.opt_states: dict[int, dict] = {}

  def run_round(self) -> None:
    states = []
    for k in range(self.task.num_clients):
      model = copy.deepcopy(self.global_model)
      model.train()
      opt = make_optimizer(self.task.optimizer, model.parameters(), self.task.learning_rate)
      if self.persist and k in self.opt_states:
        opt.load_state_dict(self.opt_states[k])
      for x, y in self.batches[k]:
        loss = self.task.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
      if self.persist:
        self.opt_states[k] = copy.deepcopy(opt.state_dict())
      states.append(copy.deepcopy(model.state_dict()))
    self.global_model.load_state_dict(average_state_dicts(states))

  def info(self) -> dict[str, Any]:
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in self.global_model.parameters())}


# -- losses as the official codes write them --------------------------------------------------------------------------
def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
  log_p = F.log_softmax(logits, dim=1)
  return epsilon * (-log_p.mean(1)).mean() + (1 - epsilon) * F.nll_loss(log_p, labels)


def confuse_matrix(logits: torch.Tensor, onehot: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
  """FedIRM's relation matrix: softmax of each class's mean logit over the batch / T (a per-class loop, as
  ``confuse_matrix.py``)."""
  rows = []
  for c in range(onehot.shape[1]):
    weights = onehot[:, c:c + 1]
    mean_logit = (weights * logits).sum(0) / (weights.sum() + 1e-8)
    rows.append(F.softmax(mean_logit / temperature, dim=0))
  return torch.stack(rows)


def symmetric_kl(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
  kl = lambda a, b: F.kl_div(b.log(), a, reduction="batchmean")
  return 0.5 * (kl(target, source) + kl(source, target))


def dice_ce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
  """Cross-entropy + foreground soft Dice of 2-class logits ``[B, 2, H, W]`` and masks ``[B, H, W]``."""
  prob = F.softmax(logits, dim=1)[:, 1]
  fg = masks.float()
  dice = 1 - (2 * (prob * fg).sum() + 1e-5) / (prob.sum() + fg.sum() + 1e-5)
  return F.cross_entropy(logits, masks) + dice


# -- FedIRM ----------------------------------------------------------------------------------------------------------
class FedIRMReference:
  """One FedIRM round after the warm-up (every client trains), as ``train_main.py`` + ``local_*.py`` run it."""

  def __init__(self, make_model: Callable[[], torch.nn.Module], image_shape: tuple[int, int, int], num_classes: int,
               num_clients: int, labeled: Sequence[int], batch_size: int, local_steps: int, mc_passes: int,
               learning_rate: float = 2e-4, seed: int = 0):
    self.make_model, self.shape, self.num_classes = make_model, image_shape, num_classes
    self.num_clients, self.labeled, self.batch, self.steps = num_clients, tuple(labeled), batch_size, local_steps
    self.mc_passes, self.lr, self.seed = mc_passes, learning_rate, seed

  def setup(self) -> None:
    torch.manual_seed(self.seed)
    self.global_model = self.make_model()
    gen = torch.Generator().manual_seed(self.seed)
    view = lambda: torch.randn((self.batch, *self.shape), generator=gen)
    label = lambda: torch.randint(0, self.num_classes, (self.batch,), generator=gen)
    self.batches = [[(view(), view(), label()) for _ in range(self.steps)] for _ in range(self.num_clients)]
    self.opt_states: dict[int, dict] = {}
    self.teachers: dict[int, torch.nn.Module] = {}
    self.iter_num = dict.fromkeys(range(self.num_clients), 0)
    self.server_matrix = torch.full((self.num_classes, self.num_classes), 1.0 / self.num_classes)

  def _labeled(self, k: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    matrix = torch.zeros(self.num_classes, self.num_classes)
    for x1, x2, y in self.batches[k]:
      _, z1 = model(x1)
      _, z2 = model(x2)
      loss = label_smoothed_ce(z1, y) + label_smoothed_ce(z2, y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      with torch.no_grad():
        matrix += confuse_matrix(z1, F.one_hot(y, self.num_classes).float())
    return matrix / len(self.batches[k])

  def _unlabeled(self, k: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    if k not in self.teachers:  # created once from the student the first time the client trains
      self.teachers[k] = copy.deepcopy(model)
      for p in self.teachers[k].parameters():
        p.detach_()
    teacher = self.teachers[k]
    for x1, x2, _ in self.batches[k]:
      _, z = model(x1)
      with torch.no_grad():
        _, z_teacher = teacher(x2)
        passes = torch.stack([model(x1)[1] for _ in range(self.mc_passes + 1)])  # whole-network MC-dropout
        p_mc = F.softmax(passes.mean(0), dim=1)
        entropy = -(p_mc * torch.log(p_mc + 1e-6)).sum(1)
      p = F.softmax(z, dim=1)
      mask = (p.max(1).values >= 0.3) & (entropy < 2.0)
      pseudo = F.one_hot(p[mask].argmax(1), self.num_classes).float()
      local_matrix = confuse_matrix(z[mask], pseudo)
      ramp = 1.0  # a round past the sigmoid ramp-up
      consistency = ((p - F.softmax(z_teacher, dim=1)) ** 2).sum() / self.batch
      loss = 15 * ramp * consistency + 15 * ramp * symmetric_kl(self.server_matrix, local_matrix)
      opt.zero_grad()
      loss.backward()
      opt.step()
      self.iter_num[k] += 1
      alpha = min(1 - 1 / (self.iter_num[k] + 1), 0.99)
      with torch.no_grad():
        for t, s in zip(teacher.parameters(), model.parameters()):
          t.mul_(alpha).add_(s, alpha=1 - alpha)

  def run_round(self) -> None:
    states, matrices = [], []
    for k in range(self.num_clients):
      model = copy.deepcopy(self.global_model)
      model.train()
      opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.9, 0.999), weight_decay=5e-4)
      if k in self.opt_states:
        opt.load_state_dict(self.opt_states[k])
      if k in self.labeled:
        matrices.append(self._labeled(k, model, opt))
      else:
        self._unlabeled(k, model, opt)
      self.opt_states[k] = copy.deepcopy(opt.state_dict())
      states.append(copy.deepcopy(model.state_dict()))
    self.global_model.load_state_dict(average_state_dicts(states))
    self.server_matrix = torch.stack(matrices).mean(0)

  def info(self) -> dict[str, Any]:
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in self.global_model.parameters()),
            "mc_forwards_per_unlabeled_step": self.mc_passes + 1}


# -- FCL -------------------------------------------------------------------------------------------------------------
def positive_pair_loss(q: torch.Tensor, q_labels: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                       positive: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
  """MoCo-style: each positive against the negatives alone, averaged over a query's positives, then queries."""
  sim = F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T / temperature
  same = q_labels[:, None] == key_labels[None, :]
  pos = same & positive[None, :]
  neg = ~same & negative[None, :]
  log_neg = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
  log_prob = sim - torch.logaddexp(sim, log_neg)
  num_pos = pos.sum(1)
  per_query = -(log_prob * pos).sum(1) / num_pos.clamp(min=1)
  has_pos = (num_pos > 0).float()
  return (per_query * has_pos).sum() / has_pos.sum().clamp(min=1)


class FCLReference:
  """One FCL pre-training round: per client a momentum encoder and a FIFO feature bank that persist, a query
  encoder deep-copied from the global model, local + remote contrastive losses, then each client sends its newest
  ``exchange_size`` bank entries and the server averages the encoders and pools the features."""

  def __init__(self, make_model: Callable[[], torch.nn.Module], image_shape: tuple[int, int, int], num_clients: int,
               volumes_per_batch: int, partitions: int, local_steps: int, bank_size: int, exchange_size: int,
               projection_dim: int, temperature: float = 0.1, momentum: float = 0.99, learning_rate: float = 1e-3,
               seed: int = 0):
    self.make_model, self.shape, self.num_clients = make_model, image_shape, num_clients
    self.batch, self.partitions, self.steps = volumes_per_batch * partitions, partitions, local_steps
    self.bank_size, self.exchange_size, self.dim = bank_size, exchange_size, projection_dim
    self.temperature, self.momentum, self.lr, self.seed = temperature, momentum, learning_rate, seed

  def setup(self) -> None:
    torch.manual_seed(self.seed)
    self.global_model = self.make_model()
    gen = torch.Generator().manual_seed(self.seed)
    view = lambda: torch.randn((self.batch, *self.shape), generator=gen)
    self.labels = torch.arange(self.batch) % self.partitions
    self.batches = [[(view(), view()) for _ in range(self.steps)] for _ in range(self.num_clients)]
    self.key_encoders = [copy.deepcopy(self.global_model) for _ in range(self.num_clients)]
    self.banks = [(torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.long)) for _ in range(self.num_clients)]
    self.remote = [(torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.long)) for _ in range(self.num_clients)]
    self.opt_states: dict[int, dict] = {}

  def _client(self, k: int) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    model, key_encoder = copy.deepcopy(self.global_model), self.key_encoders[k]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=self.lr)
    if k in self.opt_states:
      opt.load_state_dict(self.opt_states[k])
    bank, bank_labels = self.banks[k]
    remote, remote_labels = self.remote[k]
    for x1, x2 in self.batches[k]:
      q = model(x1)
      with torch.no_grad():
        keys = F.normalize(key_encoder(x2), dim=1)
      local_keys, local_labels = torch.cat([keys, bank]), torch.cat([self.labels, bank_labels])
      all_keys = torch.cat([local_keys, remote])
      all_labels = torch.cat([local_labels, remote_labels])
      is_local = torch.arange(len(all_keys)) < len(local_keys)
      local = positive_pair_loss(q, self.labels, all_keys, all_labels, is_local, torch.ones_like(is_local),
                                 self.temperature)
      remote_loss = positive_pair_loss(q, self.labels, remote, remote_labels, torch.ones(len(remote), dtype=bool),
                                       torch.ones(len(remote), dtype=bool), self.temperature)
      loss = local + remote_loss
      opt.zero_grad()
      loss.backward()
      opt.step()
      with torch.no_grad():
        for t, s in zip(key_encoder.parameters(), model.parameters()):
          t.mul_(self.momentum).add_(s, alpha=1 - self.momentum)
      bank = torch.cat([keys, bank])[: self.bank_size]
      bank_labels = torch.cat([self.labels, bank_labels])[: self.bank_size]
    self.banks[k] = (bank, bank_labels)
    self.opt_states[k] = copy.deepcopy(opt.state_dict())
    return copy.deepcopy(model.state_dict()), (bank[: self.exchange_size], bank_labels[: self.exchange_size])

  def run_round(self) -> None:
    states, sent = zip(*[self._client(k) for k in range(self.num_clients)])
    self.global_model.load_state_dict(average_state_dicts(states))
    for k in range(self.num_clients):  # every client receives the other clients' features
      others = [sent[j] for j in range(self.num_clients) if j != k]
      self.remote[k] = (torch.cat([f for f, _ in others]), torch.cat([lab for _, lab in others]))

  def info(self) -> dict[str, Any]:
    return {"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in self.global_model.parameters())}
