"""Shared test helpers: a tiny synthetic config, the real-data root, the repo root."""

import os
import sys

import pytest

# JAX's partitionable threefry (the default since jax 0.5) costs ~1 s of XLA:CPU compile per program that draws
# random numbers (a [3, 3, 4, 4] normal: 1.1 s against 0.3 s; a tiny MultiMix init: 5.4 s against 1.2 s), and the
# suite compiles hundreds of such programs. Tests check properties of the streams (fold_in per round and client,
# agreement between strategies), never their values, so they draw with the original threefry (-19 % wall on the
# slowest algorithm tests); set in the environment so that subprocesses (CLI runs, notebooks, Flower sites) match.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from fedjax_med import xla_flags  # noqa: E402

xla_flags.apply_cpu_defaults()  # the kernels of main.py (importing fedjax_med does not set them); before jax starts

# XLA's persistent compilation cache: an empty folder per test run (shared by the xdist workers, which inherit the
# environment, and by the subprocesses the tests start), so that the suite's time never depends on earlier runs
if "FEDJAX_MED_COMPILATION_CACHE" not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache = tempfile.mkdtemp(prefix="fedjax_med_test_xla_cache_")
  os.environ["FEDJAX_MED_COMPILATION_CACHE"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)


def tiny_overrides() -> list[str]:
  """Command-line overrides that shrink configs/fedavg.py to a seconds-long run."""
  return ["--config.data.synthetic.patients_per_site=5", "--config.data.synthetic.image_size=16",
          "--config.data.synthetic.slices_per_volume=2", "--config.model.kwargs.widths=(4,)",
          "--config.model.kwargs.dense=8", "--config.client.local_steps=2", "--config.client.batch_size=4",
          "--config.eval.every=2", "--config.checkpoint.every=1", "--config.execution.strategy=sequential",
          "--config.log.progress=False", "--config.log.tensorboard=False"]


def tiny_config(**changes):
  """configs/fedavg.py shrunk like ``tiny_overrides``, with dotted-key ``changes`` applied."""
  from configs import fedavg

  config = fedavg.get_config()
  config.data.synthetic.update(patients_per_site=5, image_size=16, slices_per_volume=2)
  config.model.kwargs.widths = (4,)
  config.model.kwargs.dense = 8
  config.client.local_steps = 2
  config.client.batch_size = 4
  config.eval.every = 2
  config.checkpoint.every = 1
  config.execution.strategy = "sequential"
  config.log.progress = False
  config.log.tensorboard = False
  config.num_rounds = 4
  for dotted, value in changes.items():
    node = config
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture
def data_root():
  root = os.environ.get("FEDJAX_MED_DATA", "")
  if not root or not os.path.isdir(root):
    pytest.skip("real-data test: set FEDJAX_MED_DATA to the prepared data folder (../shared/data)")
  return root


def pytest_configure(config):
  # xdist hands each worker one test at a time instead of a quarter of the queue at once (its default): with the
  # slow tests first (below), no worker is left with a queue of long tests while the other idles
  if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk", None) is None:
    config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
  """The slow tests first (stable: file order otherwise), so that the two xdist workers take the minute-long ones
  one by one at the start and share out the short ones at the end."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
