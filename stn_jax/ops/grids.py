"""Grid generators: transformation parameters -> sampling grids.

Conventions (the same as PyTorch's ``affine_grid``/``grid_sample``):

* Coordinates are normalised to ``[-1, 1]``: ``x`` runs along the width
  (left to right), ``y`` along the height (top to bottom).
* A grid has shape ``(N, H_out, W_out, 2)`` and its last axis is ``(x, y)``.
* A grid maps each OUTPUT pixel to the INPUT point it reads from
  ("backward" or pull warping), so the transformation parameters map output
  coordinates to input coordinates.
* With ``align_corners=False`` (the default) ``-1`` and ``1`` are the outer
  edges of the corner pixels, so pixel ``i`` of ``W`` has centre
  ``(2 i + 1) / W - 1``. With ``align_corners=True`` they are the centres of
  the corner pixels: ``2 i / (W - 1) - 1``.

Every function takes a batch (leading ``N`` axis) or a single example (no
batch axis; the output then has none either), so it can be used directly and
under ``jax.vmap``. Output dtype equals the parameters' dtype; arithmetic on
bfloat16/float16 inputs is done in float32.

``out_shape`` and ``align_corners`` must be static (Python values): under
``jax.jit`` pass them with ``static_argnums``/``static_argnames`` or
``functools.partial``; a traced one raises ``ValueError`` saying so. An empty
grid (a zero in ``out_shape``) or an empty batch (``N = 0``) raises
``ValueError`` too.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v

__all__ = [
  "base_coordinates",
  "affine_grid",
  "projective_grid",
  "tps_grid",
  "tps_source_points",
  "attention_theta",
]


def base_coordinates(size: int, *, align_corners: bool = False) -> np.ndarray:
  """Normalised centre coordinates of ``size`` pixels along one axis.

  Args:
    size: number of pixels (positive int).
    align_corners: see the module docstring.

  Returns:
    float64 NumPy array of shape ``(size,)``: ``(2 i + 1) / size - 1`` when
    ``align_corners`` is False, ``2 i / (size - 1) - 1`` when True (``[0.]``
    for ``size == 1``, as in PyTorch).
  """
  i = np.arange(size, dtype=np.float64)
  if align_corners:
    return np.zeros(1) if size == 1 else 2.0 * i / (size - 1) - 1.0
  return (2.0 * i + 1.0) / size - 1.0


def _output_points(out_shape, align_corners):
  """(H, W) arrays of the output grid's normalised x and y coordinates."""
  height, width = out_shape
  xs = base_coordinates(width, align_corners=align_corners)
  ys = base_coordinates(height, align_corners=align_corners)
  return np.meshgrid(xs, ys, indexing="xy")


def _restore_batch(array, batched):
  return array if batched else array[0]


def affine_grid(theta, out_shape, *, align_corners: bool = False):
  """Sampling grid of a 2-D affine transformation.

  Equal to ``torch.nn.functional.affine_grid(theta, (N, C, H, W),
  align_corners=align_corners)``.

  Args:
    theta: ``(N, 2, 3)`` or ``(2, 3)`` float array. Row 0 gives the input x
      and row 1 the input y of an output point ``(x, y, 1)``.
    out_shape: ``(H, W)`` of the output grid.
    align_corners: see the module docstring.

  Returns:
    ``(N, H, W, 2)`` (or ``(H, W, 2)``) grid of input ``(x, y)`` points.

  Example: the identity ``theta = [[1, 0, 0], [0, 1, 0]]`` gives the grid
  whose sampling with :func:`grid_sample` reproduces the image exactly.
  """
  theta, batched = v.check_float_array("theta", theta, (2, 3), "(N, 2, 3)")
  v.check_not_empty("theta", theta, "(N, 2, 3)")
  out_shape = v.check_out_shape("out_shape", out_shape)
  align_corners = v.check_bool("align_corners", align_corners)
  dtype = v.compute_dtype(theta.dtype)
  grid = _affine_grid(theta.astype(dtype), out_shape, align_corners)
  return _restore_batch(grid.astype(theta.dtype), batched)


def _base_points(out_shape, align_corners):
  """(P, 3) float64 array of the output points' (x, y, 1)."""
  xs, ys = _output_points(out_shape, align_corners)
  return np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _affine_grid(theta, out_shape, align_corners):
  xs, ys = (
    jnp.asarray(a, theta.dtype)
    for a in _output_points(out_shape, align_corners)
  )
  t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
  # Elementwise rather than a matmul: exact in float32 on every backend, and
  # fused into the sampler that consumes it.
  coords = t[:, :, 0] * xs + t[:, :, 1] * ys + t[:, :, 2]  # (N, 2, H, W)
  return jnp.moveaxis(coords, 1, -1)


