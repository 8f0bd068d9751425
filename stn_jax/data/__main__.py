"""Command line for the datasets.

  python -m stn_jax.data build distorted_mnist/rts [--tfds_dir DIR] [--source_dir DIR]
  python -m stn_jax.data preview distorted_mnist/rts --out rts.png [--split test] [--count 32]

``--source_dir`` is the data directory with ``mnist/`` and ``gtsrb/``
(default: ``$STN_DATA_DIR``, then ``../shared/data`` next to the repo);
``--tfds_dir`` is where built datasets go (default: TFDS's own,
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from stn_jax.data import datasets, preview


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m stn_jax.data",
                                   description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  for name in ("build", "preview"):
    command = commands.add_parser(name)
    command.add_argument("dataset", help="e.g. distorted_mnist/rts, gtsrb/32")
    command.add_argument("--tfds_dir", default=None)
    command.add_argument("--source_dir", default=None)
    if name == "preview":
      command.add_argument("--out", required=True, help="PNG file to write")
      command.add_argument("--split", default="test")
      command.add_argument("--count", type=int, default=32)
      command.add_argument("--columns", type=int, default=8)
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  start = time.perf_counter()
  if args.command == "build":
    builder = datasets.build(args.dataset, tfds_dir=args.tfds_dir,
                             source_dir=args.source_dir)
    splits = ", ".join(f"{k} {v.num_examples}"
                       for k, v in builder.info.splits.items())
    print(f"{args.dataset}: {splits} in {builder.data_dir} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
  arrays = datasets.load_arrays(args.dataset, args.split,
                                tfds_dir=args.tfds_dir,
                                source_dir=args.source_dir)
  count = min(args.count, len(arrays["label"]))
  labels = arrays["label"][:count]
  image = preview.grid_image(
      arrays["image"][:count], [str(int(l)) for l in labels],
      columns=args.columns,
      title=f"{args.dataset} ({args.split}), first {count} examples")
  image.save(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
