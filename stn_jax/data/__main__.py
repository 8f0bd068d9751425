"""Command line for the datasets.

  python -m stn_jax.data build DATASET [--tfds_dir=DIR] [--source_dir=DIR]
      [--data_mirror=URL] [--overwrite]
  python -m stn_jax.data build --config=configs/mnist.py:distortion=rts
  python -m stn_jax.data preview DATASET --out=rts.png [--split=test] [--count=32]

DATASET is e.g. ``distorted_mnist/rts``, ``gtsrb/32`` or ``gtsrb/<size>``
(size in [8, 256]). With ``--config=file.py:ARG`` (as for ``stn_jax.main``),
``build`` builds every dataset that config trains and evaluates on, and
``preview`` shows its evaluation dataset. ``--source_dir`` is the data
directory with ``mnist/`` and ``gtsrb/`` (default: the config's, else
``$STN_DATA_DIR``, then ``../shared/data`` next to the repo); a source in
none of these nor in the download cache is downloaded into the cache
(``$STN_DATA_DIR``, else ``$XDG_CACHE_HOME/stn_jax/data`` or
``~/.cache/stn_jax/data``) from ``--data_mirror`` (default: the config's,
else ``$STN_DATA_MIRROR``, else the official URLs), verified, with a
progress bar on stderr; ``STN_DATA_OFFLINE=1`` forbids downloads.
``--tfds_dir`` is where built datasets go (default: the config's, else
TFDS's own, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
``--overwrite`` deletes the built dataset and builds it again (the cure for
a damaged shard). Errors (missing sources, bad arguments) are one line on
stderr and exit status 1.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from absl import flags

from stn_jax import cli, config_args, config_schema, files
from stn_jax.data import datasets, preview

COMMANDS = ("build", "preview")


def _flags() -> flags.FlagValues:
  values = flags.FlagValues()
  flags.DEFINE_string(
    "config",
    None,
    "A config file (with :ARG) whose datasets to use, instead of DATASET.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "tfds_dir", None, "Where built datasets go.", flag_values=values
  )
  flags.DEFINE_string(
    "source_dir", None, "The data directory.", flag_values=values
  )
  flags.DEFINE_string(
    "data_mirror",
    None,
    "Base URL of a mirror holding mnist/ and gtsrb/ source files.",
    flag_values=values,
  )
  flags.DEFINE_boolean(
    "overwrite",
    False,
    "build: delete the built dataset and build it again.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "out", None, "preview: the PNG file to write.", flag_values=values
  )
  flags.DEFINE_string(
    "split", "test", "preview: the split.", flag_values=values
  )
  flags.DEFINE_integer(
    "count", 32, "preview: how many examples.", flag_values=values
  )
  flags.DEFINE_integer(
    "columns", 8, "preview: examples per row.", flag_values=values
  )
  return values


def _datasets(values, names, command):
  """(dataset names, tfds_dir, source_dir, data_mirror) from DATASET or
  --config."""
  if values.config and names:
    raise ValueError("give DATASET or --config, not both.")
  if values.config:
    path, arg = config_args.split_config_spec(values.config)
    config = config_args.load_config_module(path).get_config(arg)
    names = [config.dataset]
    train_name = config_schema.get(config, "train_dataset") or config.dataset
    if command == "build" and train_name != config.dataset:
      names.insert(0, train_name)
    return (
      names,
      values.tfds_dir or config.tfds_dir or None,
      values.source_dir or config.source_dir or None,
      values.data_mirror or config_schema.get(config, "data_mirror") or None,
    )
  if len(names) != 1:
    raise ValueError(
      f"{command} takes one DATASET (e.g. "
      f"distorted_mnist/rts) or --config; got {names or 'none'}."
    )
  return names, values.tfds_dir, values.source_dir, values.data_mirror


def _check_image_path(out: str) -> None:
  """``--out`` is a file with an extension PIL writes, checked before the
  dataset is read."""
  from PIL import Image

  if os.path.isdir(out):
    raise IsADirectoryError(errno.EISDIR, "Is a directory", out)
  extension = os.path.splitext(out)[1].lower()
  if extension not in Image.registered_extensions():
    raise ValueError(
      f"{out}: --out must be an image file such as preview.png (.png, .jpg, "
      f".gif, ...); {extension or 'no extension'} is not an image format."
    )


def main(argv=None) -> int:
  """``python -m stn_jax.data``; returns the exit status."""
  values = _flags()

  def body(positional):
    if not positional or positional[0] not in COMMANDS:
      raise ValueError(
        f"the first argument must be one of "
        f"{', '.join(COMMANDS)}; got "
        f"{positional[0] if positional else 'nothing'}."
      )
    command = positional[0]
    names, tfds_dir, source_dir, mirror = _datasets(
      values, positional[1:], command
    )
    dirs = dict(tfds_dir=tfds_dir, source_dir=source_dir, data_mirror=mirror)
    start = time.perf_counter()
    if command == "build":
      for name in names:
        builder = datasets.build(name, overwrite=values.overwrite, **dirs)
        splits = ", ".join(
          f"{k} {v.num_examples}" for k, v in builder.info.splits.items()
        )
        print(
          f"{name}: {splits} in {builder.data_dir} "
          f"({time.perf_counter() - start:.1f} s)"
        )
      return 0
    if not values.out:
      raise ValueError("preview needs --out=FILE.png.")
    for flag in ("count", "columns"):
      if values[flag].value <= 0:
        raise ValueError(
          f"--{flag} must be a positive number of examples; got "
          f"{values[flag].value}."
        )
    _check_image_path(values.out)
    arrays = datasets.load_arrays(names[0], values.split, **dirs)
    count = min(values.count, len(arrays["label"]))
    labels = arrays["label"][:count]
    image = preview.grid_image(
      arrays["image"][:count],
      [str(int(label)) for label in labels],
      columns=values.columns,
      title=f"{names[0]} ({values.split}), first {count} examples",
    )
    with files.written(values.out) as temporary:
      image.save(temporary)
    print(f"wrote {values.out}")
    return 0

  return cli.run(body, values, argv, prog="python -m stn_jax.data", doc=__doc__)


if __name__ == "__main__":
  sys.exit(main())
