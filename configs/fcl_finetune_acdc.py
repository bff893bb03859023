"""FCL stage 2: federated fine-tuning of a U-Net on ACDC with N labeled patients per client.

  python main.py --config configs/fcl_finetune_acdc.py:1 --config.model.init_encoder=runs/fcl_pre \\
      --workdir runs/ft_fcl_n1                                   # encoder from FCL pre-training, N = 1
  python main.py --config configs/fcl_finetune_acdc.py:1 --workdir runs/ft_random_n1   # random initialisation
  python main.py --config configs/fcl_finetune_acdc.py:1,table,staged --config.model.init_encoder=runs/fcl_pre \\
      --workdir runs/ft_fcl_n1_staged     # decoder only first, then everything at a lower lr
  python main.py --config configs/fcl_finetune_acdc.py:labeled_patients=2,staged,runlocal --workdir /tmp/x  # smoke

The argument (docs/running.md) is N = ``labeled_patients``, the labeled patients per client (the issue's N in
{1, 2, 4}); each client keeps N of its 8 training patients (both ED and ES volumes, all their slices), drawn with
the run's seed. 10 clients, FedAvg, Dice + cross-entropy, evaluation on the 20 held-out test patients: 3-D Dice per
structure (RV, Myo, LV) per volume, mean over volumes (``dice3d``, ``dice3d_class1..3``). The U-Net's widths must be
the pre-training encoder's (``configs/fcl_acdc.py``); the decoder starts fresh.
PCL's fine-tuning: Adam 5e-5, batch 10, 100 epochs, CE only; ours: Adam 1e-3, Dice + CE (short CPU budget).

Flags after N: ``runlocal`` (a seconds-long check of the config; the pre-training encoder must be that of
``configs/fcl_acdc.py:runlocal``), ``table`` (the CPU protocol of docs/results/fcl_acdc.md) and ``staged``: the
encoder's weights stay fixed for the first half of the rounds (the fresh decoder learns on the frozen encoder), then
every weight trains at ``client.after_unfreeze_lr_scale`` x the learning rate, with persistent client optimizer state
(measured: plain fine-tuning moved the encoder 2-4x farther than pre-training had). The same schedule applies to
every initialisation, random included, so the comparison stays paired.

The frozen-encoder probe ``python -m fedjax_med.probe --encoder PRE --config configs/fcl_finetune_acdc.py:1,table``
scores an encoder without fine-tuning it (a per-pixel linear head on its frozen features).
"""

import ml_collections

from configs import common, fcl_acdc, fedavg

OPTIONS = ("table", "staged")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  where = "configs/fcl_finetune_acdc.py"
  args = common.parse_arg(arg, where, labeled_patients=1, table=False, staged=False, runlocal=False)
  pre = fcl_acdc.get_config(f"fcl,table={args.table},runlocal={args.runlocal}")
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
  config.partition.groups_per_client = args.labeled_patients
  config.model.name = "unet"
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=pre.model.kwargs.widths, norm="batch"))
  config.model.init_encoder = ""  # a pre-training workdir; "" = random initialisation
  # Staged fine-tuning (fedjax_med.algorithms.fedavg.Schedule; ``staged`` sets it): variables whose '/'-joined path
  # matches the regex `frozen` stay fixed in the first `frozen_rounds` rounds; afterwards every parameter trains at
  # client.after_unfreeze_lr_scale x the learning rate. "" / 0 / 1.0 = plain fine-tuning.
  config.algorithm.frozen = ""
  config.algorithm.frozen_rounds = 0
  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-3
  config.client.after_unfreeze_lr_scale = 1.0
  config.client.batch_size = 8
  config.client.local_steps = 10
  config.eval.every = 10
  config.eval.batch_size = 64
  config.eval.key_metric = "dice3d"
  config.checkpoint.every = 10
  if args.table:  # docs/results/fcl_acdc.md; pre-train with configs/fcl_acdc.py:MODE,table
    config.data.downsample = 2  # 64 x 64 slices
    config.num_rounds = 20  # 200 local steps per client: 36 fine-tuning runs in ~1.3 h (2 at a time)
    config.client.batch_size = 4
    config.client.learning_rate = 2e-3  # at 1e-3 the myocardium (Dice 0.002) is not learned in this budget
    config.eval.every = 5
    config.checkpoint.every = 10
  if args.runlocal:  # the pre-training's runlocal model and images; staged: frozen in round 0, unfrozen in round 1
    common.apply_runlocal(config, rounds=2 if args.staged else 1)
    config.data.downsample = pre.data.downsample
  if args.staged:
    # the encoder's weights (params/down*/..., params/bottleneck/...); its BatchNorm running statistics keep
    # tracking the fine-tuning images (add batch_stats to the regex to fix them too)
    config.algorithm.frozen = r"^params/(down\d+|bottleneck)/"
    config.algorithm.frozen_rounds = config.num_rounds // 2  # GUESS: half of the budget for the decoder alone
    config.client.after_unfreeze_lr_scale = 0.1  # GUESS: 2e-4 in the table protocol (PCL fine-tunes at 5e-5)
    config.algorithm.persist_optimizer = True  # Adam's moments carry over between rounds and across the unfreezing
  return config
