"""Load a trained model from its workdir: ``stn_jax.restore(workdir)``."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from stn_jax import models


class Restored:
  """A trained model with its config.

  Attributes:
    config: the run's ``ml_collections.ConfigDict``.
    step: the checkpoint's training step.
    model: the Flax NNX module.
  """

  def __init__(self, config, trainer, step):
    self.config = config
    self.step = step
    self.model = trainer.model()
    self._in_shape = trainer.in_shape
    self._mean = np.float32(config.get("mean", 0.0))
    self._std = np.float32(config.get("std", 1.0))
    graphdef, state = nnx.split(self.model)
    self._logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    transformers = models.transformers(self.model)
    self._transformer = transformers[0] if transformers else None
    self._state = state

  def _prepare(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.shape[1:] != tuple(self._in_shape):
      raise ValueError(f"images must have shape (N, {', '.join(map(str, self._in_shape))}) "
                       f"(the dataset's image size); got {images.shape}.")
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 255.0
    elif not np.issubdtype(images.dtype, np.floating):
      raise ValueError("images must be uint8 (0-255) or float in [0, 1]; got "
                       f"dtype {images.dtype}.")
    return (images.astype(np.float32) - self._mean) / self._std

  def predict(self, images) -> np.ndarray:
    """Logits ``(N, num_classes)`` for NHWC uint8 (0-255) or float [0, 1]
    images at the dataset's image size."""
    return np.asarray(self._logits(self._state, self._prepare(images)))

  def transform(self, images) -> np.ndarray:
    """What the (first) spatial transformer makes of the images, in the
    input's [0, 1] scale: ``(N, H_out, W_out, C)``."""
    if self._transformer is None:
      raise ValueError(f"model {self.config.model!r} has no spatial "
                       "transformer.")
    out = np.asarray(self._transformer(self._prepare(images)))
    return out * self._std + self._mean


def restore(workdir: str) -> Restored:
  """The model of ``workdir`` at its latest readable checkpoint."""
  from stn_jax import train  # late: train imports the data stack
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a stn_jax "
                            "workdir?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, "in_shape.json")) as f:
    in_shape = tuple(json.load(f))
  trainer = train.Trainer(config, in_shape)
  meta = train.Checkpoints(workdir, config).restore_latest(trainer)
  if meta is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints.")
  return Restored(config, trainer, int(meta["step"]))
