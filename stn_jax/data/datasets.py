"""Dataset names -> built TFDS datasets -> in-memory arrays.

``name`` is ``'distorted_mnist/<variant>'`` or ``'gtsrb/<size>'``. A dataset
is built on first use (offline, from the verified sources) into the TFDS
data directory (``tfds_dir``, default ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) and read back through ``tfds.data_source``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from stn_jax.data import distorted_mnist, gtsrb

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
    # Any image size: gtsrb/64 resizes to 64x64.
    config = gtsrb.GtsrbConfig(image_size=int(config))
  elif config not in configs:
    extra = " or any image size, e.g. gtsrb/64" if family == "gtsrb" else ""
    raise ValueError(
      f"dataset {family!r} has configs {', '.join(configs)}"
      f"{extra}; got {name!r}."
    )
  return BUILDERS[family](
    config=config, data_dir=tfds_dir, source_dir=source_dir, **builder_kwargs
  )


def build(
  name: str, *, tfds_dir=None, source_dir=None, **builder_kwargs
) -> tfds.core.DatasetBuilder:
  """Builds ``name`` unless it is already built; returns its builder.

  TFDS writes into an ``incomplete.*`` folder and renames it when every
  split is written, so an interrupted build is never read as complete.
  """
  builder = get_builder(
    name, tfds_dir=tfds_dir, source_dir=source_dir, **builder_kwargs
  )
  builder.download_and_prepare()
  return builder


def load_arrays(
  name: str,
  split: str,
  *,
  tfds_dir=None,
  source_dir=None,
  chunk: int = 4096,
  **builder_kwargs,
) -> dict[str, np.ndarray]:
  """Reads a whole split into memory, in source order (by ``index``).

  Returns:
    dict of stacked NumPy arrays, one per feature.
  """
  builder = build(
    name, tfds_dir=tfds_dir, source_dir=source_dir, **builder_kwargs
  )
  if split not in builder.info.splits:
    raise ValueError(
      f"split must be one of {sorted(builder.info.splits)} "
      f"for {name!r}; got {split!r}."
    )
  source = builder.as_data_source(split=split)  # what tfds.data_source uses
  records = []
  for start in range(0, len(source), chunk):
    records.extend(
      source.__getitems__(list(range(start, min(start + chunk, len(source)))))
    )
  arrays = {key: np.stack([r[key] for r in records]) for key in records[0]}
  order = np.argsort(arrays["index"], kind="stable")
  return {key: value[order] for key, value in arrays.items()}
