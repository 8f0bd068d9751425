"""Transformations fitted from point pairs, and rotation matrices.

Points are ``(x, y)`` in any units; with pixel coordinates (pixel centres at
integers, ``x`` right, ``y`` down, see :mod:`stn_jax.ops.geometry`) the
fitted matrices map ``src`` to ``dst`` as OpenCV's do, so they can be passed
to :func:`warp_affine`/:func:`warp_perspective` directly. Every function
takes a batch (leading ``N``) or a single example and works under
``jax.jit``, ``jax.vmap`` and ``jax.grad`` (gradients flow to the points).

Degenerate point sets (e.g. three collinear points for an affine fit, or
coincident points) cannot be detected without looking at the values, which
``jax.jit`` does not allow: they give ``inf``/``nan`` or meaningless (huge)
entries instead of raising. The exception is :func:`fit_tps`, which checks
its ``src`` when the values are concrete (NumPy or untraced JAX arrays, not
under ``jit``/``vmap``/``grad``) and raises ``ValueError``. Wrong shapes,
too few points and non-float dtypes raise ``ValueError``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v
from stn_jax.ops import grids

__all__ = [
  "get_perspective_transform",
  "get_affine_transform",
  "rotation_matrix",
  "ThinPlateSpline",
  "fit_tps",
  "tps_warp_points",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_pairs(src, dst, min_points, exact=None):
  description = f"(N, {exact}, 2)" if exact else "(N, K, 2)"
  trailing = (exact, 2) if exact else (None, 2)
  src, src_batched = v.check_float_array("src", src, trailing, description)
  dst, dst_batched = v.check_float_array("dst", dst, trailing, description)
  if src.shape[1] < min_points:
    raise ValueError(
      f"src must hold at least {min_points} points, shape "
      f"(N, K, 2) with K >= {min_points}; got shape "
      f"{tuple(src.shape[1:] if not src_batched else src.shape)}"
      "."
    )
  v.check_same_batching(
    ("src", "dst"), (src_batched, dst_batched), (src.shape, dst.shape)
  )
  if src.shape[1] != dst.shape[1]:
    raise ValueError(
      "dst must have as many points as src; got src shape "
      f"{tuple(src.shape)} and dst shape {tuple(dst.shape)}."
    )
  dtype = v.compute_dtype(src.dtype, dst.dtype)
  return (
    src.astype(dtype),
    dst.astype(dtype),
    src_batched,
    jnp.result_type(src.dtype, dst.dtype),
  )


def _similarity_normalization(points):
  """Centre and RMS scale of (N, K, 2) points: returns (centre, scale)."""
  centre = points.mean(axis=1)
  scale = jnp.sqrt(((points - centre[:, None]) ** 2).sum(-1).mean(-1))
  return centre, scale


def _normalizing_matrix(centre, scale):
  """(N, 3, 3) matrices p -> (p - centre) / scale."""
  zero, one = jnp.zeros_like(scale), jnp.ones_like(scale)
  inv = 1 / scale
  return jnp.stack(
    [
      jnp.stack([inv, zero, -centre[:, 0] * inv], -1),
      jnp.stack([zero, inv, -centre[:, 1] * inv], -1),
      jnp.stack([zero, zero, one], -1),
    ],
    axis=1,
  )


def get_perspective_transform(src, dst):
  """The homography that maps 4 source points to 4 destination points.

  Like ``cv2.getPerspectiveTransform(src, dst)``: ``H`` with ``dst_k ~ H @
  (src_k, 1)`` (equal after dividing by the third coordinate) and ``H[2, 2]
  = 1``. It solves the 8 x 8 linear system for the other 8 entries after
  moving each point set to zero mean and unit RMS distance (Hartley's
  normalisation, for accuracy in float32).

  Args:
    src: ``(N, 4, 2)`` or ``(4, 2)`` float array of ``(x, y)`` points.
    dst: the same shape: where each source point goes.

  Returns:
    ``(N, 3, 3)`` (or ``(3, 3)``) homography, source -> destination (the
    argument :func:`warp_perspective` takes). Three collinear points (on
    either side) make the system singular: the result is then non-finite or
    meaningless.
  """
  src, dst, batched, dtype = _check_pairs(src, dst, 4, exact=4)
  src_centre, src_scale = _similarity_normalization(src)
  dst_centre, dst_scale = _similarity_normalization(dst)
  s = (src - src_centre[:, None]) / src_scale[:, None, None]
  d = (dst - dst_centre[:, None]) / dst_scale[:, None, None]
  x, y, u, w = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)
  # u (g x + h y + 1) = a x + b y + c, likewise w with (d, e, f).
  rows_u = jnp.stack([x, y, one, zero, zero, zero, -x * u, -y * u], -1)
  rows_v = jnp.stack([zero, zero, zero, x, y, one, -x * w, -y * w], -1)
  system = jnp.concatenate([rows_u, rows_v], axis=1)  # (N, 8, 8)
  rhs = jnp.concatenate([u, w], axis=1)  # (N, 8)
  h = jnp.linalg.solve(system, rhs[..., None])[..., 0]
  normalized = jnp.concatenate([h, jnp.ones_like(h[:, :1])], 1).reshape(
    -1, 3, 3
  )
  to_dst = jnp.linalg.inv(_normalizing_matrix(dst_centre, dst_scale))
  homography = jnp.einsum(
    "nij,njk,nkl->nil",
    to_dst,
    normalized,
    _normalizing_matrix(src_centre, src_scale),
    precision=_HIGHEST,
  )
  homography = homography / homography[:, 2:, 2:]
  homography = homography.astype(dtype)
  return homography if batched else homography[0]


def get_affine_transform(src, dst):
  """The least-squares affine map from K >= 3 source points to destinations.

  ``M`` minimises ``sum_k |M @ (src_k, 1) - dst_k|^2``. With K = 3 it maps
  the points exactly and equals ``cv2.getAffineTransform(src, dst)``; with
  more it equals NumPy's ``lstsq`` fit (it is solved in closed form on
  centred points).

  Args:
    src: ``(N, K, 2)`` or ``(K, 2)`` float array of ``(x, y)`` points,
      ``K >= 3``.
    dst: the same shape: where each source point goes.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) matrix, source -> destination (the argument
    :func:`warp_affine` takes). Collinear (or coincident) source points give
    ``inf``/``nan`` entries.
  """
  src, dst, batched, dtype = _check_pairs(src, dst, 3)
  src_centre, dst_centre = src.mean(1), dst.mean(1)
  s = src - src_centre[:, None]
  d = dst - dst_centre[:, None]
  gram = jnp.einsum("nki,nkj->nij", s, s, precision=_HIGHEST)  # (N, 2, 2)
  cross = jnp.einsum("nki,nkj->nij", d, s, precision=_HIGHEST)
  det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
  inverse = (
    jnp.stack(
      [
        jnp.stack([gram[:, 1, 1], -gram[:, 0, 1]], -1),
        jnp.stack([-gram[:, 1, 0], gram[:, 0, 0]], -1),
      ],
      1,
    )
    / det[:, None, None]
  )
  linear = jnp.einsum("nij,njk->nik", cross, inverse, precision=_HIGHEST)
  shift = dst_centre - jnp.einsum(
    "nij,nj->ni", linear, src_centre, precision=_HIGHEST
  )
  matrix = jnp.concatenate([linear, shift[..., None]], -1).astype(dtype)
  return matrix if batched else matrix[0]


def rotation_matrix(center, angle, scale=1.0):
  """Rotation by ``angle`` degrees about ``center``, with isotropic scale.

  Equal to ``cv2.getRotationMatrix2D(center, angle, scale)``: with pixel
  coordinates (``y`` down) a positive angle turns the displayed image
  counter-clockwise. The matrix is ``[[a, b, (1 - a) cx - b cy], [-b, a, b cx
  + (1 - a) cy]]`` with ``a = scale cos(angle)``, ``b = scale sin(angle)``.

  Args:
    center: ``(N, 2)`` or ``(2,)`` float array ``(cx, cy)``.
    angle: ``(N,)`` (or ``()`` when unbatched) float array, in degrees.
    scale: a number, or a float array of the shape of ``angle``.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) affine matrix, source -> destination.
  """
  center, batched = v.check_float_array("center", center, (2,), "(N, 2)")
  angle, angle_batched = v.check_float_array("angle", angle, (), "(N,)")
  v.check_same_batching(
    ("center", "angle"), (batched, angle_batched), (center.shape, angle.shape)
  )
  if isinstance(
    scale, (int, float, np.integer, np.floating)
  ) and not isinstance(scale, bool):
    scale = jnp.full(angle.shape, float(scale), angle.dtype)
  elif np.ndim(scale) == 0:  # a number as a 0-d array (as under jax.jit)
    scale, _ = v.check_float_array(
      "scale", jnp.asarray(scale, jnp.result_type(scale, float)), (), "(N,)"
    )
    scale = jnp.broadcast_to(scale, angle.shape)
  else:
    scale, scale_batched = v.check_float_array("scale", scale, (), "(N,)")
    v.check_same_batching(
      ("angle", "scale"), (batched, scale_batched), (angle.shape, scale.shape)
    )
  dtype = v.compute_dtype(center.dtype, angle.dtype, scale.dtype)
  radians = jnp.deg2rad(angle.astype(dtype))
  alpha = scale.astype(dtype) * jnp.cos(radians)
  beta = scale.astype(dtype) * jnp.sin(radians)
  cx, cy = center[:, 0].astype(dtype), center[:, 1].astype(dtype)
  matrix = jnp.stack(
    [
      jnp.stack([alpha, beta, (1 - alpha) * cx - beta * cy], -1),
      jnp.stack([-beta, alpha, beta * cx + (1 - alpha) * cy], -1),
    ],
    axis=1,
  )
  matrix = matrix.astype(jnp.result_type(center.dtype, angle.dtype))
  return matrix if batched else matrix[0]


class ThinPlateSpline(NamedTuple):
  """A fitted thin plate spline ``f`` (see :func:`fit_tps`); a pytree.

  With ``p' = (p - center) / scale`` and ``s'_k = (source_points_k - center)
  / scale``, ``f(p) = sum_k weights_k U(|p' - s'_k|) + affine.T @ (1, p'_x,
  p'_y)`` and ``U(r) = r^2 log r^2``. Shapes carry a leading ``N`` when
  fitted from a batch.
  """

  source_points: jax.Array  # (N, K, 2) the points f was fitted at.
  weights: jax.Array  # (N, K, 2) radial weights, normalised units.
  affine: jax.Array  # (N, 3, 2) coefficients of (1, x', y').
  center: jax.Array  # (N, 2) mean of source_points.
  scale: jax.Array  # (N,) RMS distance of source_points to center.


def _solve_tps(source, target, regularization):
  """One spline: source, target (K, 2), regularization () in source units."""
  centre = source.mean(0)
  scale = jnp.sqrt(((source - centre) ** 2).sum(-1).mean())
  s = (source - centre) / scale
  k = source.shape[0]
  system = grids._tps_system(s, jnp)  # pylint: disable=protected-access
  # U(c r) = c^2 U(r) + c^2 log(c^2) r^2, and the r^2 part is affine on the
  # solution space: the spline of the given units with regularisation lambda
  # is the spline of the normalised units with lambda / scale^2.
  ridge = jnp.zeros(k + 3, s.dtype).at[:k].set(regularization / scale**2)
  system = system + jnp.diag(ridge)
  rhs = jnp.concatenate([target, jnp.zeros((3, 2), s.dtype)], 0)
  solution = jnp.linalg.solve(system, rhs)
  return solution[:k], solution[k:], centre, scale


def fit_tps(src, dst, *, regularization=0.0) -> ThinPlateSpline:
  """Fits the thin plate spline ``f`` with ``f(src_k) ~ dst_k``.

  ``f(p) = sum_k w_k U(|p - src_k|) + A @ (1, p)`` with ``U(r) = r^2 log r^2``
  (the kernel of :func:`tps_grid`), where ``(w, A)`` solve ``(U_ij +
  regularization delta_ij) w + P A = dst`` and ``P^T w = 0`` (``U_ij = U(|src_i
  - src_j|)``, ``P = [1, src]``), in the units of the points. With
  ``regularization = 0`` it interpolates (``f(src) = dst``) with minimal
  bending energy; as it grows, ``f`` tends to the least-squares affine fit
  (:func:`get_affine_transform`). Affine maps are reproduced exactly for any
  regularisation. This is ``scipy.interpolate.RBFInterpolator(src, dst,
  kernel='thin_plate_spline', smoothing=regularization / 2)`` (scipy's kernel
  is ``r^2 log r``, half of ours).

  ``tps_grid(control, out_shape, source_points=s)`` samples
  ``fit_tps(s, control)`` at the normalised output pixel centres.

  Args:
    src: ``(N, K, 2)`` or ``(K, 2)`` float array, ``K >= 3`` points not all
      on one line and, without regularisation, distinct (else the system is
      singular). Concrete values are checked (``ValueError`` naming
      ``src[n]``, with the tolerance ``DEGENERATE_RTOL = 1e-6`` relative to
      the points' RMS spread); traced ones cannot be, and give non-finite or
      meaningless splines. Repeated points are allowed with a positive
      concrete ``regularization``; with a traced one they are not checked.
    dst: the same shape: the values of ``f`` at ``src``.
    regularization: a non-negative number or a float scalar (may be traced).

  Returns:
    a :class:`ThinPlateSpline` (solved in coordinates centred and scaled by
    the source points, for float32 accuracy) for :func:`tps_warp_points`.
  """
  raw_src = src
  src, dst, batched, dtype = _check_pairs(src, dst, 3)
  if isinstance(
    regularization, (int, float, np.integer, np.floating)
  ) and not isinstance(regularization, bool):
    if not regularization >= 0:
      raise ValueError(
        f"regularization must be a non-negative number; got {regularization!r}."
      )
  elif not (
    hasattr(regularization, "shape")
    and np.shape(regularization) == ()
    and jnp.issubdtype(jnp.result_type(regularization), jnp.floating)
  ):
    raise ValueError(
      "regularization must be a non-negative number or a "
      f"float scalar array; got {regularization!r}."
    )
  _check_tps_sources(raw_src, regularization, batched)
  lam = jnp.asarray(regularization, src.dtype)
  weights, affine, centre, scale = jax.vmap(_solve_tps, in_axes=(0, 0, None))(
    src, dst, lam
  )
  fields = (src, weights, affine, centre, scale)
  fields = tuple(f.astype(dtype) for f in fields)
  if not batched:
    fields = tuple(f[0] for f in fields)
  return ThinPlateSpline(*fields)


def _check_tps_sources(src, regularization, batched):
  """Raises if concrete ``src`` would make a fit_tps system singular."""
  points = v.concrete_value(src)
  if points is None:
    return  # Traced: the values cannot be looked at (documented).
  lam = v.concrete_value(regularization)
  # Coincident points are fine with a positive regularisation (the ridge
  # keeps the system invertible); unknown (traced) ones are not checked.
  allow_duplicates = lam is None or float(lam) > 0
  points = points if batched else points[None]
  for n, example in enumerate(points):
    name = f"src[{n}]" if batched else "src"
    v.check_tps_points(name, example, allow_duplicates=allow_duplicates)


def _evaluate_tps(points, source, weights, affine, centre, scale):
  s = (source - centre) / scale
  p = (points - centre) / scale
  coefficients = jnp.concatenate([weights, affine], 0)  # (K + 3, 2)
  features = grids._tps_features(p, s, jnp)  # pylint: disable=protected-access
  return jnp.matmul(features, coefficients, precision=_HIGHEST)


def tps_warp_points(tps: ThinPlateSpline, points):
  """Moves points with a fitted thin plate spline: ``f(points)``.

  Args:
    tps: from :func:`fit_tps`, batched (``N`` splines) or not.
    points: ``(N, P, 2)`` float array (``(P, 2)`` for an unbatched spline),
      in the units ``tps`` was fitted in.

  Returns:
    ``(N, P, 2)`` (or ``(P, 2)``) moved points. Gradients flow to the points
    and to the spline's fields (so to the fitted ``src`` and ``dst``).
  """
  if not isinstance(tps, ThinPlateSpline):
    raise ValueError(
      f"tps must be a ThinPlateSpline from fit_tps; got {type(tps).__name__}."
    )
  spline_batched = np.ndim(tps.source_points) == 3
  points, batched = v.check_float_array(
    "points", points, (None, 2), "(N, P, 2)"
  )
  fields = tuple(jnp.asarray(f) for f in tps)
  if not spline_batched:
    fields = tuple(f[None] for f in fields)
  v.check_same_batching(
    ("tps.source_points", "points"),
    (spline_batched, batched),
    (fields[0].shape, points.shape),
  )
  dtype = v.compute_dtype(points.dtype, fields[1].dtype)
  out = jax.vmap(_evaluate_tps)(
    points.astype(dtype), *(f.astype(dtype) for f in fields)
  )
  out = out.astype(points.dtype)
  return out if batched else out[0]
