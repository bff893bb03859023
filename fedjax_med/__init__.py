"""fedjax_med: federated, label-efficient medical image learning as pure JAX functions.

Importing the package sets fedjax_med's CPU XLA flags (``fedjax_med.xla_flags``) unless
``FEDJAX_MED_KEEP_XLA_FLAGS=1``, so that the command line, notebooks and tests run the same
kernels and get the same numbers. It takes effect when JAX has not yet run a computation.
"""

from fedjax_med import xla_flags as _xla_flags

_xla_flags.apply_cpu_defaults()
