"""fedjax_med: federated, label-efficient medical image learning as pure JAX functions.

Importing the package changes nothing in the environment. The entry points (``main.py``, the
benchmarks, the tests) set fedjax_med's CPU XLA flags before JAX starts; a notebook or script that
wants the same kernels, and so the same numbers, calls ``fedjax_med.xla_flags.apply_cpu_defaults()``
before importing JAX (see ``fedjax_med/xla_flags.py``).
"""
