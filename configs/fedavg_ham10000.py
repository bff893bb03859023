"""FedAvg 7-class skin-lesion classification on HAM10000 (ISIC 2018 task 3) at 64x64, 10 clients.

  python main.py --config configs/fedavg_ham10000.py --workdir runs/ham_fedavg
  python main.py --config configs/fedavg_ham10000.py:pooled --workdir runs/ham_pooled   # centralised, same budget
  python main.py --config configs/fedavg_ham10000.py:site3,runlocal --workdir /tmp/ham_smoke  # 1 tiny round

The argument (docs/running.md): ``mode`` = fedavg | pooled | site0..site9, and the flag ``runlocal``.

Data: prepared by ``python -m fedjax_med.data.prepare ham10000 --raw HAM10000 --out prepared/ham10000``
(then ``--config.data.root=prepared/ham10000``) or the compact ``$FEDJAX_MED_DATA/ham10000/ham10000_64.npz``;
its lesion-grouped train split is spread over 10 clients with Dirichlet(0.5) label skew, evaluation on the
held-out test split (1980 images). Model: the narrow DenseNet (CPU budget); ``model.name='densenet121'`` is
the full-size model.
"""

from configs import common, fedavg


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, "configs/fedavg_ham10000.py", mode=common.baseline_modes(10), runlocal=False)
  config = fedavg.get_config()
  config.num_rounds = 30
  config.data.name = "ham10000"
  config.data.root = common.data_file("ham10000/ham10000_64.npz")
  config.data.mean = (0.762, 0.546, 0.570)  # HAM10000 channel means / stds of x/255 (train split)
  config.data.std = (0.141, 0.151, 0.168)
  config.data.flips = True

  config.task.name = "classification"
  config.partition.method = "dirichlet"
  config.partition.num_clients = 10
  config.partition.alpha = 0.5

  config.model.name = "densenet_narrow"
  config.model.kwargs = dict(dropout=0.0)

  config.client.optimizer = "adam"
  config.client.learning_rate = 1e-3
  config.client.batch_size = 32
  config.client.local_steps = 10

  config.eval.every = 5
  config.eval.batch_size = 128
  config.eval.key_metric = "balanced_accuracy"
  common.apply_mode(config, args.mode)
  if args.runlocal:
    common.apply_runlocal(config)
    common.tiny_densenet(config)
  return config
