"""Command line: ``python main.py --config configs/fedavg.py [--config.key=value ...] [--workdir DIR]``.

This file is intentionally short; the logic lives in ``fedjax_med.cli`` and ``fedjax_med.train``.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory; default workdirs/<config name>. Re-running resumes.")
flags.mark_flag_as_required("config")


def parse_flags(argv):
  """absl's parser, but a bad --config override is one ``error:`` line, not a traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # a config file that failed to load only raises when first used
    return rest
  except Exception as e:  # absl and ml_collections raise several types for a bad override
    from fedjax_med import cli

    print(f"error: {cli.describe_flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file operation at INFO
  logging.getLogger("fedjax_med").setLevel(logging.INFO)
  from fedjax_med import cli

  return cli.main(FLAGS.config, FLAGS.workdir, config_path=FLAGS["config"].config_filename)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from fedjax_med import xla_flags

  xla_flags.apply_cpu_defaults()  # before anything imports jax
  app.run(main, flags_parser=parse_flags)
