"""Load a trained model from its workdir: ``stn_jax.restore(workdir)``.

Needs only the model code and the checkpoint (:mod:`stn_jax.checkpointing`):
no input pipeline, no TFDS/grain/array_record import, no optimiser.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from stn_jax import checkpointing, models
from stn_jax.normalization import Normalization


class Restored:
  """A trained model with its config.

  Attributes:
    config: the run's ``ml_collections.ConfigDict``.
    step: the checkpoint's training step.
    model: the Flax NNX module.
    normalization: the run's input :class:`~stn_jax.normalization.Normalization`.
  """

  def __init__(self, config, model, in_shape, step):
    self.config = config
    self.step = step
    self.model = model
    self.normalization = Normalization.from_config(config)
    self._in_shape = tuple(in_shape)
    graphdef, state = nnx.split(model)
    self._logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    transformers = models.transformers(model)
    self._transformer = transformers[0] if transformers else None
    self._state = state

  def _prepare(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.shape[1:] != self._in_shape:
      raise ValueError(
        f"images must have shape (N, "
        f"{', '.join(map(str, self._in_shape))}) (the "
        f"dataset's image size); got {images.shape}."
      )
    if images.dtype == np.uint8:
      return self.normalization(images)
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(
        "images must be uint8 (0-255) or float in [0, 1]; got "
        f"dtype {images.dtype}."
      )
    return self.normalization.from_unit(images)

  def predict(self, images) -> np.ndarray:
    """Logits ``(N, num_classes)`` for NHWC uint8 (0-255) or float [0, 1]
    images at the dataset's image size."""
    return np.asarray(self._logits(self._state, self._prepare(images)))

  def transform(self, images) -> np.ndarray:
    """What the (first) spatial transformer makes of the images, in the
    input's [0, 1] scale: ``(N, H_out, W_out, C)``."""
    if self._transformer is None:
      raise ValueError(
        f"model {self.config.model!r} has no spatial transformer."
      )
    out = np.asarray(self._transformer(self._prepare(images)))
    return self.normalization.to_unit(out)


def restore(workdir: str) -> Restored:
  """The model of ``workdir`` at its latest readable checkpoint."""
  config, in_shape = checkpointing.read_run_files(workdir)
  model = models.from_config(config, in_shape)
  graphdef, initial = nnx.split(model)
  checkpoints = checkpointing.Checkpoints(workdir)
  try:
    restored = checkpoints.restore_latest(initial)
  finally:
    checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints.")
  model_state, _, meta = restored
  return Restored(
    config, nnx.merge(graphdef, model_state), in_shape, int(meta["step"])
  )
