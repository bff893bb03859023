"""MultiMix (Haque et al., ISBI 2021 / MELBA 2021) on HAM10000 = ISIC 2018 at 64x64: 7-class diagnosis and lesion
segmentation from few labels, with the paper's ablation ladder as modes.

  python main.py --config configs/multimix_ham10000.py --workdir runs/multimix            # MultiMix, 100 / 10
  python main.py --config configs/multimix_ham10000.py:umtl,1000,50 --workdir runs/umtl   # MODE,CLASS,MASK budgets
  python main.py --config configs/multimix_ham10000.py:multimix,100,10,fed --workdir runs/fed  # federated
  python main.py --config configs/multimix_ham10000.py:multimix,100,10,table ...   # docs/results/multimix_ham10000.md
  python main.py --config configs/multimix_ham10000.py:mode=enc,class_budget=all,mask_budget=50,fed,runlocal \\
      --workdir /tmp/x                                                        # a seconds-long check (1 tiny round)
Budgets: training images keeping their class label / their mask (``all`` = every one; the paper: {100, 1000,
all} x {10, 50, all}). The argument (docs/running.md): ``mode``, ``class_budget``, ``mask_budget`` and the flags
``fed``, ``pneumonia``, ``table``, ``claim`` and ``runlocal`` (1 round of 2 steps of a 2-level model at 32x32).

Modes (the paper's ladder; every mode trains the same network for the same steps):
  unet      segmentation only (Dice on labeled masks)
  enc       classification only (CE on labeled images)
  encssl    enc + FixMatch on the unlabeled images
  umtl      classification + segmentation, one shared encoder (no saliency, no SSL)
  umtls     umtl + the saliency bridge
  multimix  umtls + FixMatch + the unlabeled segmentation consistency
``,fed`` splits the training images over 7 sites by body location (``localization``: the 6 most frequent values
and one site for all others; the clients' labels are exactly those of the centralised run, drawn before the split)
and runs FedAvg of the multi-task model; without it the run is centralised (one client). A federated round does
``fed_local_steps`` per site (7 x 3 = 21 ~ the centralised round's 20), so both see the same number of images.
``,pneumonia`` takes the classification streams from PneumoniaMNIST (normal / pneumonia chest X-rays, resized to
the lesion images; scored on its test split) while segmentation stays on HAM10000: the paper's two-dataset setting
(centralised only).
``,table`` is the CPU protocol of docs/results/multimix_ham10000.md: 32x32 images, half the widths and 4 levels
(the page's runs had 5; see the comment below), 40 rounds at Adam 1e-3, the rest as above.
``,claim`` is the classification claim of docs/results/multimix_ham10000.md: ``,pneumonia,table`` (PneumoniaMNIST,
the paper's binary task, as the classification streams; HAM10000 masks for segmentation) with a single evaluation
at the end. Three seeds of
``enc`` and ``multimix`` at the lowest budget, paired by seed (the same labels and masks per seed), one run at a
time, take about 20 minutes on a 2-core CPU (measured while it was shared: multimix ~45 s to compile and ~5 s a
round of 20 steps; enc about a seventh of that); the alignment switch on multimix adds ~14, ``unet`` (the Dice
baseline) ~4:

  for s in 0 1 2; do for MODE in enc multimix; do
    python main.py --config configs/multimix_ham10000.py:$MODE,100,10,claim --config.seed=$s \\
        --workdir runs/claim/${MODE}_s$s
  done; done
  python -m fedjax_med.report runs/claim/*_s? --over-seeds --paired-baseline enc \\
      --metrics accuracy macro_f1 balanced_accuracy macro_auroc
  # the switch: multimix with --config.task.distribution_alignment=True --workdir runs/claim/multimix_da_s$s
  # Dice: unet,100,10,claim --workdir runs/claim/unet_s$s, then --paired-baseline unet --metrics seg_dice seg_hd95

Deviations from the official code (methods.md 4): the segmentation output is a 2-class softmax with a foreground
soft Dice (official: 1-channel sigmoid Dice); the unlabeled segmentation term is a pixel-wise KL between a weak
view and a pixel-aligned photometric view of the same unlabeled images (the official KL is identically zero);
every stream is normalised alike; streams are redrawn every step (the official ``cycle`` repeats one batch); RGB
input (official: grey).
"""

import ml_collections

from configs import common, fedavg

MODES = ("unet", "enc", "encssl", "umtl", "umtls", "multimix")
SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "*")  # "*": every other location


