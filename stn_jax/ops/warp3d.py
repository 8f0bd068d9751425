"""Voxel-space 3-D geometry: warps of volumes and the matrices they take.

Voxel convention (the pixel one of :mod:`stn_jax.ops.geometry` with a third
axis): a point ``(x, y, z)`` is in voxel units with voxel centres at
integers: ``volume[d, i, j]`` has centre ``(x, y, z) = (j, i, d)``, so ``x``
runs along W, ``y`` along H and ``z`` along D. A ``(3, 4)`` affine ``M``
sends a SOURCE voxel ``(x, y, z)`` to the DESTINATION voxel ``M @ (x, y, z,
1)``; a ``(4, 4)`` homography divides by the fourth coordinate. Sizes are
``(depth, height, width)``. Volumes are NDHWC (kornia's are NCDHW).

The warps compute, for every destination voxel, the source point the
inverse matrix sends it to, and read it with
:func:`stn_jax.ops.grid_sample_3d` (trilinear or nearest). kornia's
``warp_affine3d``/``warp_perspective3d`` default to ``align_corners=True``,
which samples the same points (its matrices use the same voxel-centre
convention) but mirrors about the corner voxel centres under
``'reflection'``: that is ``padding_mode='reflection_101'`` here (see
:mod:`stn_jax.ops.remap`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v
from stn_jax.ops import volumetric

__all__ = [
  "VOLUMETRIC_PADDING_MODES",
  "warp_affine3d",
  "warp_perspective3d",
  "get_projective_transform",
  "get_perspective_transform3d",
]

VOLUMETRIC_PADDING_MODES = ("zeros", "border", "reflection", "reflection_101")

_HIGHEST = jax.lax.Precision.HIGHEST

_SAMPLING_ARGS = """\
    mode: ``'bilinear'`` (trilinear) or ``'nearest'`` (round half to even).
    padding_mode: ``'zeros'``, ``'border'``, ``'reflection'`` (about the
      volume's outer faces, scipy.ndimage's ``'reflect'``) or
      ``'reflection_101'`` (about the corner voxel centres, scipy's
      ``'mirror'``; kornia's ``'reflection'``)."""


def _check_size(out_size):
  v.raise_if_traced("out_size", out_size, "a (depth, height, width) triple")
  if (
    not isinstance(out_size, (tuple, list))
    or len(out_size) != 3
    or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in out_size
    )
  ):
    raise ValueError(
      "out_size must be a (depth, height, width) triple of positive ints; "
      f"got {out_size!r}."
    )
  return tuple(int(s) for s in out_size)


def _normalize(points, size, centres):
  if centres:
    return points if size == 1 else points * (2.0 / (size - 1)) - 1.0
  return (2.0 * points + 1.0) / size - 1.0


def _warp(volume, backward, out_size, mode, padding_mode):
  """(N, 4, 4) destination -> source voxel homographies; samples volume."""
  v.check_choice("padding_mode", padding_mode, VOLUMETRIC_PADDING_MODES)
  depth, height, width = out_size
  z, y, x = np.meshgrid(
    np.arange(depth), np.arange(height), np.arange(width), indexing="ij"
  )
  base = jnp.asarray(np.stack([x, y, z, np.ones_like(x)], -1), backward.dtype)
  xyzw = jnp.einsum("dhwk,nik->ndhwi", base, backward, precision=_HIGHEST)
  points = xyzw[..., :3] / xyzw[..., 3:]  # w == 0: inf/nan, which reads 0
  centres = padding_mode == "reflection_101"
  sizes = volume.shape[3], volume.shape[2], volume.shape[1]  # W, H, D
  grid = jnp.stack(
    [_normalize(points[..., k], sizes[k], centres) for k in range(3)], -1
  )
  return volumetric.grid_sample_3d(
    volume,
    grid,
    mode=mode,
    padding_mode="reflection" if centres else padding_mode,
    align_corners=centres,
  )


def _check_volume_and(volume, name, matrix, rows):
  volume, batched = v.check_float_array(
    "volume", volume, (None, None, None, None), "(N, D, H, W, C)"
  )
  matrix, matrix_batched = v.check_float_array(
    name, matrix, (rows, 4), f"(N, {rows}, 4)"
  )
  v.check_same_batching(
    ("volume", name), (batched, matrix_batched), (volume.shape, matrix.shape)
  )
  v.check_not_empty("volume", volume, "(N, D, H, W, C)")
  matrix = matrix.astype(v.compute_dtype(matrix.dtype))
  if rows == 3:
    last = jnp.zeros_like(matrix[:, :1]).at[:, :, 3].set(1)
    matrix = jnp.concatenate([matrix, last], axis=1)
  return volume, matrix, batched


