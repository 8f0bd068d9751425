"""Random affine jitter of training images, a preprocessing step of
:class:`stn_jax.data.InputPipeline` (the usual GTSRB augmentation).

Every example gets a fresh rotation, scale and translation every epoch,
drawn from its own generator seeded by ``(seed, index, epoch)``: the stream
is reproducible and a resumed run redraws exactly what it would have drawn.
Images are resampled with stn_jax's own ``affine_grid`` + ``grid_sample``
(bilinear, ``border`` padding so no black corners appear) and rounded back
to uint8, so the pipeline's normalisation applies unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import grids, sampling

# Tells this step's generators apart from other per-example streams.
_STREAM = 0xA06


@functools.partial(jax.jit, static_argnames=("size",))
def _warp(images, theta, size):
  grid = grids.affine_grid(theta, size)
  return sampling.grid_sample(images, grid, padding_mode="border")


class RandomAffine:
  """Rotation, scale and translation jitter, uniform in the given ranges.

  The output image shows the input rotated by ``a`` in
  ``[-rotation, rotation]`` degrees, scaled by ``s`` in ``[1 - scale,
  1 + scale]`` and shifted by up to ``translate`` of the image size per
  axis, about the image centre.

  Args:
    rotation: largest rotation in degrees (>= 0).
    scale: largest relative scale change, in [0, 1).
    translate: largest shift as a fraction of the image size, in [0, 1).
  """

  def __init__(
    self, rotation: float = 0.0, scale: float = 0.0, translate: float = 0.0
  ):
    for name, value, high in (
      ("rotation", rotation, 180.0),
      ("scale", scale, 1.0),
      ("translate", translate, 1.0),
    ):
      if not (np.isfinite(value) and 0 <= value < high):
        raise ValueError(
          f"augmentation {name} must be a number in [0, {high:g}); got "
          f"{value!r}."
        )
    self.rotation = float(rotation)
    self.scale = float(scale)
    self.translate = float(translate)

  def __repr__(self) -> str:
    return (
      f"RandomAffine(rotation={self.rotation}, scale={self.scale}, "
      f"translate={self.translate})"
    )

  def output_shape(self, shape) -> tuple[int, ...]:
    """Images keep their shape ``(H, W, C)``."""
    shape = tuple(shape)
    if len(shape) != 3:
      raise ValueError(
        f"RandomAffine needs (H, W, C) images; got shape {shape}."
      )
    return shape

  def sample_theta(self, seed: int, indices, epochs) -> np.ndarray:
    """``affine_grid`` matrices ``(B, 2, 3)`` (output -> input, normalised
    coordinates) of the examples ``indices`` in ``epochs`` (one per index,
    or one for all)."""
    epochs = np.broadcast_to(np.asarray(epochs), (len(indices),))
    theta = np.empty((len(indices), 2, 3), np.float32)
    for k, (index, epoch) in enumerate(zip(indices, epochs)):
      rng = np.random.default_rng([int(seed), _STREAM, int(index), int(epoch)])
      angle = np.deg2rad(rng.uniform(-self.rotation, self.rotation))
      scale = rng.uniform(1 - self.scale, 1 + self.scale)
      shift = rng.uniform(-self.translate, self.translate, size=2) * 2
      rotation = np.array(
        [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
      )
      # input x appears at p = s R x + shift: p reads x = R^T (p - shift) / s
      linear = rotation.T / scale
      theta[k, :, :2] = linear
      theta[k, :, 2] = -(linear @ shift)
    return theta

  def __call__(self, batch, *, arrays, indices, epochs, seed):
    """Jitters ``batch['image']`` (uint8 ``(B, H, W, C)``)."""
    del arrays
    images = np.asarray(batch["image"])
    theta = self.sample_theta(seed, indices, epochs)
    warped = _warp(
      jnp.asarray(images, jnp.float32), jnp.asarray(theta), images.shape[1:3]
    )
    out = np.clip(np.rint(np.asarray(warped)), 0, 255).astype(np.uint8)
    return {**batch, "image": out}
