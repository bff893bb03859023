"""The benchmark's workloads: for each, the fedjax_med config and the same round in PyTorch.

Every workload fixes model, input size, batch, local steps, optimizer and number of clients once, and derives
both sides from it. ``smoke=True`` gives tiny sizes on the embedded synthetic data (the test suite's run);
otherwise the real data of ``$FEDJAX_MED_DATA`` is used by the JAX side (the PyTorch side trains on random
tensors of the same shapes: a round's cost does not depend on pixel values, and neither side pays for loading).

Workloads (``--workload``):
  fedirm      FedIRM round after warm-up: DenseNet-121 at 64x64x3, 7 classes, 10 clients (2 labeled, 8 unlabeled
              with EMA teachers and MC-dropout), batch 16, 2 local steps, Adam.
  drive_unet  FedAvg U-Net (16-32-64-128, batch norm) on 64x64 DRIVE patches, 4 clients x 5 steps of batch 16, Adam.
  fcl         FCL pre-training round: U-Net encoder + projection head, momentum encoders, local banks and the
              feature exchange, 10 clients x 8 steps of 16 ACDC slices (4 volumes x 4 partitions) at 64x64.
  scaling     FedAvg of a small CNN (32-64-128, 32x32x3 inputs, 4 classes), 64 examples per client,
              2 SGD steps of batch 32, all clients every round; ``--clients`` 1, 2, 4, ..., 64.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import ml_collections

WORKLOADS = ("fedirm", "drive_unet", "fcl", "scaling")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Workload:
  """One round's definition on both sides; ``examples_per_round`` counts each training example once per step
  (augmented views of the same example are not counted twice)."""

  name: str
  jax_config: ml_collections.ConfigDict
  torch_round: Callable[[], Any]  # -> Contender: the official-style PyTorch round
  torch_task: Callable[[], Any] | None  # -> TorchFedAvgTask, for the Flower simulation (FedAvg workloads only)
  examples_per_round: int
  protocol: dict[str, Any]
  num_classes: int  # of the model both sides build
  input_shape: tuple[int, int, int]  # H, W, C of one training image


def load_config(relative: str) -> ml_collections.ConfigDict:
  """``configs/FILE.py[:ARG]`` of this repository."""
  path, _, arg = relative.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def synthetic_data(config: ml_collections.ConfigDict, image_size: int, channels: int, patients: int,
                   num_classes: int = 4) -> None:
  """Points ``config`` at the embedded synthetic set with the given shapes (smoke runs, the scaling workload)."""
  config.data.name, config.data.root, config.data.channels, config.data.downsample = "synthetic", "", (), 1
  config.data.synthetic = dict(num_sites=4, patients_per_site=patients, slices_per_volume=4, image_size=image_size,
                               num_classes=num_classes, channels=channels, seed=0)
  config.data.mean, config.data.std = (0.5,) * channels, (0.25,) * channels


def jax_backend() -> str:
  import jax

  return jax.default_backend()


def finish(config: ml_collections.ConfigDict, rounds: int, smoke: bool) -> ml_collections.ConfigDict:
  config.num_rounds = rounds  # auto's estimate weighs compile time against this many rounds
  if smoke:  # the test suite's run: auto still measures and picks, among the two cheapest lowerings to compile
    config.execution.candidates = ("sequential", "stepwise")
  config.eval.every = 10**9
  config.checkpoint.every = 10**9
  config.log.progress = False
  return config


def torch_model(name: str, kwargs: dict, num_classes: int, in_channels: int) -> Callable[[], Any]:
  """A builder of the PyTorch mirror of a registered fedjax_med model (torch is imported only when it builds)."""
  if name not in ("densenet121", "densenet", "unet", "unet_encoder_projector", "small_cnn"):
    raise ValueError(f"no PyTorch mirror of model {name!r}")
  kwargs = dict(kwargs)

  def build():
    from benchmarks import torch_models

    if name == "densenet121":
      return torch_models.densenet121(num_classes, in_channels=in_channels, **kwargs)
    if name == "densenet":
      return torch_models.DenseNet(num_classes, in_channels=in_channels, **kwargs)
    if name == "unet":
      return torch_models.UNet(num_classes, in_channels, **kwargs)
    if name == "unet_encoder_projector":
      return torch_models.UNetEncoderProjector(in_channels, **kwargs)
    return torch_models.SmallCNN(num_classes, in_channels, **kwargs)

  return build


def _ref():
  """``benchmarks.torch_reference``, imported when a PyTorch contender is built (the harness itself needs no torch)."""
  from benchmarks import torch_reference

  return torch_reference


def fedirm(smoke: bool, clients: int, rounds: int) -> Workload:
  config = load_config("configs/fedirm_ham10000.py:fedirm,full")  # DenseNet-121, Adam 2e-4, L2 5e-4
  config.client.batch_size, config.client.local_steps = 16, 2
  config.algorithm.warmup_rounds = 0  # a round after the warm-up: every client trains
  if jax_backend() == "cpu":
    # auto's calibration compiles each candidate; a DenseNet-121 step unrolled over clients or vmapped takes
    # minutes to compile on XLA:CPU and vmapped convs run ~4x slower there (docs/performance.md): measured apart
    config.execution.candidates = ("sequential", "stepwise")
  num_classes, channels, size = 7, 3, 64
  if smoke:
    synthetic_data(config, image_size=16, channels=3, patients=12)
    config.model.name = "densenet"
    config.model.kwargs = ml_collections.ConfigDict(dict(growth_rate=4, block_config=(1, 1), num_init_features=8,
                                                         stem="small", dropout=0.2))
    config.partition.num_clients, config.partition.labeled_clients = 3, (0,)
    config.client.batch_size, config.client.local_steps = 4, 1
    num_classes, size = 4, 16
  clients = config.partition.num_clients
  make = torch_model(config.model.name, config.model.kwargs.to_dict(), num_classes, channels)
  algo, client = config.algorithm, config.client
  torch_round = lambda: _ref().FedIRMReference(
      make, (channels, size, size), num_classes, clients, tuple(config.partition.labeled_clients), client.batch_size,
      client.local_steps, algo.mc_passes, client.learning_rate)
  protocol = dict(model=config.model.name, input=f"{size}x{size}x{channels}", clients=clients,
                  labeled=list(config.partition.labeled_clients), batch=client.batch_size,
                  local_steps=client.local_steps, optimizer="adam", mc_passes=algo.mc_passes)
  return Workload("fedirm", finish(config, rounds, smoke), torch_round, None,
                  clients * client.local_steps * client.batch_size, protocol, num_classes, (size, size, channels))


def fedavg_segmentation_task(make, channels: int, size: int, clients: int, steps: int, batch: int, lr: float):
  import torch

  from benchmarks import contender

  def batches(k: int):
    gen = torch.Generator().manual_seed(k)
    return [(torch.randn((batch, channels, size, size), generator=gen),
             torch.randint(0, 2, (batch, size, size), generator=gen)) for _ in range(steps)]

  loss = lambda model, x, y: _ref().dice_ce(model(x), y)
  return contender.TorchFedAvgTask(make, batches, loss, clients, "adam", lr)


def drive_unet(smoke: bool, clients: int, rounds: int) -> Workload:
  config = load_config("configs/fedavg_drive.py")
  config.client.local_steps = 5  # of the config's 20: the benchmark's 7 contenders x 6 rounds fit ~10 min of CPU
  channels, size = 1, config.data.patch_size
  if smoke:
    synthetic_data(config, image_size=16, channels=1, patients=8)
    config.data.batch_mode, config.data.patch_size, config.data.channels = "images", 0, ()
    config.task.name = "segmentation"
    config.model.kwargs = dict(widths=(4, 8), norm="batch")
    config.partition.method, config.partition.num_clients = "iid", 2
    config.client.batch_size, config.client.local_steps = 4, 2
    size = 16
  client = config.client
  clients = config.partition.num_clients
  make = torch_model("unet", dict(config.model.kwargs), 2, channels)
  task = lambda: fedavg_segmentation_task(make, channels, size, clients, client.local_steps, client.batch_size,
                                          client.learning_rate)
  protocol = dict(model=f"unet {tuple(config.model.kwargs['widths'])}", input=f"{size}x{size}x{channels}",
                  clients=clients, batch=client.batch_size, local_steps=client.local_steps, optimizer="adam")
  return Workload("drive_unet", finish(config, rounds, smoke),
                  lambda: _ref().FedAvgLoop(task(), config.algorithm.persist_optimizer), task,
                  clients * client.local_steps * client.batch_size, protocol, 2, (size, size, channels))


def fcl(smoke: bool, clients: int, rounds: int) -> Workload:
  config = load_config("configs/fcl_acdc.py:fcl,table")
  size = 64
  if smoke:
    synthetic_data(config, image_size=16, channels=1, patients=8)
    config.model.kwargs = ml_collections.ConfigDict(dict(widths=(4, 8), projection_dim=8))
    config.partition.num_clients = 2
    config.client.batch_size, config.client.local_steps = 2, 2
    config.algorithm.bank_size, config.algorithm.exchange_size = 16, 8
    size = 16
  algo, client, kwargs = config.algorithm, config.client, config.model.kwargs.to_dict()
  clients, partitions = config.partition.num_clients, config.data.num_partitions
  make = torch_model("unet_encoder_projector", kwargs, 0, 1)
  torch_round = lambda: _ref().FCLReference(
      make, (1, size, size), clients, client.batch_size, partitions, client.local_steps, algo.bank_size,
      algo.exchange_size, kwargs["projection_dim"], algo.temperature, algo.momentum, client.learning_rate)
  protocol = dict(model=f"unet_encoder_projector {tuple(kwargs['widths'])}", input=f"{size}x{size}x1",
                  clients=clients, batch=f"{client.batch_size} volumes x {partitions} partitions",
                  local_steps=client.local_steps, optimizer="adam", bank=algo.bank_size, exchange=algo.exchange_size)
  return Workload("fcl", finish(config, rounds, smoke), torch_round, None,
                  clients * client.local_steps * client.batch_size * partitions, protocol, 0, (size, size, 1))


def scaling(smoke: bool, clients: int, rounds: int) -> Workload:
  config = load_config("configs/fedavg.py")
  size, channels, num_classes, per_client = 32, 3, 4, 64
  widths, dense = (32, 64, 128), 256
  batch, steps = 32, 2
  if smoke:
    size, widths, dense, per_client, batch = 16, (4, 8), 16, 8, 4
  # a row is one slice; 4 sites x 4 slices per patient x 60 % train: enough patients for per_client rows each
  synthetic_data(config, image_size=size, channels=channels, num_classes=num_classes,
                 patients=max(8, -(-clients * per_client // (4 * 4 * 6 // 10))))
  config.partition.method, config.partition.num_clients = "iid", clients
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=widths, dense=dense))
  config.client.optimizer, config.client.learning_rate = "sgd", 0.05
  config.client.momentum = 0.0
  config.client.batch_size, config.client.local_steps = batch, steps
  config.aggregation.weighting = "uniform"
  make = torch_model("small_cnn", config.model.kwargs.to_dict(), num_classes, channels)

  def task():
    import torch

    from benchmarks import contender

    def batches(k: int):
      gen = torch.Generator().manual_seed(k)
      return [(torch.randn((batch, channels, size, size), generator=gen),
               torch.randint(0, num_classes, (batch,), generator=gen)) for _ in range(steps)]

    loss = lambda model, x, y: torch.nn.functional.cross_entropy(model(x)[1], y)
    return contender.TorchFedAvgTask(make, batches, loss, clients, "sgd", 0.05)

  protocol = dict(model=f"small_cnn {widths} dense {dense}", input=f"{size}x{size}x{channels}", clients=clients,
                  batch=batch, local_steps=steps, optimizer="sgd")
  torch_round = lambda: _ref().FedAvgLoop(task())
  return Workload("scaling", finish(config, rounds, smoke), torch_round, task,
                  clients * steps * batch, protocol, num_classes, (size, size, channels))


BUILDERS = {"fedirm": fedirm, "drive_unet": drive_unet, "fcl": fcl, "scaling": scaling}


def get(name: str, smoke: bool = False, clients: int = 0, rounds: int = 5) -> Workload:
  if name not in BUILDERS:
    raise ValueError(f"unknown workload {name!r}; allowed: {list(WORKLOADS)}")
  return BUILDERS[name](smoke, clients, rounds)
