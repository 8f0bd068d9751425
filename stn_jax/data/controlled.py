"""Controlled distortions: one family at a time at a given magnitude.

The invariance evaluation (:mod:`stn_jax.evaluation`) distorts clean test
objects (digits, signs) with one family of :data:`FAMILIES` at each
magnitude of a grid. The parameters are drawn with the paper protocol's own
code (:mod:`stn_jax.data.distortions`) and are in the object's own
normalised frame (as :func:`~stn_jax.data.distortions.sample_params`'); the
object sits centred at its native pixel size in the output canvas
(:func:`render_centred`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.data.distortions import (
  DIGIT_SIZE,
  corner_noise_homography,
  planar_rotation,
  tps_noise_control,
  warp,
)
from stn_jax.ops import fitting, grids

FAMILIES = (
  "rotation",
  "scale",
  "translation",
  "projective",
  "elastic",
)
UNITS = {
  "rotation": "degrees",
  "scale": "relative size",
  "translation": "fraction of the canvas",
  "projective": "corner noise sigma, object px",
  "elastic": "TPS control point sigma, object px",
}
# The magnitude of each family that leaves the image unchanged.
IDENTITY = {
  "rotation": 0.0,
  "scale": 1.0,
  "translation": 0.0,
  "projective": 0.0,
  "elastic": 0.0,
}


def check_family(family: str) -> str:
  """``family`` if it is one of ``FAMILIES``, else ValueError."""
  if family not in FAMILIES:
    raise ValueError(
      f"family must be one of {', '.join(FAMILIES)}; got {family!r}."
    )
  return family


def draw_params(
  family: str,
  magnitude: float,
  rng: np.random.Generator,
  *,
  object_size: int = DIGIT_SIZE,
) -> dict[str, np.ndarray]:
  """One example's distortion of one family at a given magnitude.

  =========== ===========================================================
  family      magnitude m (the identity at ``IDENTITY``)
  =========== ===========================================================
  rotation    ``theta = R(m degrees)`` (variant ``r``'s form); no draw
  scale       the object appears m times its size (``theta = I / m``);
              no draw
  translation moved by ``m`` times the canvas size in a direction drawn
              uniformly (``m = 0.5``: its centre reaches the border)
  projective  output corner c_i reads q_i = c_i + n_i, n_i ~ N(0, m px),
              redrawn until convex and in view (variant ``p`` without
              its scale)
  elastic     4x4 TPS control points moved by N(0, m px) (variant ``e``
              without its scale)
  =========== ===========================================================

  The random draws are those of standard normals (or a uniform angle)
  scaled by m, so one ``rng`` seed gives the same noise pattern at every
  magnitude (up to the projective redraws).

  Args:
    family: one of ``FAMILIES``.
    magnitude: m (``scale``: > 0).
    rng: the example's generator.
    object_size: the object's side in pixels (a px of noise is
      ``2 / object_size`` normalised units).

  Returns:
    dict with one float32 array, as :func:`sample_params` returns:
    ``theta (2, 3)``, ``homography (3, 3)`` or ``control_points (16, 2)``,
    output -> input in the object's normalised frame.
  """
  check_family(family)
  m = float(magnitude)
  if not np.isfinite(m) or (family == "scale" and m <= 0):
    raise ValueError(
      f"magnitude of {family!r} must be a finite number"
      f"{' > 0' if family == 'scale' else ''}; got {magnitude!r}."
    )
  px = 2.0 / object_size
  if family in ("rotation", "scale"):
    linear = planar_rotation(m) if family == "rotation" else np.eye(2) / m
    theta = np.concatenate([linear, np.zeros((2, 1))], 1)
    return {"theta": theta.astype(np.float32)}
  if family == "translation":
    angle = rng.uniform(0, 2 * np.pi)
    shift = 2 * m * np.array([np.cos(angle), np.sin(angle)])
    theta = np.concatenate([np.eye(2), -shift[:, None]], 1)
    return {"theta": theta.astype(np.float32)}
  if family == "projective":
    homography = corner_noise_homography(rng, 1.0, m * px)
    return {"homography": homography.astype(np.float32)}
  control = tps_noise_control(rng, 1.0, m * px)
  return {"control_points": control.astype(np.float32)}


def render_centred(
  images, params, *, size: int, exact: bool = True, batch_size: int = 1024
) -> np.ndarray:
  """Distorts objects placed centred, at their own pixel size, in a
  ``size`` x ``size`` canvas (zeros around them).

  Args:
    images: uint8 ``(B, S, S, C)`` square objects (digits, signs).
    params: stacked :func:`draw_params` (or :func:`sample_params`)
      arrays with a leading ``B`` axis, in the object's frame.
    size: the canvas side; the translation family's fraction is of it.
    exact: sample in float64 (as :func:`render`); False: float32.
    batch_size: examples per call.

  Returns:
    uint8 ``(B, size, size, C)``.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(
      f"images must have shape (B, S, S, C); got {images.shape}."
    )
  placement = size / images.shape[1]
  out = []
  dtype = jnp.float64 if exact else jnp.float32
  with jax.enable_x64(exact):
    for start in range(0, len(images), batch_size):
      chunk = slice(start, start + batch_size)
      placed = {}
      for key, value in params.items():
        value = np.asarray(value[chunk], np.float64)
        if key == "theta":  # p -> theta (k p): scale the linear part
          value = value * np.array([placement, placement, 1.0])
        elif key == "homography":
          value = value @ np.diag([placement, placement, 1.0])
        placed[key] = jnp.asarray(value, dtype)
      warped = warp(
        size, jnp.asarray(images[chunk], dtype), placed, float(placement)
      )
      out.append(np.clip(np.rint(np.asarray(warped)), 0, 255).astype(np.uint8))
  if not out:
    return np.zeros((0, size, size, images.shape[3]), np.uint8)
  return np.concatenate(out)


def map_points(params, points, *, placement: float = 1.0) -> np.ndarray:
  """Normalised points moved by distortions (output -> input), in the
  frame of a canvas that holds the object ``placement`` times smaller
  (``canvas / object size``): ``p -> f(k p) / k``.

  Args:
    params: stacked ``theta (B, 2, 3)``, ``homography (B, 3, 3)`` or
      ``control_points (B, 16, 2)`` (one key).
    points: ``(B, P, 2)`` normalised ``(x, y)``.
    placement: k.

  Returns:
    float64 ``(B, P, 2)``.
  """
  (key,) = [k for k in ("theta", "homography", "control_points") if k in params]
  value = np.asarray(params[key], np.float64)
  points = np.asarray(points, np.float64) * placement
  if key == "control_points":
    source = np.broadcast_to(
      grids.tps_source_points(value.shape[1]), value.shape
    )
    with jax.enable_x64(True):
      spline = fitting.fit_tps(jnp.asarray(source), jnp.asarray(value))
      moved = np.asarray(fitting.tps_warp_points(spline, jnp.asarray(points)))
    return moved / placement
  if key == "theta":
    last = np.broadcast_to([0.0, 0.0, 1.0], (len(value), 1, 3))
    value = np.concatenate([value, last], 1)
  homogeneous = np.concatenate([points, np.ones_like(points[..., :1])], -1)
  mapped = homogeneous @ np.swapaxes(value, 1, 2)
  return mapped[..., :2] / mapped[..., 2:] / placement
