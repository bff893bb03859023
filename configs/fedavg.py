"""FedAvg on the embedded synthetic data (no download): the quick-start job.

  python main.py --config configs/fedavg.py --workdir /tmp/fedavg
  python main.py --config configs/fedavg.py:runlocal --workdir /tmp/fedavg_smoke   # 1 tiny round (docs/running.md)

4 sites (the synthetic set's domains), a small CNN classifying the object's shape,
60 rounds x 10 local Adam steps; finishes in under a minute on a 2-core CPU.
Every other config imports this one and overrides what differs.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, "configs/fedavg.py", runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 60
  config.overwrite = False  # True: move an existing run made by another config aside and start again

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"  # synthetic | ham10000 | drive | acdc | pneumoniamnist | any prepared name
  config.data.root = ""  # prepared directory (python -m fedjax_med.data.prepare) or a compact .npz
  config.data.synthetic = dict(num_sites=4, patients_per_site=24, slices_per_volume=4, image_size=32,
                               num_classes=4, channels=1, seed=0)
  # data.name='tfds' (with data.loader='grain'): a TFDS dataset built locally, read with download=False
  config.data.tfds = dict(name="", data_dir="", train_split="train", eval_split="test", image_key="image",
                          label_key="label", mask_key="", num_classes=0, num_mask_classes=0)
  config.data.downsample = 1  # integer factor per side (block-mean images, nearest masks); 1 = as prepared
  config.data.weak_forms = ()  # per client: real_scribble|full|scribble|noisy_scribble|point|box|block; () = as is
  config.data.class_budget = -1  # batch_mode='multitask': training images keeping their class label (-1 = all)
  config.data.mask_budget = -1  # ... and keeping their mask
  config.data.cls_source = ml_collections.ConfigDict(dict(name="", root=""))  # multitask: a second dataset for the
  # classification streams (e.g. pneumoniamnist), resized to the first one's images; "" = the same dataset
  config.data.channels = ()  # keep these image channels (e.g. (1,) = green); () keeps all
  config.data.loader = "device"  # device (client data on the device) | grain (read per round, for big data)
  # images (whole examples) | patches (random crops) | volume_partitions (one slice per partition of a volume)
  config.data.batch_mode = "images"
  config.data.patch_size = 0
  config.data.flips = True  # random horizontal/vertical flips on device
  config.data.views = ()  # classification: augmented views per example, e.g. ("weak", "strong"); () = flips only
  config.data.cohort_views = {}  # cohort name -> views, overriding data.views for that cohort
  config.data.mean = (0.5,)  # per-channel normalisation of x/255
  config.data.std = (0.25,)
  config.data.eval_split = "test"
  config.data.num_partitions = 4  # volume_partitions and representation evaluation: partitions per volume

  config.task = ml_collections.ConfigDict()
  config.task.name = "classification"  # classification | segmentation | representation (self-supervised)
  config.task.dice_weight = 1.0  # segmentation: loss = ce_weight * CE + dice_weight * soft Dice
  config.task.ce_weight = 1.0
  # weak_segmentation: partial CE on data scribbles + crf_weight x gated CRF (Obukhov et al.; FedICRA's values)
  # multitask (MultiMix): cls_weight CE + dice_weight Dice + ssl_weight FixMatch + consistency_weight seg KL
  config.task.cls_weight = 1.0
  config.task.ssl_weight = 0.25
  config.task.consistency_weight = 0.0  # (configs/multimix_ham10000.py: 0.01 in mode multimix)
  config.task.threshold = 0.7
  config.task.crf_weight = 0.0
  config.task.crf_radius = 5
  config.task.crf_sigma_xy = 6.0
  config.task.crf_sigma_rgb = 0.1

  config.partition = ml_collections.ConfigDict()
  config.partition.method = "column"  # iid | dirichlet | column (natural split) | pooled (centralised)
  config.partition.column = "site"
  config.partition.clients = ()  # column values in client order; () = sorted unique values
  config.partition.num_clients = 4
  config.partition.alpha = 0.5  # dirichlet concentration
  config.partition.only_client = -1  # >= 0: train that client alone (the "each site alone" baseline)
  config.partition.labeled_clients = ()  # clients that keep labels; () and labeled_fraction=1 -> all labeled
  config.partition.labeled_fraction = 1.0
  config.partition.groups_per_client = 0  # > 0: each client keeps only this many groups (patients), seeded

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=(16, 32), dense=64))
  config.model.init_encoder = ""  # a workdir whose global_variables.msgpack gives the U-Net encoder (fine-tuning)

  config.algorithm = ml_collections.ConfigDict()
  config.algorithm.name = "fedavg"
  config.algorithm.prox_mu = 0.0  # FedProx mu; 0 = FedAvg
  config.algorithm.batch_stats = "average"  # average | local (FedBN: norm layers stay local)
  config.algorithm.local_params = ""  # regex over variable paths kept local (personalised layers)
  config.algorithm.persist_optimizer = False  # keep client optimizer state across rounds

  config.client = ml_collections.ConfigDict()
  config.client.optimizer = "adam"  # sgd | adam | adamw
  config.client.learning_rate = 3e-3
  config.client.momentum = 0.9  # sgd only
  config.client.weight_decay = 0.0
  config.client.batch_size = 16
  config.client.local_steps = 10  # exactly one of local_steps / local_epochs is > 0
  config.client.local_epochs = 0.0

  config.server = ml_collections.ConfigDict()
  config.server.optimizer = "sgd"  # sgd (lr 1 = FedAvg) | adam (FedAdam) | yogi (FedYogi) | adagrad
  config.server.learning_rate = 1.0
  config.server.momentum = 0.0
  config.server.b1 = 0.9
  config.server.b2 = 0.99
  config.server.eps = 1e-3  # adaptivity tau of Reddi et al. 2021

  config.aggregation = ml_collections.ConfigDict()
  config.aggregation.weighting = "num_examples"  # num_examples | uniform
  config.aggregation.clients_per_round = 0  # 0 = all clients every round
  config.aggregation.nonfinite = "skip"  # skip: leave a NaN client out and report it | stop: stop the run

  # Client-level DP-FedAvg (fedjax_med.engine.privacy); needs the `dp` extra for the accounting.
  config.privacy = ml_collections.ConfigDict()
  config.privacy.enabled = False
  config.privacy.clip = 1.0  # S: each client's update clipped to global L2 norm <= S
  config.privacy.noise_multiplier = 1.0  # z: noise N(0, (z S)^2) on the sum; < 0 = calibrate to target_epsilon
  config.privacy.sampling = "poisson"  # poisson (rate q) | fixed (aggregation.clients_per_round)
  config.privacy.rate = 1.0  # poisson: each client's participation probability q
  config.privacy.delta = 1e-5
  config.privacy.accountant = "rdp"  # rdp | pld (pld: poisson sampling only)
  config.privacy.target_epsilon = 0.0  # > 0: stop before a round would exceed it (and calibrate z if z < 0)
  config.privacy.unprotected_messages = ()  # messages besides the update accepted WITHOUT protection
  # True: the noise and the Poisson draw derive from config.seed (same seed, same noise) -- simulation research
  # only: anyone holding the config or a checkpoint can recompute and subtract the noise. False (default): a fresh
  # key from the OS's entropy each round, never written or sent.
  config.privacy.reproducible_noise = False

  # Real deployment over Flower (python -m fedjax_med.deploy.flower; the `flower` extra).
  config.deploy = ml_collections.ConfigDict()
  config.deploy.min_clients = 2  # a round needs this many replies, else the server stops (checkpoint kept)
  config.deploy.round_timeout = 600.0  # s the server waits for the sites' replies in a round
  config.deploy.start_sites = 0  # sites to wait for before the first round (0: min_clients); later ones are unused
  config.deploy.connect_timeout = 120.0  # s the server waits for those sites to connect

  config.execution = ml_collections.ConfigDict()
  config.execution.strategy = "auto"  # auto (measured) | vmap | unrolled | sequential | stepwise
  config.execution.candidates = ("vmap", "unrolled", "sequential", "stepwise")  # what auto measures
  config.execution.scan_unroll = -1  # -1: full unroll on CPU, 1 elsewhere; 0: full; k: unroll k steps
  config.execution.calibration_steps = 2  # local steps of the shortened rounds auto measures
  config.execution.calibration_clients = 2  # per cohort, in the shortened rounds
  config.execution.calibration_repeats = 2
  config.execution.calibration_budget_s = 300.0  # auto measures no further candidate once it spent this long
  # (cheapest programs first: stepwise, sequential, vmap, unrolled); a DenseNet-121 candidate compiles for minutes
  config.execution.compilation_cache = "~/.cache/fedjax_med/xla"  # XLA's persistent compilation cache ("" = off):
  # reruns, resumed runs and other seeds of a config load their compiled programs instead of compiling them again
  config.execution.compilation_cache_min_seconds = 0.5  # programs compiled faster than this are not stored

  config.eval = ml_collections.ConfigDict()
  config.eval.every = 5  # rounds
  config.eval.batch_size = 64
  config.eval.key_metric = "accuracy"  # shown in the progress bar
  config.eval.pad_multiple = 1  # pad H, W to a multiple (U-Nets need 2**(depth-1))
  config.eval.hd95 = False
  config.eval.per_client = False  # each client's personalised model on its own site's rows (partition by column)
  # Best-validation model selection ('' = off): at every evaluation the global model is also scored on this split
  # (never the eval split or test); the best by select_metric ('' = key_metric; select_mode max | min) is kept in
  # WORKDIR/best_variables.msgpack and evaluated at the end: results.json eval 'best/<metric>', 'best_round'.
  config.eval.select_on = ""
  config.eval.select_metric = ""
  config.eval.select_mode = "max"

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 5  # rounds; also at the end
  config.checkpoint.keep = 2

  config.log = ml_collections.ConfigDict()
  config.log.progress = True
  config.log.tensorboard = True
  if args.runlocal:
    common.apply_runlocal(config)
    config.model.kwargs.update(widths=(4,), dense=8)
  return config
