"""Prepare a dataset from its original download: ``python -m fedjax_med.data.prepare NAME --raw DIR --out DIR``.

NAME is a converter (``ham10000``, ``isic2018``, ``drive``, ``stare``, ``acdc``, ``rsna_ich``, ``medmnist``,
``pneumoniamnist``); ``data/README.md`` says where to download each and the layout expected.
Options: ``--size N`` or ``--size H W`` (``--size 0``, like ``--option size=0``, keeps the native size where the
converter allows it), ``--seed S`` (of the train/val/test split),
``--option key=value`` (converter specific, repeatable).

``python -m fedjax_med.data.prepare NAME --compact FILE --out DIR`` converts one of the team's
compact npz files (``ham10000``, ``drive``, ``acdc``, ``pneumoniamnist``) instead.

The output directory must not exist; it is written atomically. On any error nothing is written:
one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NoReturn

import numpy as np

from fedjax_med.data import converters
from fedjax_med.data.format import DatasetError, save_prepared

EXIT_ERROR = 2


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """Reports usage errors as one ``error:`` line (through main) instead of usage text."""

  def error(self, message: str) -> NoReturn:
    raise _UsageError(f"{message} (see --help)")


def parse_options(items: list[str]) -> dict[str, str]:
  """``["size=64", "test_ids=im0001,im0002"]`` -> ``{"size": "64", "test_ids": "im0001,im0002"}``."""
  options = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise DatasetError(f"--option {item!r} must look like key=value")
    options[key.strip()] = value
  return options


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="python -m fedjax_med.data.prepare", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help=f"dataset: {', '.join(converters.available())}")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--raw", help="the original download (folder, or the .npz for medmnist)")
  source.add_argument("--compact", help="a compact npz of the team's data folder (FEDJAX_MED_DATA)")
  parser.add_argument("--out", required=True, help="output folder; must not exist")
  parser.add_argument("--size", type=int, nargs="+", default=None, metavar="N", help="resize to N x N or H x W")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
  parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="converter option")
  return parser


def _convert(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  if args.size is not None and args.size != [0] and (len(args.size) not in (1, 2) or min(args.size) <= 0):
    raise DatasetError(f"--size takes one positive number N or two H W (or 0: the native size); got {args.size}")
  if args.out.rstrip("/").endswith(".npz"):
    folder = args.out.rstrip("/")[:-len(".npz")] or "prepared/" + args.name
    raise DatasetError(f"--out {args.out} ends in .npz, but prepare writes a folder (arrays.npz + meta.json), "
                       f"not an .npz file; pass a folder such as --out {folder}, then "
                       f"--config.data.root={folder}")
  if os.path.exists(args.out):
    raise DatasetError(f"output directory {os.path.abspath(args.out)} exists already; remove it or pick another --out")
  if args.compact:
    if args.size or args.option:
      raise DatasetError("--size and --option apply to --raw conversions only; a compact file is already prepared")
    from fedjax_med.data.compact import load_compact

    dataset = load_compact(args.name, args.compact, seed=args.seed)
    return dataset.arrays, dataset.meta
  converter = converters.get_converter(args.name)
  options: dict[str, Any] = {"seed": args.seed, **parse_options(args.option)}
  if args.size is not None:
    options["size"] = tuple(args.size) if len(args.size) == 2 else args.size[0]
  return converter(args.raw, options)


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0, or 2 after printing one ``error:`` line)."""
  start = time.perf_counter()
  try:
    args = _parser().parse_args(argv)
    arrays, meta = _convert(args)
    out = save_prepared(arrays, meta, args.out)
  except (_UsageError, DatasetError, ValueError, KeyError, OSError) as e:
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return EXIT_ERROR
  splits, counts = np.unique(arrays["split"], return_counts=True)
  summary = ", ".join(f"{s} {c}" for s, c in zip(splits.tolist(), counts.tolist()))
  print(f"prepared {len(arrays['images'])} images of {args.name} ({summary}) in {out} "
        f"({time.perf_counter() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
