"""Input normalisation: uint8 pixels <-> the float inputs the models see.

One object holds the one definition used by the input pipeline, evaluation,
inference, snapshots and figures: a uint8 image ``u`` becomes
``(u / 255 - mean) / std`` in float32. ``mean`` and ``std`` are scalars or
per-channel sequences (``config.mean``/``config.std``, defaults 0 and 1).
Works on NumPy and JAX arrays alike (the arithmetic is the array's own).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stn_jax import config_schema


@dataclasses.dataclass(frozen=True)
class Normalization:
  """``(pixels / 255 - mean) / std`` and its inverse.

  Attributes:
    mean: subtracted from images scaled to [0, 1]; scalar or per channel.
    std: divides them afterwards; scalar or per channel.
  """

  mean: float | tuple[float, ...] = 0.0
  std: float | tuple[float, ...] = 1.0

  @classmethod
  def from_config(cls, config) -> Normalization:
    """The normalisation of a run config (``config.mean``, ``config.std``,
    both optional)."""
    as_value = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
    return cls(
      as_value(config_schema.get(config, "mean")),
      as_value(config_schema.get(config, "std")),
    )

  @property
  def _mean(self) -> np.ndarray:
    return np.asarray(self.mean, np.float32)

  @property
  def _std(self) -> np.ndarray:
    return np.asarray(self.std, np.float32)

  def __call__(self, images):
    """uint8 ``(..., C)`` images in 0-255 -> normalised float32."""
    return (images.astype(np.float32) / 255.0 - self._mean) / self._std

  def from_unit(self, images):
    """float images in [0, 1] -> normalised float32."""
    return (images.astype(np.float32) - self._mean) / self._std

  def to_unit(self, x):
    """Normalised float -> the [0, 1] scale (not clipped)."""
    return x * self._std + self._mean

  def to_uint8(self, x) -> np.ndarray:
    """Normalised float -> uint8 0-255 (rounded and clipped), on the host."""
    unit = self.to_unit(np.asarray(x, np.float32))
    return np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)