def warp_affine3d(
  volume,
  matrix,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
):
  """Warps volumes by voxel affine matrices (source -> destination).

    Destination voxel ``(x, y, z)`` reads the source at ``inv(M) @ (x, y, z,
    1)`` in voxel coordinates (module docstring): the 3-D
    :func:`stn_jax.ops.warp_affine`, and ``scipy.ndimage.affine_transform``
    (order 1) with the inverse matrix in ``(z, y, x)`` order. kornia's
    ``warp_affine3d(src, M, dsize)`` takes the same matrix.

    Args:
      volume: ``(N, D, H, W, C)`` or ``(D, H, W, C)`` float array.
      matrix: ``(N, 3, 4)`` or ``(3, 4)`` float array, batched like
        ``volume``.
      out_size: ``(depth, height, width)`` of the output (static).
  {sampling_args}

    Returns:
      ``(N, depth, height, width, C)`` (or unbatched) array of
      ``volume.dtype``; gradients flow to ``volume`` and ``matrix``. A
      singular matrix reads 0 everywhere.
  """
  volume, matrix, batched = _check_volume_and(volume, "matrix", matrix, 3)
  out_size = _check_size(out_size)
  out = _warp(volume, jnp.linalg.inv(matrix), out_size, mode, padding_mode)
  return out if batched else out[0]


def warp_perspective3d(
  volume,
  homography,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
):
  """Warps volumes by voxel homographies (source -> destination).

    Destination voxel ``(x, y, z)`` reads the source at ``(a, b, c) / w``
    with ``(a, b, c, w) = inv(H) @ (x, y, z, 1)`` (module docstring); points
    with ``w == 0`` read 0. kornia's ``warp_perspective3d(src, M, dsize)``
    takes the same matrix.

    Args:
      volume: ``(N, D, H, W, C)`` or ``(D, H, W, C)`` float array.
      homography: ``(N, 4, 4)`` or ``(4, 4)`` float array, any scale.
      out_size: ``(depth, height, width)`` of the output (static).
  {sampling_args}

    Returns:
      ``(N, depth, height, width, C)`` (or unbatched) array of
      ``volume.dtype``; gradients flow to ``volume`` and ``homography``.
  """
  volume, homography, batched = _check_volume_and(
    volume, "homography", homography, 4
  )
  out_size = _check_size(out_size)
  out = _warp(volume, jnp.linalg.inv(homography), out_size, mode, padding_mode)
  return out if batched else out[0]


def _rodrigues(rotvec):
  """(N, 3) axis-angle vectors (radians) -> (N, 3, 3) rotation matrices."""
  theta2 = (rotvec**2).sum(-1)
  positive = theta2 > 0
  # double where: finite gradients at the zero rotation
  theta = jnp.where(positive, jnp.sqrt(jnp.where(positive, theta2, 1.0)), 0.0)
  a = jnp.sinc(theta / jnp.pi)  # sin(t) / t
  b = 0.5 * jnp.sinc(theta / (2 * jnp.pi)) ** 2  # (1 - cos t) / t^2
  x, y, z = rotvec[:, 0], rotvec[:, 1], rotvec[:, 2]
  zero = jnp.zeros_like(x)
  cross = jnp.stack(
    [
      jnp.stack([zero, -z, y], -1),
      jnp.stack([z, zero, -x], -1),
      jnp.stack([-y, x, zero], -1),
    ],
    1,
  )
  square = jnp.einsum("nij,njk->nik", cross, cross, precision=_HIGHEST)
  eye = jnp.eye(3, dtype=rotvec.dtype)
  return eye + a[:, None, None] * cross + b[:, None, None] * square


def get_projective_transform(center, angles, scales):
  """Rotation about ``center`` after an anisotropic scale, in 3-D.

  ``M = T(c) @ R @ diag(scales) @ T(-c)``, where ``R`` is the rotation of
  the axis-angle (Rodrigues) vector ``deg2rad(angles)``: about the axis
  ``angles / |angles|`` by ``|angles|`` degrees, right-handed in ``(x, y,
  z)`` (as ``scipy.spatial.transform.Rotation.from_rotvec`` and
  ``cv2.Rodrigues``). Equal to kornia's ``get_projective_transform(center,
  angles, scales)``. The zero vector is the identity, with finite
  gradients.

  Args:
    center: ``(N, 3)`` or ``(3,)`` float array ``(x, y, z)``, the fixed
      point.
    angles: ``(N, 3)`` (or ``(3,)``) float array, an axis-angle vector in
      DEGREES (not Euler angles).
    scales: ``(N, 3)`` (or ``(3,)``) float array, applied along the axes
      before rotating.

  Returns:
    ``(N, 3, 4)`` (or ``(3, 4)``) voxel affine matrix, source ->
    destination (the argument of :func:`warp_affine3d`).

  Raises:
    ValueError: for wrong shapes or dtypes, and for a zero in a concrete
      (untraced) ``scales``.
  """
  names = ("center", "angles", "scales")
  arrays, flags = [], []
  for name, value in zip(names, (center, angles, scales)):
    array, batched = v.check_float_array(name, value, (3,), "(N, 3)")
    if arrays:
      v.check_same_batching(
        ("center", name), (flags[0], batched), (arrays[0].shape, array.shape)
      )
    arrays.append(array)
    flags.append(batched)
  values = v.concrete_value(scales)
  if values is not None and (values == 0).any():
    raise ValueError(
      "scales must be non-zero (a zero scale flattens the volume: the "
      f"matrix is singular); got scales{np.argwhere(values == 0)[0].tolist()}"
      " = 0."
    )
  dtype = v.compute_dtype(*(a.dtype for a in arrays))
  center, angles, scales = (a.astype(dtype) for a in arrays)
  linear = _rodrigues(jnp.deg2rad(angles)) * scales[:, None, :]
  shift = center - jnp.einsum("nij,nj->ni", linear, center, precision=_HIGHEST)
  matrix = jnp.concatenate([linear, shift[..., None]], -1)
  return matrix if flags[0] else matrix[0]


