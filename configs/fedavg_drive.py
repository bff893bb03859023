"""FedAvg U-Net vessel segmentation on DRIVE: 20 training images over 4 sites, 20 official test images.

  python main.py --config configs/fedavg_drive.py --workdir runs/drive_fedavg
  python main.py --config configs/fedavg_drive.py:pooled --workdir runs/drive_pooled   # centralised, same budget
  python main.py --config configs/fedavg_drive.py:site0 --workdir runs/drive_site0     # site 0 alone, same budget
  python main.py --config configs/fedavg_drive.py:mode=pooled,runlocal --workdir /tmp/drive_smoke   # 1 tiny round

The argument (docs/running.md): ``mode`` = fedavg | pooled | site0..site3, and the flag ``runlocal``.

Data: DRIVE prepared by ``python -m fedjax_med.data.prepare drive --raw DRIVE --out prepared/drive`` (then
``--config.data.root=prepared/drive``), or the compact ``$FEDJAX_MED_DATA/drive/drive.npz``.
Evaluation: Dice / IoU / pixel AUROC inside the field of view on the 20 test images (1st observer),
thresholding the vessel probability at 0.5 (argmax of 2 classes).
Protocol (sized for a 2-core CPU, see docs/results/fedavg.md): green channel, 64x64 random patches,
U-Net 16-32-64-128 with batch norm, Adam 1e-3, 4 clients x 20 local steps x 30 rounds.
"""

from configs import common, fedavg


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, "configs/fedavg_drive.py", mode=common.baseline_modes(4), runlocal=False)
  config = fedavg.get_config()
  config.num_rounds = 30
  config.data.name = "drive"
  config.data.root = common.data_file("drive/drive.npz")
  config.data.channels = (1,)  # green: the channel with the most vessel contrast (common DRIVE practice)
  config.data.mean = (0.381,)  # green-channel mean / std inside the FOV of the 20 training images
  config.data.std = (0.114,)
  config.data.batch_mode = "patches"
  config.data.patch_size = 64
  config.data.flips = True

  config.task.name = "segmentation"
  config.task.dice_weight = 1.0
  config.task.ce_weight = 1.0

  config.partition.method = "iid"  # the 20 training images, 5 per site (grouped by image id)
  config.partition.num_clients = 4

  config.model.name = "unet"
  config.model.kwargs = dict(widths=(16, 32, 64, 128), norm="batch")

  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-3
  config.client.batch_size = 16
  config.client.local_steps = 20

  config.eval.every = 10
  config.eval.batch_size = 4
  config.eval.pad_multiple = 8  # 2**(depth-1) for 4 U-Net levels
  config.eval.key_metric = "dice"
  config.checkpoint.every = 10
  common.apply_mode(config, args.mode)
  if args.runlocal:
    common.apply_runlocal(config)
    config.model.kwargs = dict(widths=(4, 8), norm="batch")
    config.data.patch_size = 32
  return config