def apply_mode(config: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  if mode not in MODES:
    raise ValueError(f"unknown config mode {mode!r}; allowed: {list(MODES)}")
  task = config.task
  task.cls_weight = 0.0 if mode == "unet" else 1.0
  task.dice_weight = 0.0 if mode in ("enc", "encssl") else 5.0  # official dice_weight 5
  task.ssl_weight = 0.25 if mode in ("encssl", "multimix") else 0.0  # official ssl_weight 0.25
  task.consistency_weight = 0.01 if mode == "multimix" else 0.0  # official kl_weight 0.01 (on a term that is 0)
  config.model.kwargs.use_saliency = mode in ("umtls", "multimix")
  return config


def budget(value: str, where: str = "configs/multimix_ham10000.py") -> int:
  if value == "all":
    return -1
  if not value.isdigit():
    raise ValueError(f"{where}: a label budget is a count or 'all'; got {value!r}")
  return int(value)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  where = "configs/multimix_ham10000.py"
  args = common.parse_arg(arg, where, mode=MODES, class_budget="100", mask_budget="10", fed=False, pneumonia=False,
                          table=False, claim=False, runlocal=False)
  flags = {f for f in ("fed", "pneumonia", "table", "claim") if args[f]}
  if "claim" in flags:
    if "fed" in flags:
      raise ValueError(f"{where}: claim is centralised (its PneumoniaMNIST stream); got {arg!r}")
    flags |= {"pneumonia", "table"}
  federated = "fed" in flags
  config = fedavg.get_config()
  config.num_rounds = 60
  config.data.name = "ham10000"
  config.data.root = common.data_file("ham10000/ham10000_64.npz")
  config.data.mean = (0.5,)  # the official Normalize(0.5, 0.5), on every stream alike
  config.data.std = (0.5,)
  config.data.channels = ()  # RGB: dermoscopy's colour carries the diagnosis (official: Grayscale, for X-rays)
  config.data.batch_mode = "multitask"
  config.data.class_budget = budget(args.class_budget, where)
  config.data.mask_budget = budget(args.mask_budget, where)
  if "pneumonia" in flags:
    config.data.cls_source.name = "pneumoniamnist"
    config.data.cls_source.root = common.data_file("pneumoniamnist/pneumoniamnist_28.npz")

  config.task.name = "multitask"
  config.task.threshold = 0.7  # official FixMatch confidence
  # ours (False = the official code): ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020) of
  # the pseudo-labels: weak-view probabilities x labeled class prior / running mean of the unlabeled predictions,
  # renormalised, before the argmax and the threshold (losses/multitask.py)
  config.task.distribution_alignment = False
  config.task.alignment_momentum = 0.99  # that running mean's EMA momentum (~ the last 100 steps; ReMixMatch
  # averages the last 128 batches)
  config.partition.method = "column" if federated else "pooled"
  config.partition.column = "site"
  config.partition.clients = SITES
  config.partition.num_clients = len(SITES) if federated else 1

  config.model.name = "multimix"
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=(16, 32, 64, 128, 256), dropout=0.25,
                                                       use_saliency=True))  # official: 5 levels at 256x256
  config.model.min_deepest_size = 4  # ours: fewer pixels a side at the deepest level is an error (0 = off)
  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-4  # official Adam 1e-4 (its StepLR decays to ~0 by epoch 40)
  config.client.batch_size = 10  # official: 10 per stream
  config.client.local_steps = 3 if federated else 20  # federated: per site, 7 sites x 3 ~ one centralised round

  config.eval.every = 10
  config.eval.batch_size = 128
  config.eval.key_metric = "accuracy"
  config.eval.hd95 = True
  config.eval.pad_multiple = 32
  config.checkpoint.every = 10
  config.execution.strategy = "stepwise"  # a 20-step unrolled client program with the saliency takes > 10 min to
  # compile on this CPU; auto would measure all four strategies first (~2 min) and pick stepwise here anyway
  if "table" in flags:
    config.data.downsample = 2  # 32x32
    # 4 levels, half the widths: the deepest map stays 4x4 (and the bridge joins at 8x8). With 5 levels it was 2x2
    # and instance norm over 4 pixels left every classifier feature in [0.58, 1.73]; 4 levels gave macro AUROC 0.815
    # against 0.776. docs/results/multimix_ham10000.md was run with 5 levels, (8, 16, 32, 64, 128).
    config.model.kwargs.widths = (8, 16, 32, 64)
    config.num_rounds = 40  # 800 centralised steps
    config.client.learning_rate = 1e-3  # the short schedule: at 1e-4 the classifier is still at the majority class
    config.eval.every = 20
    config.eval.pad_multiple = 16
  if "claim" in flags:  # the classification claim: the ,pneumonia,table protocol, scored once at the end
    config.eval.every = config.num_rounds  # one evaluation (the table's extra one at round 20 costs CPU, not data)
    config.checkpoint.every = config.num_rounds
  apply_mode(config, args.mode)
  if args.runlocal:
    common.apply_runlocal(config)
    config.data.downsample = 2  # 32 x 32
    config.model.kwargs.widths = (4, 8)
  return config
