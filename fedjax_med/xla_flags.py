"""XLA flags fedjax_med sets before JAX starts (on import of the package, from ``main.py`` and the benchmarks).

On XLA:CPU this jaxlib routes convolutions and dots through YNNPACK fusions by default;
turning them off (``--xla_cpu_experimental_ynn_fusion_type=`` with an empty value) falls back to
XLA's Eigen kernels, measured 1.25-1.56x faster on DenseNet-121 and U-Net training steps on a
2-core Zen 3 with identical first-step losses (see benchmarks/ and the developers' notes). The
flag only concerns the CPU backend, so GPU runs are unaffected. Numbers differ from the default
kernels' in the last bits, which is why every entry point sets the same flags.

Importing this module never imports JAX; the flags must be in the environment before JAX
initialises its backends. ``FEDJAX_MED_KEEP_XLA_FLAGS=1`` leaves ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import os

CPU_DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def apply_cpu_defaults(environ: dict[str, str] | None = None) -> str:
  """Appends the CPU default flags not already named in ``XLA_FLAGS``; returns the new value."""
  env = os.environ if environ is None else environ
  current = env.get("XLA_FLAGS", "")
  if env.get("FEDJAX_MED_KEEP_XLA_FLAGS") == "1":
    return current
  names = {flag.split("=", 1)[0] for flag in current.split()}
  extra = [flag for flag in CPU_DEFAULT_FLAGS if flag.split("=", 1)[0] not in names]
  value = " ".join([current, *extra]).strip()
  env["XLA_FLAGS"] = value
  return value
