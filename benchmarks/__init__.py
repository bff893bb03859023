"""Benchmarks (``python -m benchmarks.NAME``); they run with the same XLA flags as ``main.py``."""

from fedjax_med import xla_flags

xla_flags.apply_cpu_defaults()
