"""TFDS builder of GTSRB: ``gtsrb/32`` and ``gtsrb/48`` (image size).

Splits: ``train`` (the official 39209), ``test`` (the official 12630), and
``validation`` / ``train_without_validation``: the training set divided by
TRACK (10% of each class's tracks held out, seeded), never by image.

Features: ``image`` uint8 (S, S, 3) (whole frame, resized), ``label``
(43 classes), ``roi`` [x1, y1, x2, y2] and ``size`` (width, height) in the
original image's pixels, ``track`` (``class * 1000 + track``; -1 for test).

Any size in [8, 256] (``gtsrb/<size>``). With the 32x32 offline copy,
``gtsrb/48`` is upsampled from 32x32: results on it are 32x32-resolution
results. The official archives (found in the data directory or the cache, or
downloaded) give true 48x48, the size of the published numbers; sizes above
32 use them whenever they are found.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from stn_jax.data import gtsrb_source


class GtsrbConfig(tfds.core.BuilderConfig):
  """``image_size``: the side images are resized to; ``validation_seed``
  and ``validation_fraction`` choose the held-out tracks."""

  def __init__(
    self,
    *,
    image_size: int,
    validation_fraction: float = 0.1,
    validation_seed: int = 0,
    **kwargs,
  ):
    gtsrb_source.check_image_size(image_size)
    kwargs.setdefault("name", str(image_size))
    super().__init__(
      description=f"GTSRB resized to {image_size}x{image_size}.", **kwargs
    )
    self.image_size = image_size
    self.validation_fraction = validation_fraction
    self.validation_seed = validation_seed


class Gtsrb(tfds.core.GeneratorBasedBuilder):
  """German Traffic Sign Recognition Benchmark, official split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [GtsrbConfig(image_size=32), GtsrbConfig(image_size=48)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = gtsrb_source.HOW_TO_GET_GTSRB

  def __init__(
    self,
    *,
    source_dir=None,
    checksums=gtsrb_source.NPZ_SHA256,
    data_mirror=None,
    archive_md5=gtsrb_source.ARCHIVE_MD5,
    **kwargs,
  ):
    """``source_dir``: the data directory; ``checksums``: expected sha256 of
    the npz files (None skips verification, for synthetic test files);
    ``data_mirror``: base URL for downloads; ``archive_md5``: expected md5
    of the official archives when downloaded (None: not checked)."""
    self._source_dir = source_dir
    self._checksums = checksums
    self._data_mirror = data_mirror
    self._archive_md5 = archive_md5
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.builder_config.description,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(
            num_classes=gtsrb_source.NUM_CLASSES
          ),
          "roi": tfds.features.Tensor(shape=(4,), dtype=np.int32),
          "size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "track": tfds.features.Scalar(dtype=np.int32),
          "index": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://benchmark.ini.rub.de/gtsrb_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # gtsrb_source downloads the archives when missing
    config = self.builder_config
    data = {
      split: gtsrb_source.load_gtsrb(
        split,
        image_size=config.image_size,
        data_dir=self._source_dir,
        checksums=self._checksums,
        mirror=self._data_mirror,
        archive_md5=self._archive_md5,
      )
      for split in ("train", "test")
    }
    train = data["train"]
    held_out = gtsrb_source.validation_tracks(
      train["track"],
      train["labels"],
      fraction=config.validation_fraction,
      seed=config.validation_seed,
    )
    everything = np.ones(len(train["labels"]), bool)
    return {
      "train": self._generate_examples(train, everything),
      "validation": self._generate_examples(train, held_out),
      "train_without_validation": self._generate_examples(train, ~held_out),
      "test": self._generate_examples(
        data["test"], np.ones(len(data["test"]["labels"]), bool)
      ),
    }

  def _generate_examples(self, data, mask):
    for i in np.flatnonzero(mask):
      yield (
        int(i),
        {
          "image": data["images"][i],
          "label": int(data["labels"][i]),
          "roi": data["roi"][i],
          "size": data["size"][i],
          "track": int(data["track"][i]),
          "index": int(i),
        },
      )
