"""Composed 2-D affine matrices: anisotropic scaled rotation, shear, both.

Pixel matrices (source -> destination, :mod:`stn_jax.ops.geometry`) of shape
``(N, 2, 3)``, the argument :func:`stn_jax.ops.warp_affine` takes (kornia
returns the ``(3, 3)`` form of the last two; its last row is ``(0, 0, 1)``).
The functions carry kornia's names and compute kornia's matrices, including
its angle conventions (stated in each docstring). Every argument is batched
``(N, ...)`` or not, all alike; gradients flow to every argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v

__all__ = ["get_rotation_matrix2d", "get_shear_matrix2d", "get_affine_matrix2d"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_scale(scale):
  """Raises if a concrete scale has a zero component (a singular map)."""
  values = v.concrete_value(scale)
  if values is not None and (values == 0).any():
    index = np.argwhere(values == 0)[0].tolist()
    raise ValueError(
      f"scale must be non-zero (a zero scale collapses the image onto a "
      f"line: the matrix is singular and its warp reads 0); got scale"
      f"{index} = 0."
    )


def _check_all(arrays: dict):
  """Checks named ``(value, trailing, description)`` arrays as one batch.

  Returns the arrays (batch axis added), whether the input was batched and
  the compute dtype.
  """
  checked, batched, first = {}, None, None
  for name, (value, trailing, description) in arrays.items():
    array, is_batched = v.check_float_array(name, value, trailing, description)
    if first is None:
      first, batched = name, is_batched
    else:
      v.check_same_batching(
        (first, name),
        (batched, is_batched),
        (checked[first].shape, array.shape),
      )
    checked[name] = array
  dtype = v.compute_dtype(*(a.dtype for a in checked.values()))
  return {k: a.astype(dtype) for k, a in checked.items()}, batched, dtype


def _centred(linear, center):
  """(N, 2, 2) linear part about (N, 2) centres -> (N, 2, 3)."""
  shift = center - jnp.einsum("nij,nj->ni", linear, center, precision=_HIGHEST)
  return jnp.concatenate([linear, shift[..., None]], -1)


def _rotation_scale(angle, scale):
  """(N,) degrees, (N, 2) -> (N, 2, 2) ``R(angle) @ diag(scale)``."""
  radians = jnp.deg2rad(angle)
  cos, sin = jnp.cos(radians), jnp.sin(radians)
  rotation = jnp.stack(
    [jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], 1
  )
  return rotation * scale[:, None, :]


def _shear(sx, sy):
  """(N,) radians -> (N, 2, 2) ``[[1, -a], [-b, 1 + a b]]``, a, b = tan."""
  a, b = jnp.tan(sx), jnp.tan(sy)
  return jnp.stack(
    [jnp.stack([jnp.ones_like(a), -a], -1), jnp.stack([-b, 1 + a * b], -1)],
    1,
  )


def get_rotation_matrix2d(center, angle, scale):
  """Rotation about ``center`` after an anisotropic scale.

  ``M = T(c) @ R(angle) @ diag(sx, sy) @ T(-c)`` with ``R = [[cos, sin],
  [-sin, cos]]``: a positive angle turns the displayed image (``y`` down)
  counter-clockwise. Equal to kornia's ``get_rotation_matrix2d(center,
  angle, scale)``, and to ``cv2.getRotationMatrix2D(center, angle, s)``
  (and :func:`stn_jax.ops.rotation_matrix`) when ``sx == sy == s``.

  Args:
    center: ``(N, 2)`` or ``(2,)`` float array ``(cx, cy)``, the fixed point.
    angle: ``(N,)`` (or ``()``) float array, degrees.
    scale: ``(N, 2)`` (or ``(2,)``) float array ``(sx, sy)``, applied along
      the image axes before rotating.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) affine matrix, source -> destination.

  Raises:
    ValueError: for wrong shapes or dtypes, and for a zero in a concrete
      (untraced) ``scale``; a traced zero gives a singular matrix.
  """
  arrays, batched, _ = _check_all(
    {
      "center": (center, (2,), "(N, 2)"),
      "angle": (angle, (), "(N,)"),
      "scale": (scale, (2,), "(N, 2)"),
    }
  )
  _check_scale(scale)
  linear = _rotation_scale(arrays["angle"], arrays["scale"])
  matrix = _centred(linear, arrays["center"])
  return matrix if batched else matrix[0]


def get_shear_matrix2d(center, sx=None, sy=None):
  """Shear about ``center``: first along ``x`` by ``sx``, then along ``y``.

  ``M = T(c) @ [[1, 0], [-tan(sy), 1]] @ [[1, -tan(sx)], [0, 1]] @ T(-c)``
  = ``T(c) @ [[1, -a], [-b, 1 + a b]] @ T(-c)`` (``a = tan(sx)``, ``b =
  tan(sy)``): a point below the centre moves left by ``a`` per pixel for
  ``sx > 0``. Equal to kornia's ``get_shear_matrix2d(center, sx, sy)``
  (its first two rows; older kornia releases moved the centre when both
  angles were non-zero).

  Args:
    center: ``(N, 2)`` or ``(2,)`` float array ``(cx, cy)``, the fixed point.
    sx: ``(N,)`` (or ``()``) float array, RADIANS (as kornia); None is 0.
    sy: the same along ``y``.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) affine matrix, source -> destination.
  """
  arrays, batched, dtype = _check_all(
    {
      "center": (center, (2,), "(N, 2)"),
      **({} if sx is None else {"sx": (sx, (), "(N,)")}),
      **({} if sy is None else {"sy": (sy, (), "(N,)")}),
    }
  )
  zero = jnp.zeros(arrays["center"].shape[:1], dtype)
  linear = _shear(arrays.get("sx", zero), arrays.get("sy", zero))
  matrix = _centred(linear, arrays["center"])
  return matrix if batched else matrix[0]


def get_affine_matrix2d(translation, center, scale, angle, *, sx=None, sy=None):
  """Shear, anisotropic scale, rotation about a centre, then translation.

  ``M = T(t) @ T(c) @ R(-angle) @ diag(scale) @ T(-c) @ Sh(c, sx, sy)``,
  exactly kornia's ``get_affine_matrix2d(translation, center, scale, angle,
  sx, sy)`` (its first two rows): ``R(-angle) = [[cos, -sin], [sin, cos]]``,
  so a positive angle turns the displayed image (``y`` down) CLOCKWISE,
  the opposite of :func:`get_rotation_matrix2d` and ``cv2``; ``Sh`` is
  :func:`get_shear_matrix2d` about the same centre.

  Args:
    translation: ``(N, 2)`` or ``(2,)`` float array ``(tx, ty)``, pixels.
    center: ``(N, 2)`` (or ``(2,)``) float array, the centre of rotation,
      scale and shear.
    scale: ``(N, 2)`` (or ``(2,)``) float array ``(sx, sy)``.
    angle: ``(N,)`` (or ``()``) float array, degrees.
    sx: optional ``(N,)`` (or ``()``) shear along ``x``, RADIANS (kornia's
      ``RandomAffine`` converts its degrees with ``deg2rad`` before calling).
    sy: the same along ``y``.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) affine matrix, source -> destination (the
    argument of :func:`stn_jax.ops.warp_affine`).

  Raises:
    ValueError: for wrong shapes or dtypes, and for a zero in a concrete
      ``scale``.
  """
  arrays, batched, dtype = _check_all(
    {
      "translation": (translation, (2,), "(N, 2)"),
      "center": (center, (2,), "(N, 2)"),
      "scale": (scale, (2,), "(N, 2)"),
      "angle": (angle, (), "(N,)"),
      **({} if sx is None else {"sx": (sx, (), "(N,)")}),
      **({} if sy is None else {"sy": (sy, (), "(N,)")}),
    }
  )
  _check_scale(scale)
  center = arrays["center"]
  zero = jnp.zeros(center.shape[:1], dtype)
  linear = _rotation_scale(-arrays["angle"], arrays["scale"])
  if sx is not None or sy is not None:
    shear = _shear(arrays.get("sx", zero), arrays.get("sy", zero))
    # about the same centre, the two centred maps compose linearly
    linear = jnp.einsum("nij,njk->nik", linear, shear, precision=_HIGHEST)
  matrix = _centred(linear, center)
  matrix = matrix.at[:, :, 2].add(arrays["translation"])
  return matrix if batched else matrix[0]
