"""Prepare a dataset from its original download: ``python -m fedjax_med.data.prepare NAME --raw DIR --out DIR``.

NAME is a converter (ham10000, isic2018, drive, stare, acdc, medmnist, pneumoniamnist); see
``data/README.md`` for where to download each and the layout expected. ``--compact FILE`` converts
one of the team's compact npz files instead. Options: ``--size N`` or ``--size H W``, ``--seed S``,
``--option key=value`` (converter specific). On any error nothing is written: one ``error:`` line,
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from fedjax_med.data import converters
from fedjax_med.data.format import DatasetError, save_prepared


def parse_options(items: list[str]) -> dict[str, str]:
  options = {}
  for item in items:
    if "=" not in item:
      raise DatasetError(f"--option {item!r} must look like key=value")
    key, value = item.split("=", 1)
    options[key] = value
  return options


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fedjax_med.data.prepare", description=__doc__.splitlines()[0])
  parser.add_argument("name", help=f"dataset: {', '.join(sorted(converters.CONVERTERS))}")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--raw", help="folder of the original download")
  source.add_argument("--compact", help="a compact npz of the team's data folder (FEDJAX_MED_DATA)")
  parser.add_argument("--out", required=True, help="output folder (must not exist)")
  parser.add_argument("--size", type=int, nargs="+", default=None, help="resize to N x N or H x W")
  parser.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
  parser.add_argument("--option", action="append", default=[], help="converter option key=value")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    if args.compact:
      from fedjax_med.data.compact import load_compact

      dataset = load_compact(args.name, args.compact)
      arrays, meta = dataset.arrays, dataset.meta
    else:
      options = {"seed": args.seed, **parse_options(args.option)}
      if args.size:
        options["size"] = tuple(args.size) if len(args.size) > 1 else args.size[0]
      arrays, meta = converters.get_converter(args.name)(args.raw, options)
    out = save_prepared(arrays, meta, args.out)
  except (DatasetError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"prepared {len(arrays['images'])} images of {args.name} in {out} ({time.perf_counter() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
