"""TFDS builder of distorted MNIST: ``distorted_mnist/{plain,r,rts,p,e,tc}``.

Built from the MNIST IDX files (found in the data directory or the download
cache, else downloaded; verified by sha256), with stn_jax's
own grids and sampler (see :mod:`stn_jax.data.distortions`). Stored as
array_record, so neither building nor reading needs TensorFlow::

  python -m stn_jax.data build distorted_mnist/rts --tfds_dir=~/tensorflow_datasets

Both splits are distorted once, per example, from ``(seed, split, index)``:
the records are identical on every machine. Training can instead draw a
fresh distortion every epoch from the ``plain`` dataset (see
:mod:`stn_jax.data.pipeline`, ``on_the_fly``); the fixed test split is the
same either way.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from stn_jax.data import distortions, sources

_DESCRIPTION = {
  "plain": "MNIST digits, 28x28, undistorted.",
  "r": "Rotated within +-90 degrees, 28x28.",
  "rts": "Rotated +-45 degrees, scaled 0.7-1.2, placed at random in a "
  "42x42 canvas.",
  "p": "Projective: output corner c_i reads the digit at c_i / s + n_i, "
  "s in 0.75-1, n_i ~ N(0, 5 px), convex warps only, 28x28.",
  "e": "Elastic: thin plate spline, 4x4 control points moved by "
  "N(0, 1.5 px) after a scale of 0.75-1, 28x28.",
  "tc": "Translated in a 60x60 canvas with 6 random 6x6 crops of random "
  "digits added as clutter (DeepMind's mnist-cluttered generator).",
}


class DistortedMnistConfig(tfds.core.BuilderConfig):
  """One distortion variant; ``seed`` fixes every example's distortion."""

  def __init__(self, *, variant: str, seed: int = 0, **kwargs):
    distortions.check_variant(variant)
    super().__init__(name=variant, description=_DESCRIPTION[variant], **kwargs)
    self.variant = variant
    self.seed = seed


# The last twelfth of the training digits (MNIST: the last 5,000 of
# 60,000), held out to choose recipes on, as GTSRB's held-out tracks:
# splits cut from 'train' by source index when read
# (stn_jax.data.datasets.load_arrays), so the built files are unchanged.
VALIDATION_FRACTION = 12  # one in this many


def validation_start(num_train: int) -> int:
  """The first source index of the validation digits (55,000 for MNIST)."""
  return num_train - num_train // VALIDATION_FRACTION


DERIVED_SPLITS = {
  "validation": (
    "train",
    lambda index: index >= validation_start(len(index)),
  ),
  "train_without_validation": (
    "train",
    lambda index: index < validation_start(len(index)),
  ),
}


class DistortedMnist(tfds.core.GeneratorBasedBuilder):
  """Distorted MNIST of Jaderberg et al. (2015), Table 1 and the TC set.

  Splits ``train`` (60,000) and ``test`` (10,000), and two read from
  ``train`` by source index (:data:`DERIVED_SPLITS`): ``validation`` (its
  last twelfth, 5,000 digits) and ``train_without_validation`` (the other
  55,000).
  """

  DERIVED_SPLITS = DERIVED_SPLITS
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "First release.",
    "2.0.0": "p: corner noise on the sampling side (q_i = c_i / s + n_i), "
    "non-convex warps redrawn; tc: clutter cut from anywhere in a digit "
    "and added with clamping, as DeepMind's generator does. Other variants "
    "are unchanged.",
  }
  BUILDER_CONFIGS = [
    DistortedMnistConfig(variant=v) for v in distortions.VARIANTS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = sources.HOW_TO_GET_MNIST

  def __init__(
    self,
    *,
    source_dir=None,
    checksums=sources.MNIST_SHA256,
    data_mirror=None,
    **kwargs,
  ):
    """``source_dir``: the data directory holding ``mnist/`` (see
    :func:`stn_jax.data.sources.resolve_data_dir`); ``checksums``: expected
    sha256 of the decompressed IDX files (None skips verification, for
    synthetic test files); ``data_mirror``: base URL for downloads (see
    :mod:`stn_jax.data.download`)."""
    self._source_dir = source_dir
    self._checksums = checksums
    self._data_mirror = data_mirror
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    variant = self.builder_config.variant
    size = distortions.IMAGE_SIZE[variant]
    params = {
      name: tfds.features.Tensor(
        shape=shape, dtype=np.int32 if name == "clutter" else np.float32
      )
      for name, shape in distortions.PARAM_SHAPES[variant].items()
    }
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.builder_config.description,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
          "index": tfds.features.Scalar(dtype=np.int64),
          **params,
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://arxiv.org/abs/1506.02025",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # sources.load_mnist downloads what is missing
    # Read and verify both splits before writing anything.
    splits = {
      split: sources.load_mnist(
        split,
        data_dir=self._source_dir,
        checksums=self._checksums,
        mirror=self._data_mirror,
      )
      for split in ("train", "test")
    }
    return {
      split: self._generate_examples(split, *arrays)
      for split, arrays in splits.items()
    }

  def _generate_examples(self, split, digits, labels):
    config = self.builder_config
    params = distortions.sample_batch_params(
      config.variant,
      config.seed,
      split,
      range(len(digits)),
      num_sources=len(digits),
    )
    images = distortions.render(
      config.variant, digits, params, clutter_sources=digits
    )
    for i in range(len(digits)):
      yield (
        i,
        {
          "image": images[i, :, :, None],
          "label": int(labels[i]),
          "index": i,
          **{k: v[i] for k, v in params.items()},
        },
      )