@_affine_grid.defjvp
def _affine_grid_jvp(out_shape, align_corners, primals, tangents):
  (theta,), (d_theta,) = primals, tangents
  # The grid is linear in theta, so the tangent is the same map. As a
  # (P x 3) @ (3 x 2) product per example, its transpose (reverse mode) is
  # one matmul, several times faster on the CPU than the transpose of the
  # elementwise form (broadcast reductions).
  base = jnp.asarray(_base_points(out_shape, align_corners), d_theta.dtype)
  d_grid = jnp.einsum(
    "pk,ndk->npd", base, d_theta, precision=jax.lax.Precision.HIGHEST
  )
  out = _affine_grid(theta, out_shape, align_corners)
  return out, d_grid.reshape(out.shape)


def projective_grid(homography, out_shape, *, align_corners: bool = False):
  """Sampling grid of a projective transformation (homography).

  An output point ``(x, y)`` reads from the input point
  ``(u / w, v / w)`` where ``(u, v, w) = homography @ (x, y, 1)``. A
  homography whose last row is ``(0, 0, 1)`` gives :func:`affine_grid` of its
  first two rows.

  Points with ``w == 0`` (mapped to infinity) get ``inf``/``nan`` grid
  entries with zero gradient; :func:`grid_sample` treats them as undefined
  and reads zero there.

  Args:
    homography: ``(N, 3, 3)`` or ``(3, 3)`` float array, output -> input in
      homogeneous normalised coordinates.
    out_shape: ``(H, W)`` of the output grid.
    align_corners: see the module docstring.

  Returns:
    ``(N, H, W, 2)`` (or ``(H, W, 2)``) grid of input ``(x, y)`` points.
  """
  homography, batched = v.check_float_array(
    "homography", homography, (3, 3), "(N, 3, 3)"
  )
  v.check_not_empty("homography", homography, "(N, 3, 3)")
  out_shape = v.check_out_shape("out_shape", out_shape)
  align_corners = v.check_bool("align_corners", align_corners)
  dtype = v.compute_dtype(homography.dtype)
  xs, ys = (
    jnp.asarray(a, dtype) for a in _output_points(out_shape, align_corners)
  )
  h = homography.astype(dtype)[:, :, :, None, None]  # (N, 3, 3, 1, 1)
  uvw = h[:, :, 0] * xs + h[:, :, 1] * ys + h[:, :, 2]  # (N, 3, H, W)
  w = uvw[:, 2:3]
  at_infinity = w == 0
  # Double `where`: the unselected branch stays finite, so gradients do too.
  safe_w = jnp.where(at_infinity, jnp.ones_like(w), w)
  uv = jnp.where(at_infinity, jnp.inf, uvw[:, :2] / safe_w)
  grid = jnp.moveaxis(uv, 1, -1).astype(homography.dtype)
  return _restore_batch(grid, batched)


def tps_source_points(num_control_points: int = 16) -> np.ndarray:
  """Default thin-plate-spline source points: a regular grid over [-1, 1]^2.

  Args:
    num_control_points: K, a perfect square (the paper uses 16 = 4 x 4).

  Returns:
    float32 NumPy array ``(K, 2)`` of ``(x, y)`` points in row-major order:
    point ``k = i * n + j`` is ``(x_j, y_i)`` with ``n = sqrt(K)`` and
    ``x_j = y_j = -1 + 2 j / (n - 1)``.
  """
  v.raise_if_traced("num_control_points", num_control_points, "a Python int")
  n = (
    math.isqrt(num_control_points)
    if isinstance(num_control_points, (int, np.integer))
    and num_control_points > 0
    else 0
  )
  if n < 2 or n * n != num_control_points:
    raise ValueError(
      "num_control_points must be a perfect square >= 4 (the "
      f"paper uses 16); got {num_control_points!r}."
    )
  lin = np.linspace(-1.0, 1.0, n)
  xs, ys = np.meshgrid(lin, lin, indexing="xy")
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def _tps_kernel(squared_distance, xp):
  """U(r) = r^2 log r^2, with U(0) = 0 (the TPS radial basis)."""
  safe = xp.where(squared_distance > 0, squared_distance, 1.0)
  return xp.where(squared_distance > 0, squared_distance * xp.log(safe), 0.0)


def _tps_system(source, xp):
  """The (K + 3, K + 3) TPS interpolation matrix for source points (K, 2)."""
  k = source.shape[0]
  diff = source[:, None, :] - source[None, :, :]
  kernel = _tps_kernel((diff**2).sum(-1), xp)
  affine = xp.concatenate([xp.ones((k, 1), source.dtype), source], axis=1)
  top = xp.concatenate([kernel, affine], axis=1)
  bottom = xp.concatenate([affine.T, xp.zeros((3, 3), source.dtype)], axis=1)
  return xp.concatenate([top, bottom], axis=0)


