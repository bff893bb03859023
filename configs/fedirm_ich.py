"""FedIRM on RSNA intracranial hemorrhage CT slices (the paper's second dataset), 5 subtypes.

  python -m fedjax_med.data.prepare rsna_ich --raw RSNA_DOWNLOAD --out prepared/rsna_ich --size 64
  python main.py --config configs/fedirm_ich.py --config.data.root=prepared/rsna_ich --workdir runs/fedirm_ich
  python main.py --config configs/fedirm_ich.py:lower,runlocal --config.data.root=prepared/rsna_ich --workdir /tmp/x

The argument (docs/running.md) is that of configs/fedirm_ham10000.py: ``mode``, the flags ``table`` or ``full`` and
``runlocal``.

Data: the Kaggle rsna-intracranial-hemorrhage-detection download (ID_*.dcm + stage_2_train.csv)
prepared with pydicom (``pip install fedjax_med[dicom]``): Hounsfield units windowed into brain
(40/80), subdural (80/200) and bone (600/2800) channels; slices without hemorrhage left out and
slices with several subtypes labeled with the first in the official order (see
``fedjax_med/data/converters/rsna_ich.py``). Modes as in configs/fedirm.py (lower, upper,
meanteacher, fixmatch, official); the rest of the protocol is that of configs/fedirm_ham10000.py.
"""

import ml_collections

from configs import common, fedirm_ham10000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  where = "configs/fedirm_ich.py"
  config = fedirm_ham10000.build(common.parse_arg(arg, where, **fedirm_ham10000.SPEC), where)
  config.data.name = "rsna_ich"
  config.data.root = common.data_file("rsna_ich")  # a prepared directory; pass --config.data.root=DIR
  # Windowed channels are spread over [0, 1]; these centre them without per-dataset statistics
  # (replace with your prepared training split's channel means / stds if you have them).
  config.data.mean = (0.5, 0.5, 0.5)
  config.data.std = (0.25, 0.25, 0.25)
  config.data.synthetic = {}
  return config
