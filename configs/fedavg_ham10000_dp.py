"""Client-level DP-FedAvg (McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language Models")
on HAM10000 = ISIC 2018 task 3 at 64x64: many small clients, Poisson sampling, noise calibrated to a target ε.

  python main.py --config configs/fedavg_ham10000_dp.py:4 --workdir runs/dp_eps4      # ε = 4 at δ = 1e-3
  python main.py --config configs/fedavg_ham10000_dp.py:inf --workdir runs/dp_inf    # the same run without DP
  python main.py --config configs/fedavg_ham10000_dp.py:4,table ...                 # docs/results/dp_ham10000.md
  python main.py --config configs/fedavg_ham10000_dp.py:eps=2,runlocal --workdir /tmp/dp_smoke   # 1 tiny round

The argument (docs/running.md): ``eps``, the target ε (``inf``: no clipping, no noise; the same clients, sampling
and optimizers), and the flags ``table`` and ``runlocal``. The
noise multiplier z is the smallest whose RDP ε after ``num_rounds`` rounds at rate q stays <= the target
(``privacy.noise_multiplier = -1``); ε is logged every round. The lesion-grouped training split (about 7000
images) is spread iid over 500 clients (about 14 images each: a cross-device regime, where client-level DP has a
chance), q = 0.1 (about 50 clients per round). Local SGD and server momentum (DP-FedAvgM); a small CNN keeps
the hundreds of rounds DP needs inside a CPU budget. δ = 1e-3 < 1 / number of clients.
"""

import ml_collections

from configs import common, fedavg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, "configs/fedavg_ham10000_dp.py", eps=4.0, table=False, runlocal=False)
  if not args.eps > 0:  # float('inf') parses 'inf': no clipping, no noise
    raise ValueError(f"configs/fedavg_ham10000_dp.py: the target epsilon must be > 0 or 'inf'; got eps={args.eps}")
  private = args.eps != float("inf")
  config = fedavg.get_config()
  config.num_rounds = 200
  config.data.name = "ham10000"
  config.data.root = common.data_file("ham10000/ham10000_64.npz")
  config.data.mean = (0.762, 0.546, 0.570)
  config.data.std = (0.141, 0.151, 0.168)
  config.task.name = "classification"
  config.partition.method = "iid"
  config.partition.num_clients = 500

  config.model.name = "small_cnn"
  # no batch norm: running statistics would be client data leaving the client outside the DP mechanism
  config.model.kwargs = ml_collections.ConfigDict(dict(widths=(32, 64), dense=128, norm="none"))
  config.client.optimizer = "sgd"
  config.client.learning_rate = 0.05
  config.client.momentum = 0.0
  config.client.batch_size = 14
  config.client.local_steps = 2
  config.server.optimizer = "sgd"
  config.server.learning_rate = 1.0
  config.server.momentum = 0.9
  config.aggregation.weighting = "uniform"  # DP-FedAvg's fixed denominator counts clients, not examples

  config.privacy.enabled = private
  config.privacy.clip = 0.5  # S (GUESS: near the median update norm of the non-private run's first rounds)
  config.privacy.noise_multiplier = -1.0  # calibrate z to the target
  config.privacy.sampling = "poisson"
  config.privacy.rate = 0.1
  config.privacy.delta = 1e-3
  config.privacy.accountant = "rdp"
  config.privacy.target_epsilon = args.eps if private else 0.0
  if not private:  # the same Poisson participation without the mechanism
    config.aggregation.clients_per_round = 50

  config.eval.every = 20
  config.eval.batch_size = 256
  config.eval.key_metric = "macro_auroc"
  config.checkpoint.every = 20
  if args.table:
    # docs/results/dp_ham10000.md: 4 privacy levels x 3 seeds in about an hour of this 2-core CPU. The full config
    # costs ~10 s per round here (85 clients computed per round at 64x64); 32x32 images and 100 rounds (z is
    # calibrated to the target for 100 rounds) make a run ~5 min.
    config.data.downsample = 2
    config.num_rounds = 100
  if args.runlocal:  # the same 500 clients and sampling, z calibrated to the target for one round
    common.apply_runlocal(config)
    config.model.kwargs.update(widths=(4,), dense=8)
    config.data.downsample = 2
  return config