def _tps_features(points, source, xp):
  """[U(|p - s_k|)_k, 1, x, y] for points (P, 2): shape (P, K + 3)."""
  diff = points[:, None, :] - source[None, :, :]
  kernel = _tps_kernel((diff**2).sum(-1), xp)
  ones = xp.ones((points.shape[0], 1), points.dtype)
  return xp.concatenate([kernel, ones, points], axis=1)


def _tps_weights_numpy(source, out_shape, align_corners):
  """(H * W, K) matrix M with grid = M @ control_points, in float64."""
  xs, ys = _output_points(out_shape, align_corners)
  points = np.stack([xs.ravel(), ys.ravel()], axis=-1)
  system = _tps_system(source, np)
  # Interpolant is linear in the control points: grid = F @ L^-1[:, :K] @ C.
  inverse = np.linalg.inv(system)[:, : source.shape[0]]
  return _tps_features(points, source, np) @ inverse


def tps_grid(
  control_points, out_shape, *, source_points=None, align_corners: bool = False
):
  """Sampling grid of a thin plate spline (TPS) transformation.

  The spline ``f`` maps output coordinates to input coordinates with
  ``f(source_points[k]) = control_points[k]``, minimal bending energy, and
  exact reproduction of affine maps: control points that are an affine image
  of the source points give that affine grid, and
  ``control_points == source_points`` gives the identity.

  Args:
    control_points: ``(N, K, 2)`` or ``(K, 2)`` float array, ``(x, y)`` in
      the input where the K source points land.
    out_shape: ``(H, W)`` of the output grid.
    source_points: ``(K, 2)`` points in output coordinates; default
      :func:`tps_source_points` (K must then be a perfect square). A NumPy
      array (or None) is solved once in float64 at trace time; a JAX array is
      solved in the graph, so it may be learned. Points that coincide or all
      lie on one line make the spline undefined: concrete points (NumPy or
      an untraced JAX array) raise ``ValueError``; traced ones (under
      ``jit``/``grad``) cannot be looked at and give meaningless or
      non-finite grids.
    align_corners: see the module docstring.

  Returns:
    ``(N, H, W, 2)`` (or ``(H, W, 2)``) grid of input ``(x, y)`` points.
  """
  control_points, batched = v.check_float_array(
    "control_points", control_points, (None, 2), "(N, K, 2)"
  )
  v.check_not_empty("control_points", control_points, "(N, K, 2)")
  out_shape = v.check_out_shape("out_shape", out_shape)
  align_corners = v.check_bool("align_corners", align_corners)
  num_points = control_points.shape[1]
  dtype = v.compute_dtype(control_points.dtype)
  if source_points is None:
    source_points = tps_source_points(num_points)
  if tuple(np.shape(source_points)) != (num_points, 2):
    raise ValueError(
      f"source_points must have shape ({num_points}, 2) to "
      "match control_points; got shape "
      f"{tuple(np.shape(source_points))}."
    )
  concrete = v.concrete_value(source_points)
  if concrete is not None:
    v.check_tps_points("source_points", concrete)
  if isinstance(source_points, jax.Array):
    xs, ys = _output_points(out_shape, align_corners)
    points = jnp.asarray(np.stack([xs.ravel(), ys.ravel()], -1), dtype)
    source = source_points.astype(dtype)
    system = _tps_system(source, jnp)
    rhs = jnp.eye(num_points + 3, num_points, dtype=dtype)
    # HIGHEST: on GPUs XLA's default float32 matmul rounds its inputs
    # (TF32-like), an error of ~1e-3 in the grid.
    weights = jnp.matmul(
      _tps_features(points, source, jnp),
      jnp.linalg.solve(system, rhs),
      precision=jax.lax.Precision.HIGHEST,
    )
  else:
    weights = jnp.asarray(
      _tps_weights_numpy(
        np.asarray(source_points, np.float64), out_shape, align_corners
      ),
      dtype,
    )
  grid = jnp.einsum(
    "pk,nkd->npd",
    weights,
    control_points.astype(dtype),
    precision=jax.lax.Precision.HIGHEST,
  )
  grid = grid.reshape(-1, *out_shape, 2).astype(control_points.dtype)
  return _restore_batch(grid, batched)


def attention_theta(params):
  """Affine theta of the attention transform (isotropic scale + translation).

  Args:
    params: ``(N, 3)`` or ``(3,)`` float array of ``(scale, tx, ty)``.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) theta ``[[s, 0, tx], [0, s, ty]]`` for
    :func:`affine_grid`.
  """
  params, batched = v.check_float_array("params", params, (3,), "(N, 3)")
  scale, tx, ty = params[:, 0], params[:, 1], params[:, 2]
  zero = jnp.zeros_like(scale)
  theta = jnp.stack(
    [jnp.stack([scale, zero, tx], -1), jnp.stack([zero, scale, ty], -1)], axis=1
  )
  return _restore_batch(theta, batched)
