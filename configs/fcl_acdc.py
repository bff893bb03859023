"""FCL pre-training (Wu et al., MICCAI 2021) on ACDC cine-MRI volumes, and its contrastive baselines.

  python main.py --config configs/fcl_acdc.py --workdir runs/fcl_pre           # FCL (feature exchange)
  python main.py --config configs/fcl_acdc.py:local --workdir runs/local_pre   # local CL, no exchange, FedAvg
  python main.py --config configs/fcl_acdc.py:simclr --workdir runs/simclr_pre # FedSimCLR (instance InfoNCE)
  python main.py --config configs/fcl_acdc.py:fcl,long --workdir runs/fcl_pre_long  # 64x64, 100 rounds
  python main.py --config configs/fcl_acdc.py:fcl,long,sites --workdir runs/fcl_pre_sites  # non-iid: 5 sites
  python main.py --config configs/fcl_acdc.py:mode=simclr,runlocal --workdir /tmp/x  # 2 tiny rounds (a smoke test)
then fine-tune with configs/fcl_finetune_acdc.py (``--config.model.init_encoder=runs/fcl_pre``).
The argument (docs/running.md): ``mode`` = fcl | local | simclr, the flags ``table``, ``long`` or ``full`` (the scale),
``sites`` (the non-iid split below) and ``runlocal``.

Data: the compact ``$FEDJAX_MED_DATA/acdc/acdc_slices_128.npz`` (200 ED/ES volumes of 100 patients at 128x128;
volumes rebuilt from the slice rows) or ACDC prepared from its NIfTI download with
``python -m fedjax_med.data.prepare acdc --raw DIR --out prepared/acdc`` (then ``--config.data.root=...``).
The 80 training patients (16 per pathology group; 20 held out for testing, split by patient, seeded) go to
10 clients iid over patients, 8 patients = 16 volumes each; with ``sites``, 5 clients, one per pathology group
(DCM, HCM, MINF, NOR, RV: 16 patients = 32 volumes each), so that sites differ in anatomy. The paper splits all
100 patients over the 10 clients; holding out the test patients keeps the fine-tuning evaluation on patients never
seen in pre-training.
Only ED and ES frames are in the compact file (the paper and PCL also use the other cine frames).

Evaluation during pre-training: ``partition_top1``, the fraction of held-out slices whose nearest
neighbour (cosine, among other volumes' slices) lies in the same partition (chance 0.25).

Values the paper does not give (methods.md 2.3, 2.5) are ours and marked GUESS below.
"""

import ml_collections

from configs import common, fedavg

MODES = ("fcl", "local", "simclr")
SITES = common.ACDC_SITES


def fcl_algorithm() -> ml_collections.ConfigDict:
  algo = ml_collections.ConfigDict()
  algo.name = "fcl"  # the server averages every variable, BN statistics with the weights
  algo.persist_optimizer = True  # each client keeps its Adam state across rounds (False: re-initialised each round)
  algo.loss = "fcl"  # fcl | simclr
  algo.temperature = 0.1  # PCL's --temp 0.1 (the FCL paper's value is not known)
  # Momentum-encoder EMA theta_k <- m theta_k + (1 - m) theta_q after every local step (GUESS: MoCo-typical; the
  # paper's m is not known). Measured: at 0.99 with 8 local steps a round, a round leaves the momentum encoder 92 %
  # (0.99**8) what it was before the round, so it lags the global model; try 0.9 or momentum_resync=True.
  algo.momentum = 0.99
  # False: the momentum encoder stays on the client and is never re-synced. FCL's code is not released (methods.md
  # 2.1); this follows MoCo, whose momentum encoder FCL's local contrastive learning uses (methods.md 2.2). True: it
  # restarts from the received global model at the start of every round.
  algo.momentum_resync = False
  algo.bank_size = 256  # local FIFO of momentum features (GUESS)
  algo.exchange_size = 128  # features each client sends per round (GUESS)
  algo.remote_weight = 1.0  # loss = local + remote_weight x remote (GUESS: 1:1)
  algo.exchange = True  # False: the "local contrastive learning without exchange" baseline
  return algo


def apply_mode(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  if mode not in MODES:
    raise ValueError(f"unknown config mode {mode!r}; allowed: {list(MODES)}")
  if mode == "local":
    config.algorithm.exchange = False
  elif mode == "simclr":
    config.algorithm.loss = "simclr"
    config.algorithm.exchange = False
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  where = "configs/fcl_acdc.py"
  args = common.parse_arg(arg, where, mode=MODES, table=False, long=False, full=False, sites=False, runlocal=False)
  scale = common.one_scale(args, where, "table", "long", "full")
  config = fedavg.get_config()
  config.num_rounds = 20
  config.data.name = "acdc"
  config.data.root = common.data_file("acdc/acdc_slices_128.npz")
  config.data.mean = (0.230,)  # x/255 over the training slices
  config.data.std = (0.233,)
  config.data.batch_mode = "volume_partitions"
  config.data.num_partitions = 4  # S: the FCL figure and PCL's code
  config.data.views = ("spatial", "spatial")  # PCL's mirror / rotation / scale transforms, no elastic warp
  config.data.flips = False  # inside the spatial views

  config.task.name = "representation"
  config.partition.method = "iid"
  config.partition.num_clients = 10

  config.model.name = "unet_encoder_projector"
  # CPU protocol: 4 levels 16-128 (PCL: 5 levels 48-768); projection 128 -> 64 (PCL: 768 -> 512)
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=(16, 32, 64, 128), projection_dim=64))

  config.algorithm = fcl_algorithm()
  config.client.optimizer = "adam"  # PCL: SGD 0.1, momentum 0.9, cosine, 300 epochs; Adam suits the short budget
  config.client.learning_rate = 1e-3
  config.client.batch_size = 4  # volumes per batch -> 16 slices (one per partition)
  config.client.local_steps = 8  # 2 local epochs over 16 volumes

  config.eval.every = 5
  config.eval.batch_size = 64
  config.eval.key_metric = "partition_top1"
  config.checkpoint.every = 5
  if scale in ("table", "long"):  # docs/results/fcl_acdc.md: sized so that the whole table fits ~2 h of a 2-core CPU
    config.data.downsample = 2  # 64 x 64 slices
  if scale == "long":  # the ,table pre-training x 5 (800 local steps per client), same model and data;
    # ~5x its cost: FCL ~20 min, local CL ~16 min, FedSimCLR ~38 min of this 2-core CPU (20 rounds took 239 / 194 /
    # 455 s, docs/results/fcl_acdc.md). Fine-tune its encoders with configs/fcl_finetune_acdc.py:N,table.
    config.num_rounds = 100
    config.eval.every = 20
    config.checkpoint.every = 10
  if scale == "full":
    config.model.kwargs = ml_collections.ConfigDict(dict(widths=(48, 96, 192, 384, 768), projection_dim=512))
    config.num_rounds = 100
    config.client.batch_size = 8
    config.algorithm.bank_size = 1024
    config.algorithm.exchange_size = 512
  if args.sites:  # non-iid: the FCL paper's clients are different hospitals; ACDC's groups differ in anatomy
    common.acdc_site_partition(config)
  apply_mode(config, args.mode)
  if args.runlocal:  # 2 rounds: the second trains on the features exchanged in the first
    common.apply_runlocal(config, rounds=2, batch_size=2)
    config.data.downsample = 4  # 32 x 32 slices
    config.model.kwargs = ml_collections.ConfigDict(dict(widths=(4, 8), projection_dim=8))
    config.algorithm.bank_size = 8
    config.algorithm.exchange_size = 4
  return config
