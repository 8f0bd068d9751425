"""A run config's training input: which data, which preprocessing, and the
streams of batches that feed the step.

The training code (:mod:`stn_jax.train`) asks this module, never a dataset
or a distortion by name: :func:`load_data` reads the splits the config
names, :func:`preprocessing` builds the step its ``on_the_fly`` or
``augment_*`` keys choose (on the host, or its twin inside the step), and
:func:`training_streams` makes one seeded, checkpointable stream per config
(a population has one per member).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stn_jax import config_schema
from stn_jax.data import (
  augment,
  datasets,
  device_augment,
  distortions,
  pipeline,
)
from stn_jax.normalization import Normalization

AUGMENTATIONS = ("rotation", "scale", "translate")
# Training splits whose undistorted digits on_the_fly distorts afresh.
ON_THE_FLY_SPLITS = ("train", "train_without_validation")


def train_split(config) -> str:
  """The split trained on: ``config.train_split``."""
  return config_schema.get(config, "train_split")


def train_dataset(config) -> str:
  """The dataset trained on: ``config.train_dataset``, default
  ``config.dataset`` (on-the-fly distortion trains on undistorted digits and
  evaluates on the built distorted dataset)."""
  return config_schema.get(config, "train_dataset") or config.dataset


def augmentation(config) -> dict[str, float]:
  """The random affine jitter ``config.augment_*`` asks for:
  ``{'rotation', 'scale', 'translate'}`` (all 0: none)."""
  return {
    name: float(config_schema.get(config, f"augment_{name}"))
    for name in AUGMENTATIONS
  }


def check_config(config) -> None:
  """The data keys' checks that relate keys to each other and to the
  registered datasets (each key's own check is the schema's).

  Raises:
    ValueError: an unknown dataset, jitter combined with on-the-fly
      distortion, a jitter range out of bounds, or a training split that is
      also evaluated on.
  """
  datasets.get_builder(config.dataset)  # raises on unknown datasets
  datasets.get_builder(train_dataset(config))
  on_the_fly = config_schema.get(config, "on_the_fly")
  if on_the_fly and any(augmentation(config).values()):
    raise ValueError(
      "config.augment_* jitter and config.on_the_fly distortion cannot be "
      f"combined; got on_the_fly={on_the_fly!r} and "
      f"{augmentation(config)}."
    )
  augment.RandomAffine(**augmentation(config))  # checks the ranges
  if (
    train_dataset(config) == config.dataset
    and train_split(config) in config.eval_splits
  ):
    raise ValueError(
      f"config.train_split {train_split(config)!r} is also in "
      f"config.eval_splits {tuple(config.eval_splits)}: "
      "evaluating on the training split is not a result."
    )
  if on_the_fly and train_split(config) not in ON_THE_FLY_SPLITS:
    raise ValueError(
      "config.train_split must be 'train' or 'train_without_validation' "
      "with on_the_fly "
      f"(the undistorted training digits); got "
      f"{train_split(config)!r}."
    )


def preprocessing(config, *, on_device: bool = False):
  """The training batches' preprocessing step the config chooses: None,
  on-the-fly distortion for ``config.on_the_fly``, or random affine jitter
  for ``config.augment_*``; with ``on_device`` their twins that run inside
  the step (:mod:`stn_jax.data.device_augment`)."""
  distort, jitter_step = (
    (device_augment.OnTheFly, device_augment.RandomAffine)
    if on_device
    else (distortions.OnTheFly, augment.RandomAffine)
  )
  if config_schema.get(config, "on_the_fly"):
    return distort(config.on_the_fly)
  jitter = augmentation(config)
  return jitter_step(**jitter) if any(jitter.values()) else None


def device_preprocessing(config):
  """:func:`preprocessing` ``(config, on_device=True)``."""
  return preprocessing(config, on_device=True)


def batches_on_device(config) -> bool:
  """Whether training batches are gathered (and augmented) on the device:
  ``data_on_device``, and any preprocessing runs there
  (``augment_on_device``); else the host pipeline makes them."""
  if not config_schema.get(config, "data_on_device"):
    return False
  return preprocessing(config) is None or config_schema.get(
    config, "augment_on_device"
  )


def load_data(config):
  """(train arrays, {split: eval arrays}, model input shape): the splits
  the config names, as uint8 images and int labels; the input shape is the
  training images' after preprocessing (H, W, C)."""
  kwargs = dict(
    tfds_dir=config_schema.get(config, "tfds_dir") or None,
    source_dir=config_schema.get(config, "source_dir") or None,
    data_mirror=config_schema.get(config, "data_mirror") or None,
  )
  train = datasets.load_arrays(
    train_dataset(config), train_split(config), **kwargs
  )
  in_shape = tuple(train["image"].shape[1:])
  preprocess = preprocessing(config)
  if preprocess is not None:
    in_shape = preprocess.output_shape(in_shape)
  evals = {
    split: datasets.load_arrays(config.dataset, split, **kwargs)
    for split in config.eval_splits
  }
  return train, evals, tuple(in_shape)


def training_streams(
  configs: Sequence,
  train_arrays,
  normalization: Normalization,
  *,
  on_device: bool,
  rows: slice | None = None,
) -> list:
  """One stream of training batches per config (its batch size, seed and
  preprocessing), all over the same ``train_arrays``.

  With ``on_device`` they are :class:`~stn_jax.data.pipeline.DeviceInput`
  (indices; the step gathers and augments), else host
  :class:`~stn_jax.data.pipeline.InputPipeline` streams of NumPy batches
  making only ``rows`` of each batch (None: all).
  """
  if on_device:
    return [
      pipeline.DeviceInput(
        train_arrays,
        batch_size=c.batch_size,
        seed=c.seed,
        normalization=normalization,
        augment=device_preprocessing(c),
      )
      for c in configs
    ]
  return [
    pipeline.InputPipeline(
      train_arrays,
      batch_size=c.batch_size,
      seed=c.seed,
      preprocess=preprocessing(c),
      normalization=normalization,
      sharding=False,
      rows=rows,
    )
    for c in configs
  ]


def next_input(stream, n: int, *, multi_step: bool, rows=None) -> dict:
  """What the step reads of the next ``n`` batches of ``stream``: for a
  :class:`~stn_jax.data.pipeline.DeviceInput`, its indices (this process's
  ``rows`` of them, the batch axis last); for a host stream, ``image`` and
  ``label`` (with ``multi_step``, stacked on a leading axis of ``n``; else
  ``n`` is 1 and the batch is returned as it is)."""
  if isinstance(stream, pipeline.DeviceInput):
    inputs = stream.indices(n if multi_step else None)
    if rows is None:
      return inputs
    return {k: v[..., rows] for k, v in inputs.items()}
  batches = [next(stream) for _ in range(n)]
  if not multi_step:
    return {k: batches[0][k] for k in ("image", "label")}
  return {k: np.stack([b[k] for b in batches]) for k in ("image", "label")}
