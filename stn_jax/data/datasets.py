"""Dataset names -> built TFDS datasets -> in-memory arrays.

``name`` is ``'distorted_mnist/<variant>'`` or ``'gtsrb/<size>'`` (size in
[8, 256]). A dataset is built on first use (from the verified sources,
downloaded when missing) into the TFDS data directory (``tfds_dir``, default
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) and read back through
``tfds.data_source``.

Builds of one dataset are serialised by a file lock (``.build.lock`` next to
its version folders): a second concurrent build waits, then finds the
dataset built. Leftover ``incomplete.*`` folders of interrupted builds are
deleted by the next build.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import tensorflow_datasets as tfds

from stn_jax.data import distorted_mnist, download, gtsrb, gtsrb_source
from stn_jax.data.sources import SourceError


class CorruptDatasetError(SourceError):
  """A built dataset cannot be read back (e.g. a damaged shard)."""


BUILDERS = {
  "distorted_mnist": distorted_mnist.DistortedMnist,
  "gtsrb": gtsrb.Gtsrb,
}


def get_builder(
  name: str, *, tfds_dir=None, source_dir=None, **builder_kwargs
) -> tfds.core.DatasetBuilder:
  """The builder of ``name`` (``'family/config'``)."""
  family, _, config = name.partition("/")
  if family not in BUILDERS:
    raise ValueError(
      f"dataset must be one of "
      f"{', '.join(f'{f}/<config>' for f in BUILDERS)}; got "
      f"{name!r}."
    )
  configs = [c.name for c in BUILDERS[family].BUILDER_CONFIGS]
  if family == "gtsrb" and config.isdigit() and config not in configs:
    # Any image size in [8, 256]: gtsrb/64 resizes to 64x64.
    config = gtsrb.GtsrbConfig(
      image_size=gtsrb_source.check_image_size(int(config))
    )
  elif config not in configs:
    extra = (
      f" or any image size in [{gtsrb_source.MIN_SIZE}, "
      f"{gtsrb_source.MAX_SIZE}], e.g. gtsrb/64"
      if family == "gtsrb"
      else ""
    )
    raise ValueError(
      f"dataset {family!r} has configs {', '.join(configs)}"
      f"{extra}; got {name!r}."
    )
  return BUILDERS[family](
    config=config, data_dir=tfds_dir, source_dir=source_dir, **builder_kwargs
  )


def _config_dir(builder) -> pathlib.Path:
  """``<tfds_dir>/<family>/<config>``: the parent of the version folders."""
  return pathlib.Path(str(builder.data_dir)).parent


def build(
  name: str,
  *,
  tfds_dir=None,
  source_dir=None,
  data_mirror=None,
  overwrite: bool = False,
  **builder_kwargs,
) -> tfds.core.DatasetBuilder:
  """Builds ``name`` unless it is already built; returns its builder.

  TFDS writes into an ``incomplete.*`` folder and renames it when every
  split is written, so an interrupted build is never read as complete;
  such leftovers are deleted here. A file lock makes concurrent builds of
  one dataset (other processes) wait for each other.

  Args:
    name: ``'family/config'``.
    tfds_dir: where built datasets go (None: TFDS's default).
    source_dir: the data directory (see :mod:`stn_jax.data.sources`).
    data_mirror: base URL for source downloads (None: ``$STN_DATA_MIRROR``
      or the defaults).
    overwrite: delete this dataset's built version first and rebuild it.
    **builder_kwargs: passed to the builder (e.g. ``checksums``).
  """
  kwargs = dict(
    tfds_dir=tfds_dir,
    source_dir=source_dir,
    data_mirror=data_mirror,
    **builder_kwargs,
  )
  builder = get_builder(name, **kwargs)
  config_dir = _config_dir(builder)
  if (
    not overwrite
    and not os.access(config_dir, os.W_OK)
    and builder.is_prepared()
  ):
    # Built in a read-only folder (a shared or mounted dataset): read as it
    # is, without the build lock that could not be taken there.
    return builder
  with download.file_lock(config_dir / ".build.lock"):
    for leftover in config_dir.glob("incomplete.*"):
      shutil.rmtree(leftover, ignore_errors=True)
    if overwrite:
      builder = get_builder(name, **kwargs)
      shutil.rmtree(str(builder.data_dir), ignore_errors=True)
    # Built (again) under the lock: a build that waited sees the result.
    builder = get_builder(name, **kwargs)
    builder.download_and_prepare()
  return builder


def load_arrays(
  name: str,
  split: str,
  *,
  tfds_dir=None,
  source_dir=None,
  data_mirror=None,
  chunk: int = 4096,
  **builder_kwargs,
) -> dict[str, np.ndarray]:
  """Reads a whole split into memory, in source order (by ``index``).

  ``split`` is one the built dataset has, or one its builder derives from
  another by source index (``DERIVED_SPLITS``, e.g. distorted MNIST's
  ``validation``).

  Returns:
    dict of stacked NumPy arrays, one per feature.

  Raises:
    CorruptDatasetError: the built dataset cannot be read; the message
      gives its folder and the command that rebuilds it.
  """
  builder = build(
    name,
    tfds_dir=tfds_dir,
    source_dir=source_dir,
    data_mirror=data_mirror,
    **builder_kwargs,
  )
  derived = getattr(builder, "DERIVED_SPLITS", {})
  if split in derived and split not in builder.info.splits:
    base, keep = derived[split]
    arrays = load_arrays(
      name,
      base,
      tfds_dir=tfds_dir,
      source_dir=source_dir,
      data_mirror=data_mirror,
      chunk=chunk,
      **builder_kwargs,
    )
    mask = keep(arrays["index"])
    return {key: value[mask] for key, value in arrays.items()}
  if split not in builder.info.splits:
    raise ValueError(
      f"split must be one of {sorted([*builder.info.splits, *derived])} "
      f"for {name!r}; got {split!r}."
    )
  try:
    source = builder.as_data_source(split=split)  # what tfds.data_source uses
    records = []
    for start in range(0, len(source), chunk):
      records.extend(
        source.__getitems__(list(range(start, min(start + chunk, len(source)))))
      )
  except Exception as error:  # array_record and TFDS raise various types
    rebuild = f"python -m stn_jax.data build {name} --overwrite"
    if tfds_dir:
      rebuild += f" --tfds_dir={tfds_dir}"
    raise CorruptDatasetError(
      f"Cannot read split {split!r} of the built dataset {name} in "
      f"{builder.data_dir} (a damaged shard?): {type(error).__name__}: "
      f"{error}. Rebuild it with `{rebuild}`, or delete {builder.data_dir} "
      "and build again."
    ) from error
  arrays = {key: np.stack([r[key] for r in records]) for key in records[0]}
  order = np.argsort(arrays["index"], kind="stable")
  return {key: value[order] for key, value in arrays.items()}
