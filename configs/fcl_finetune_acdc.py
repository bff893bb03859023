"""FCL stage 2: federated fine-tuning of a U-Net on ACDC with N labeled patients per client.

  python main.py --config configs/fcl_finetune_acdc.py:1 --config.model.init_encoder=runs/fcl_pre \\
      --workdir runs/ft_fcl_n1                                   # encoder from FCL pre-training, N = 1
  python main.py --config configs/fcl_finetune_acdc.py:1 --workdir runs/ft_random_n1   # random initialisation

The argument is N, the labeled patients per client (the issue's N in {1, 2, 4}); each client keeps N of
its 8 training patients (both ED and ES volumes, all their slices), drawn with the run's seed. 10 clients,
FedAvg, Dice + cross-entropy, evaluation on the 20 held-out test patients: 3-D Dice per structure (RV, Myo,
LV) per volume, mean over volumes (``dice3d``, ``dice3d_class1..3``). The U-Net's widths must be the
pre-training encoder's (``configs/fcl_acdc.py``); the decoder starts fresh.
PCL's fine-tuning: Adam 5e-5, batch 10, 100 epochs, CE only; ours: Adam 1e-3, Dice + CE (short CPU budget).
"""

import ml_collections

from configs import common, fcl_acdc, fedavg


def get_config(arg: str = "1") -> ml_collections.ConfigDict:
  arg, _, scale = arg.partition(",")
  if scale not in ("", "table"):
    raise ValueError(f"unknown config scale {scale!r}; allowed: '' (CPU protocol) or 'table'")
  try:
    labeled_patients = int(arg)
  except ValueError:
    raise ValueError(f"configs/fcl_finetune_acdc.py takes N (labeled patients per client); got {arg!r}") from None
  pre = fcl_acdc.get_config("fcl," + scale)
  config = fedavg.get_config()
  config.num_rounds = 30
  config.data.name = "acdc"
  config.data.root = common.data_file("acdc/acdc_slices_128.npz")
  config.data.mean, config.data.std = pre.data.mean, pre.data.std
  config.data.flips = True
  config.task.name = "segmentation"
  config.task.dice_weight = 1.0
  config.task.ce_weight = 1.0
  config.partition.method = "iid"
  config.partition.num_clients = pre.partition.num_clients  # the pre-training clients
  config.partition.groups_per_client = labeled_patients
  config.model.name = "unet"
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=pre.model.kwargs.widths, norm="batch"))
  config.model.init_encoder = ""  # a pre-training workdir; "" = random initialisation
  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-3
  config.client.batch_size = 8
  config.client.local_steps = 10
  config.eval.every = 10
  config.eval.batch_size = 64
  config.eval.key_metric = "dice3d"
  config.checkpoint.every = 10
  if scale == "table":  # docs/results/fcl_acdc.md; pre-train with configs/fcl_acdc.py:MODE,table
    config.data.downsample = 2  # 64 x 64 slices
    config.num_rounds = 20  # 200 local steps per client: 36 fine-tuning runs in ~1.3 h (2 at a time)
    config.client.batch_size = 4
    config.client.learning_rate = 2e-3  # at 1e-3 the myocardium (Dice 0.002) is not learned in this budget
    config.eval.every = 5
    config.checkpoint.every = 10
  return config
