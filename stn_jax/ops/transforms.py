"""Transformation families: flat parameter vectors, identities and grids.

A localisation network regresses a flat vector per example. This module fixes
how each family's vector is laid out, what its identity is (the bias a
localisation net's last layer starts from), and turns it into a sampling grid.

========== ====== ======================================================
family     size   layout of ``params[n]``
========== ====== ======================================================
affine     6      theta row-major: ``[a, b, tx, c, d, ty]``
projective 8      homography row-major without ``h33 = 1``
tps        2 K    control points ``(K, 2)`` row-major, ``(x, y)`` pairs
attention  3      ``(scale, tx, ty)``
========== ====== ======================================================
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v
from stn_jax.ops import grids

__all__ = [
  "TRANSFORMS",
  "num_transform_params",
  "identity_params",
  "params_to_grid",
  "params_to_matrix",
  "matrix_to_params",
  "MATRIX_TRANSFORMS",
]

TRANSFORMS = ("affine", "projective", "tps", "attention")
# The families whose maps are 3x3 matrices (they compose by matrix product).
MATRIX_TRANSFORMS = ("affine", "projective", "attention")


def num_transform_params(
  transform: str, *, num_control_points: int = 16
) -> int:
  """Length of the flat parameter vector of ``transform``."""
  v.check_choice("transform", transform, TRANSFORMS)
  if transform == "tps":
    grids.tps_source_points(num_control_points)  # validates K
    return 2 * num_control_points
  return {"affine": 6, "projective": 8, "attention": 3}[transform]


def identity_params(
  transform: str, *, num_control_points: int = 16
) -> np.ndarray:
  """Flat float32 parameters of the identity transform of ``transform``.

  Returns:
    ``(P,)`` NumPy array, ``P = num_transform_params(transform)``; its grid
    (:func:`params_to_grid`) is the identity grid of :func:`affine_grid`.
  """
  v.check_choice("transform", transform, TRANSFORMS)
  if transform == "affine":
    return np.array([1, 0, 0, 0, 1, 0], np.float32)
  if transform == "projective":
    return np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)
  if transform == "attention":
    return np.array([1, 0, 0], np.float32)
  return grids.tps_source_points(num_control_points).reshape(-1)


def params_to_grid(
  transform: str, params, out_shape, *, align_corners: bool = False
):
  """Sampling grid from flat parameters of a transformation family.

  Args:
    transform: one of ``TRANSFORMS``.
    params: ``(N, P)`` or ``(P,)`` float array, laid out as in the module
      docstring. For ``tps``, ``K = P / 2`` uses the default source points.
    out_shape: ``(H, W)`` of the output grid.
    align_corners: see :mod:`stn_jax.ops.grids`.

  Returns:
    ``(N, H, W, 2)`` (or ``(H, W, 2)``) grid.
  """
  v.check_choice("transform", transform, TRANSFORMS)
  params, batched = v.check_float_array("params", params, (None,), "(N, P)")
  v.check_not_empty("params", params, "(N, P)")
  size = params.shape[1]
  if transform == "tps":
    if size % 2:
      raise ValueError(
        "params for 'tps' must have an even length 2 K; got "
        f"shape {tuple(params.shape)}."
      )
    expected = size
  else:
    expected = num_transform_params(transform)
  if size != expected:
    raise ValueError(
      f"params for {transform!r} must have shape (N, "
      f"{expected}); got shape {tuple(params.shape)}."
    )
  if transform == "affine":
    grid = grids.affine_grid(
      params.reshape(-1, 2, 3), out_shape, align_corners=align_corners
    )
  elif transform == "projective":
    grid = grids.projective_grid(
      _matrix(transform, params), out_shape, align_corners=align_corners
    )
  elif transform == "attention":
    grid = grids.affine_grid(
      grids.attention_theta(params), out_shape, align_corners=align_corners
    )
  else:
    grid = grids.tps_grid(
      params.reshape(-1, size // 2, 2), out_shape, align_corners=align_corners
    )
  return grid if batched else grid[0]


def _matrix(transform, params):
  """``(N, 3, 3)`` from checked ``(N, P)`` flat parameters."""
  if transform == "attention":
    params = grids.attention_theta(params).reshape(-1, 6)
  if transform in ("affine", "attention"):
    last = jnp.zeros_like(params[:, :3]).at[:, 2].set(1)
  else:
    last = jnp.ones_like(params[:, :1])
  return jnp.concatenate([params, last], axis=1).reshape(-1, 3, 3)


def params_to_matrix(transform: str, params):
  """The 3x3 matrix of flat parameters of a matrix family.

  The matrix maps homogeneous normalised OUTPUT points ``(x, y, 1)`` to
  INPUT points (as the grids do), so two maps compose by matrix product:
  sampling with ``A`` an image already sampled with ``B`` is sampling the
  original with ``B @ A``.

  Args:
    transform: one of ``MATRIX_TRANSFORMS`` (``affine``, ``projective``,
      ``attention``).
    params: ``(N, P)`` or ``(P,)`` float array, laid out as in the module
      docstring.

  Returns:
    ``(N, 3, 3)`` (or ``(3, 3)``); last row ``(0, 0, 1)`` for ``affine``
    and ``attention``, ``h33 = 1`` for ``projective``.
  """
  v.check_choice("transform", transform, MATRIX_TRANSFORMS)
  size = num_transform_params(transform)
  params, batched = v.check_float_array(
    "params", params, (size,), f"(N, {size})"
  )
  matrix = _matrix(transform, params)
  return matrix if batched else matrix[0]


def matrix_to_params(transform: str, matrix):
  """Flat parameters of a 3x3 matrix: the inverse of
  :func:`params_to_matrix` for ``affine`` (the first two rows) and
  ``projective`` (the matrix divided by ``h33``, which must not be 0).

  Args:
    transform: ``affine`` or ``projective``.
    matrix: ``(N, 3, 3)`` or ``(3, 3)`` float array. For ``affine`` its
      last row is ignored (it should be ``(0, 0, 1)``).

  Returns:
    ``(N, P)`` (or ``(P,)``) flat parameters, ``P`` = 6 or 8.
  """
  v.check_choice("transform", transform, ("affine", "projective"))
  matrix, batched = v.check_float_array("matrix", matrix, (3, 3), "(N, 3, 3)")
  if transform == "affine":
    params = matrix[:, :2].reshape(-1, 6)
  else:
    params = (matrix / matrix[:, 2:, 2:]).reshape(-1, 9)[:, :8]
  return params if batched else params[0]