def _normalizing_matrix(points):
  """(N, K, 3) -> (N, 4, 4): zero mean, RMS distance sqrt(3) (Hartley)."""
  centre = points.mean(1)
  rms = jnp.sqrt(((points - centre[:, None]) ** 2).sum(-1).mean(-1))
  scale = jnp.sqrt(3.0).astype(points.dtype) / rms
  n = points.shape[0]
  matrix = jnp.zeros((n, 4, 4), points.dtype)
  matrix = matrix.at[:, jnp.arange(3), jnp.arange(3)].set(scale[:, None])
  matrix = matrix.at[:, :3, 3].set(-scale[:, None] * centre)
  return matrix.at[:, 3, 3].set(1)


def get_perspective_transform3d(src, dst):
  """The 3-D homography that maps K >= 5 source points to destinations.

  ``H`` with ``dst_k ~ H @ (src_k, 1)`` (equal after dividing by the fourth
  coordinate) and ``H[3, 3] = 1``: the 15 other entries solve the linear
  (DLT) equations of all K points in the least-squares sense (by QR, after
  moving each point set to zero mean and RMS distance ``sqrt(3)``). Points
  that a homography maps exactly (e.g. the 8 corners of a box and their
  images) give that homography. kornia's ``get_perspective_transform3d``
  takes 8 points and solves with 5 of them (0, 1, 2, 5 and 7); on exact
  correspondences the two agree.

  Args:
    src: ``(N, K, 3)`` or ``(K, 3)`` float array of ``(x, y, z)``, K >= 5,
      no 4 of any 5 coplanar (else the system is singular).
    dst: the same shape: where each source point goes.

  Returns:
    ``(N, 4, 4)`` (or ``(4, 4)``) homography, source -> destination (the
    argument of :func:`warp_perspective3d`). Degenerate points give
    non-finite or meaningless entries (not checked: that needs the values).
  """
  src, batched = v.check_float_array("src", src, (None, 3), "(N, K, 3)")
  dst, dst_batched = v.check_float_array("dst", dst, (None, 3), "(N, K, 3)")
  v.check_same_batching(
    ("src", "dst"), (batched, dst_batched), (src.shape, dst.shape)
  )
  if src.shape != dst.shape or src.shape[1] < 5:
    raise ValueError(
      "src and dst must have the same shape (N, K, 3) with K >= 5 points; "
      f"got src shape {tuple(np.shape(src))} and dst shape "
      f"{tuple(np.shape(dst))}."
    )
  dtype = v.compute_dtype(src.dtype, dst.dtype)
  src, dst = src.astype(dtype), dst.astype(dtype)
  to_src, to_dst = _normalizing_matrix(src), _normalizing_matrix(dst)
  s = src * to_src[:, 0, 0, None, None] + to_src[:, None, :3, 3]
  d = dst * to_dst[:, 0, 0, None, None] + to_dst[:, None, :3, 3]
  one, zero = jnp.ones_like(s[..., :1]), jnp.zeros_like(s[..., :1])
  homogeneous = jnp.concatenate([s, one], -1)  # (N, K, 4)
  blank = jnp.concatenate([zero] * 4, -1)
  rows = []
  for axis in range(3):
    blocks = [blank] * 3
    blocks[axis] = homogeneous
    # d_axis (h41 x + h42 y + h43 z + 1) = (row axis of H) . (x, y, z, 1)
    rows.append(jnp.concatenate([*blocks, -d[..., axis : axis + 1] * s], -1))
  system = jnp.concatenate(rows, 1)  # (N, 3 K, 15)
  rhs = jnp.concatenate([d[..., 0], d[..., 1], d[..., 2]], 1)  # (N, 3 K)
  q, r = jnp.linalg.qr(system)
  h = jax.scipy.linalg.solve_triangular(
    r, jnp.einsum("nki,nk->ni", q, rhs, precision=_HIGHEST)[..., None]
  )[..., 0]
  normalized = jnp.concatenate([h, jnp.ones_like(h[:, :1])], 1).reshape(
    -1, 4, 4
  )
  homography = jnp.einsum(
    "nij,njk,nkl->nil",
    jnp.linalg.inv(to_dst),
    normalized,
    to_src,
    precision=_HIGHEST,
  )
  homography = homography / homography[:, 3:, 3:]
  return homography if batched else homography[0]


for _function in (warp_affine3d, warp_perspective3d):
  _function.__doc__ = _function.__doc__.replace(
    "{sampling_args}", _SAMPLING_ARGS
  )
del _function
