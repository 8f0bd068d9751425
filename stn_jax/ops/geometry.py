"""Pixel-coordinate geometry: matrix conversions, image warps, box crops.

Pixel convention (the same as OpenCV's):

* A point ``(x, y)`` is in pixel units with pixel centres at integers: pixel
  ``image[i, j]`` has centre ``(x, y) = (j, i)``; ``x`` runs right (along the
  width) and ``y`` down (along the height). The image covers
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* A pixel matrix maps SOURCE pixels to DESTINATION pixels (forward
  warping, as ``cv2.warpAffine``/``cv2.warpPerspective`` take it): a ``(2,
  3)`` affine ``M`` sends ``(x, y)`` to ``M @ (x, y, 1)``; a ``(3, 3)``
  homography ``H`` sends it to ``(u / w, v / w)`` with ``(u, v, w) = H @ (x,
  y, 1)``.
* The normalised ``theta``/homography of :func:`affine_grid` and
  :func:`projective_grid` go the other way (output -> input) in ``[-1, 1]``
  coordinates. The conversions here invert the pixel matrix and conjugate it
  with the pixel -> normalised maps of the two image sizes:
  ``theta = N_in @ inv(M) @ inv(N_out)``, where for ``align_corners=False``
  ``N`` sends pixel ``i`` of ``S`` to ``(2 i + 1) / S - 1`` and for
  ``align_corners=True`` to ``2 i / (S - 1) - 1`` (to 0 when ``S == 1``).

Sizes are ``(height, width)``, as ``out_shape`` elsewhere in stn_jax (note
that OpenCV's ``dsize`` is ``(width, height)``). Every function takes a
batch or a single example (no batch axis) and works under ``jax.jit``,
``jax.vmap`` and ``jax.grad``.

The module is longer than most (about 500 lines) because it is one idea:
the warps and crops are thin users of the pixel <-> normalised
conversions above, and each public function's docstring restates the
convention it takes (the OpenCV equivalent, and the shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v
from stn_jax.ops import grids, sampling

__all__ = [
  "invert_affine",
  "pixel_to_theta",
  "theta_to_pixel",
  "pixel_to_normalized_homography",
  "normalized_to_pixel_homography",
  "normalize_points",
  "denormalize_points",
  "warp_affine",
  "warp_perspective",
  "crop_and_resize",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _axis_normalization(size: int, align_corners: bool) -> tuple[float, float]:
  """(scale, offset) of the pixel -> normalised map along one axis."""
  if align_corners:
    # One pixel: its centre is 0 (as base_coordinates); any scale is exact.
    return (1.0, 0.0) if size == 1 else (2.0 / (size - 1), -1.0)
  return 2.0 / size, 1.0 / size - 1.0


def _normalization(size, align_corners) -> np.ndarray:
  """(3, 3) float64 matrix: homogeneous pixel (x, y, 1) -> normalised."""
  height, width = size
  sx, ox = _axis_normalization(width, align_corners)
  sy, oy = _axis_normalization(height, align_corners)
  return np.array([[sx, 0, ox], [0, sy, oy], [0, 0, 1]], np.float64)


def _homogeneous(matrix):
  """(N, 2, 3) -> (N, 3, 3) with last row (0, 0, 1)."""
  last = jnp.zeros_like(matrix[:, :1]).at[:, :, 2].set(1)
  return jnp.concatenate([matrix, last], axis=1)


def _invert_affine(matrix):
  """(N, 2, 3) -> (N, 2, 3) inverse, by the closed-form 2 x 2 inverse."""
  a, b, tx = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
  c, d, ty = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
  det = a * d - b * c
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  row0 = jnp.stack([ia, ib, -(ia * tx + ib * ty)], -1)
  row1 = jnp.stack([ic, id_, -(ic * tx + id_ * ty)], -1)
  return jnp.stack([row0, row1], axis=1)


def _conjugate(matrix, left, right):
  """left @ matrix @ right for (N, 3, 3) matrix and NumPy (3, 3) sides."""
  return jnp.einsum(
    "ij,njk,kl->nil",
    jnp.asarray(left, matrix.dtype),
    matrix,
    jnp.asarray(right, matrix.dtype),
    precision=_HIGHEST,
  )


def _pixel_to_theta(matrix, in_size, out_size, align_corners):
  inverse = _homogeneous(_invert_affine(matrix))  # dst pixel -> src pixel
  return _conjugate(
    inverse,
    _normalization(in_size, align_corners),
    np.linalg.inv(_normalization(out_size, align_corners)),
  )[:, :2]


def _pixel_to_normalized_homography(
  homography, in_size, out_size, align_corners
):
  inverse = jnp.linalg.inv(homography)  # dst pixel -> src pixel
  return _conjugate(
    inverse,
    _normalization(in_size, align_corners),
    np.linalg.inv(_normalization(out_size, align_corners)),
  )


def _restore(array, batched):
  return array if batched else array[0]


def _check_matrix(name, value, shape):
  """A (N, 2, 3) or (N, 3, 3) float matrix, with a hint for the other."""
  rows = shape[0]
  tail = tuple(np.shape(value)[-2:])
  if np.ndim(value) in (2, 3) and tail in ((2, 3), (3, 3)) and tail != shape:
    other = "warp_perspective" if rows == 2 else "warp_affine"
    raise ValueError(
      f"{name} must have shape (N, {rows}, 3) (or the same "
      "without the batch axis); got shape "
      f"{tuple(np.shape(value))} (a "
      f"{'3 x 3 homography' if rows == 2 else '2 x 3 affine'}"
      f": use {other})."
    )
  return v.check_float_array(name, value, shape, f"(N, {rows}, 3)")


def invert_affine(matrix):
  """Inverse of 2-D affine matrices.

  Args:
    matrix: ``(N, 2, 3)`` or ``(2, 3)`` float array ``[A | t]`` mapping
      ``(x, y)`` to ``A @ (x, y) + t``.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) ``[inv(A) | -inv(A) @ t]``, computed in
    closed form. A singular ``A`` gives ``inf``/``nan`` entries (no error is
    raised, so that it works under ``jax.jit``).
  """
  matrix, batched = v.check_float_array("matrix", matrix, (2, 3), "(N, 2, 3)")
  dtype = v.compute_dtype(matrix.dtype)
  out = _invert_affine(matrix.astype(dtype)).astype(matrix.dtype)
  return _restore(out, batched)


def _sizes(in_size, out_size, align_corners):
  return (
    v.check_out_shape("in_size", in_size),
    v.check_out_shape("out_size", out_size),
    v.check_bool("align_corners", align_corners),
  )


def pixel_to_theta(matrix, in_size, out_size, *, align_corners: bool = False):
  """Pixel affine matrix (source -> destination) to :func:`affine_grid` theta.

  ``grid_sample(image, affine_grid(theta, out_size, align_corners=ac),
  align_corners=ac)`` then warps like ``cv2.warpAffine(image, matrix,
  dsize=(out_width, out_height))``.

  Args:
    matrix: ``(N, 2, 3)`` or ``(2, 3)`` float array in pixel coordinates
      (module docstring), mapping source pixels to destination pixels.
    in_size: ``(height, width)`` of the source image.
    out_size: ``(height, width)`` of the destination (the grid).
    align_corners: the normalisation the theta is for.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) theta ``N_in @ inv(matrix) @ inv(N_out)``,
    mapping normalised output points to normalised input points.
  """
  matrix, batched = v.check_float_array("matrix", matrix, (2, 3), "(N, 2, 3)")
  in_size, out_size, align_corners = _sizes(in_size, out_size, align_corners)
  dtype = v.compute_dtype(matrix.dtype)
  theta = _pixel_to_theta(
    matrix.astype(dtype), in_size, out_size, align_corners
  )
  return _restore(theta.astype(matrix.dtype), batched)


def theta_to_pixel(theta, in_size, out_size, *, align_corners: bool = False):
  """:func:`affine_grid` theta to a pixel affine matrix (source -> dest).

  The inverse of :func:`pixel_to_theta` (same arguments).

  Args:
    theta: ``(N, 2, 3)`` or ``(2, 3)`` float array, normalised output ->
      input.
    in_size: ``(height, width)`` of the image the grid samples.
    out_size: ``(height, width)`` of the grid.
    align_corners: the normalisation ``theta`` is in.

  Returns:
    ``(N, 2, 3)`` (or ``(2, 3)``) pixel matrix
    ``inv(inv(N_in) @ theta @ N_out)``, source pixel -> destination pixel.
  """
  theta, batched = v.check_float_array("theta", theta, (2, 3), "(N, 2, 3)")
  in_size, out_size, align_corners = _sizes(in_size, out_size, align_corners)
  dtype = v.compute_dtype(theta.dtype)
  backward = _conjugate(
    _homogeneous(theta.astype(dtype)),
    np.linalg.inv(_normalization(in_size, align_corners)),
    _normalization(out_size, align_corners),
  )[:, :2]
  matrix = _invert_affine(backward)
  return _restore(matrix.astype(theta.dtype), batched)


def pixel_to_normalized_homography(
  homography, in_size, out_size, *, align_corners: bool = False
):
  """Pixel homography (source -> destination) to a :func:`projective_grid` one.

  Args:
    homography: ``(N, 3, 3)`` or ``(3, 3)`` float array, source pixel ->
      destination pixel (as ``cv2.warpPerspective`` takes it).
    in_size: ``(height, width)`` of the source image.
    out_size: ``(height, width)`` of the destination (the grid).
    align_corners: the normalisation the result is for.

  Returns:
    ``(N, 3, 3)`` (or ``(3, 3)``) ``N_in @ inv(homography) @ inv(N_out)``,
    normalised output -> input. Not rescaled (a homography is defined up to
    scale). A singular homography gives ``inf``/``nan`` entries.
  """
  homography, batched = v.check_float_array(
    "homography", homography, (3, 3), "(N, 3, 3)"
  )
  in_size, out_size, align_corners = _sizes(in_size, out_size, align_corners)
  dtype = v.compute_dtype(homography.dtype)
  out = _pixel_to_normalized_homography(
    homography.astype(dtype), in_size, out_size, align_corners
  )
  return _restore(out.astype(homography.dtype), batched)


def normalized_to_pixel_homography(
  homography, in_size, out_size, *, align_corners: bool = False
):
  """A :func:`projective_grid` homography to a pixel one (source -> dest).

  The inverse of :func:`pixel_to_normalized_homography` (same arguments).

  Returns:
    ``(N, 3, 3)`` (or ``(3, 3)``) ``inv(inv(N_in) @ homography @ N_out)``,
    source pixel -> destination pixel, not rescaled.
  """
  homography, batched = v.check_float_array(
    "homography", homography, (3, 3), "(N, 3, 3)"
  )
  in_size, out_size, align_corners = _sizes(in_size, out_size, align_corners)
  dtype = v.compute_dtype(homography.dtype)
  backward = _conjugate(
    homography.astype(dtype),
    np.linalg.inv(_normalization(in_size, align_corners)),
    _normalization(out_size, align_corners),
  )
  out = jnp.linalg.inv(backward)
  return _restore(out.astype(homography.dtype), batched)


def _check_any_points(name, points):
  points = v.as_float_array(name, points)
  if points.ndim < 1 or points.shape[-1] != 2:
    raise ValueError(
      f"{name} must have shape (..., 2) of (x, y) points; got "
      f"shape {tuple(points.shape)}."
    )
  return jnp.asarray(points)


def _map_points(points, matrix):
  """Applies the affine part of a NumPy (3, 3) matrix to (..., 2) points."""
  dtype = v.compute_dtype(points.dtype)
  p = points.astype(dtype)
  scale = jnp.asarray(np.diag(matrix)[:2], dtype)
  offset = jnp.asarray(matrix[:2, 2], dtype)
  return (p * scale + offset).astype(points.dtype)


def normalize_points(points, size, *, align_corners: bool = False):
  """Pixel ``(x, y)`` points to normalised ``[-1, 1]`` coordinates.

  Args:
    points: ``(..., 2)`` float array of pixel ``(x, y)`` (centres at
      integers).
    size: ``(height, width)`` of the image the points are in.
    align_corners: the normalisation (see :mod:`stn_jax.ops.grids`).

  Returns:
    ``(..., 2)`` array: ``x -> (2 x + 1) / W - 1`` (``align_corners=False``)
    or ``x -> 2 x / (W - 1) - 1`` (True), likewise ``y`` with ``H``.
  """
  points = _check_any_points("points", points)
  size = v.check_out_shape("size", size)
  align_corners = v.check_bool("align_corners", align_corners)
  return _map_points(points, _normalization(size, align_corners))


def denormalize_points(points, size, *, align_corners: bool = False):
  """Normalised ``[-1, 1]`` points to pixel ``(x, y)``; inverse of
  :func:`normalize_points` (same arguments and shapes)."""
  points = _check_any_points("points", points)
  size = v.check_out_shape("size", size)
  align_corners = v.check_bool("align_corners", align_corners)
  return _map_points(points, np.linalg.inv(_normalization(size, align_corners)))


def _check_image_and(image, name, value, trailing, description):
  image, image_batched = v.check_float_array(
    "image", image, (None, None, None), "(N, H, W, C)"
  )
  if name in ("matrix", "homography"):
    value, value_batched = _check_matrix(name, value, trailing)
  else:
    value, value_batched = v.check_float_array(
      name, value, trailing, description
    )
  v.check_same_batching(
    ("image", name), (image_batched, value_batched), (image.shape, value.shape)
  )
  if 0 in image.shape:
    raise ValueError(
      f"image must not be empty; got shape {tuple(image.shape)}."
    )
  return image, value, image_batched


def _sample(image, grid, mode, padding_mode, fill_value):
  return sampling.grid_sample(
    image,
    grid,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=False,
    fill_value=fill_value,
  )


_SAMPLING_ARGS = """\
    mode: ``'bilinear'`` (``cv2.INTER_LINEAR``), ``'nearest'`` (rounds half
      to even, ``cv2.INTER_NEAREST`` rounds half up) or ``'bicubic'``
      (``cv2.INTER_CUBIC``: the same kernel, A = -0.75).
    padding_mode: ``'zeros'``, ``'fill'`` (``fill_value``; OpenCV's
      ``BORDER_CONSTANT``), ``'border'`` (``BORDER_REPLICATE``) or
      ``'reflection'`` (mirrored about the image edges, ``fedcba|abcdef``:
      ``BORDER_REFLECT``).
    fill_value: the value outside the image with ``padding_mode='fill'``: a
      number or an array of shape ``()`` or ``(C,)``."""


def warp_affine(
  image,
  matrix,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
):
  """Warps images by pixel affine matrices (source -> destination).

    Like ``cv2.warpAffine(image, matrix, dsize=(out_width, out_height))``:
    destination pixel ``(x, y)`` reads the source at ``inv(matrix) @ (x, y,
    1)``, both in pixel coordinates with pixel centres at integers (module
    docstring). OpenCV quantises that point to 1/32 pixel; this does not.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      matrix: ``(N, 2, 3)`` or ``(2, 3)`` float array, batched like ``image``.
      out_size: ``(height, width)`` of the output. Note the order: OpenCV's
        ``dsize`` is ``(width, height)``.
  {sampling_args}

    Returns:
      ``(N, height, width, C)`` (or unbatched) array of ``image.dtype``.
      Gradients flow to ``image``, ``matrix`` and ``fill_value``. A singular
      matrix gives an output of zeros (undefined sample points read 0).
  """
  image, matrix, batched = _check_image_and(
    image, "matrix", matrix, (2, 3), "(N, 2, 3)"
  )
  out_size = v.check_out_shape("out_size", out_size)
  dtype = v.compute_dtype(matrix.dtype)
  theta = _pixel_to_theta(
    matrix.astype(dtype), image.shape[1:3], out_size, False
  )
  grid = grids.affine_grid(theta, out_size)
  return _restore(_sample(image, grid, mode, padding_mode, fill_value), batched)


def warp_perspective(
  image,
  homography,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
):
  """Warps images by pixel homographies (source -> destination).

    Like ``cv2.warpPerspective(image, homography, dsize=(out_width,
    out_height))``: destination pixel ``(x, y)`` reads the source at
    ``(u / w, v / w)``, ``(u, v, w) = inv(homography) @ (x, y, 1)``, in pixel
    coordinates (module docstring). OpenCV quantises that point to 1/32 pixel;
    this does not. Points with ``w == 0`` read 0.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      homography: ``(N, 3, 3)`` or ``(3, 3)`` float array, batched like
        ``image``; any scale.
      out_size: ``(height, width)`` of the output (OpenCV's ``dsize`` is
        ``(width, height)``).
  {sampling_args}

    Returns:
      ``(N, height, width, C)`` (or unbatched) array of ``image.dtype``.
      Gradients flow to ``image``, ``homography`` and ``fill_value``.
  """
  image, homography, batched = _check_image_and(
    image, "homography", homography, (3, 3), "(N, 3, 3)"
  )
  out_size = v.check_out_shape("out_size", out_size)
  dtype = v.compute_dtype(homography.dtype)
  normalized = _pixel_to_normalized_homography(
    homography.astype(dtype), image.shape[1:3], out_size, False
  )
  grid = grids.projective_grid(normalized, out_size)
  return _restore(_sample(image, grid, mode, padding_mode, fill_value), batched)


def _box_positions(low, high, count, align_corners):
  """(N, K) box edges -> (N, K, count) sample positions in pixels."""
  if align_corners:
    steps = np.full(1, 0.5) if count == 1 else np.arange(count) / (count - 1)
  else:
    steps = (np.arange(count) + 0.5) / count
  steps = jnp.asarray(steps, low.dtype)
  return low[..., None] + (high - low)[..., None] * steps


def crop_and_resize(
  image,
  boxes,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
  align_corners: bool = False,
):
  """Crops boxes from images and resamples each to ``out_size``.

    A box ``(x1, y1, x2, y2)`` is in continuous pixel coordinates (pixel
    centres at integers, module docstring), so ``(-0.5, -0.5, W - 0.5, H -
    0.5)`` is the whole image. Glimpse pixel ``(i, j)`` of an ``h x w`` output
    reads the image at

    * ``align_corners=False`` (default): the centre of cell ``(i, j)`` of an
      ``h x w`` subdivision of the box: ``x = x1 + (j + 0.5) (x2 - x1) / w``,
      ``y = y1 + (i + 0.5) (y2 - y1) / h``. The whole-image box with ``out_size
      = (H, W)`` reproduces the image. This equals torchvision's
      ``roi_align(..., aligned=True, sampling_ratio=1)`` of the box shifted by
      ``+0.5`` (its pixel centres are at ``i + 0.5``) wherever the samples lie
      in ``[0, W - 1] x [0, H - 1]``; outside that, roi_align clamps or reads
      0 instead of padding.
    * ``align_corners=True``: the corner samples lie on the box corners:
      ``x = x1 + j (x2 - x1) / (w - 1)`` (the box centre when ``w == 1``). This
      equals ``tf.image.crop_and_resize`` (bilinear) with the normalised box
      ``(y1 / (H - 1), x1 / (W - 1), y2 / (H - 1), x2 / (W - 1))`` (TF's
      order is ``(y, x)``) wherever the samples lie in ``[0, W - 1] x [0, H -
      1]``; TF reads ``extrapolation_value`` at any sample outside that, where
      this blends with the padding.

    A box with ``x2 < x1`` (or ``y2 < y1``) gives a mirrored glimpse; parts of a
    box outside the image (or a box wholly outside) read the padding.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      boxes: ``(N, K, 4)`` or ``(K, 4)`` float array of ``(x1, y1, x2, y2)``,
        K boxes per image, batched like ``image``.
      out_size: ``(h, w)`` of each glimpse.
  {sampling_args}
      align_corners: where the samples sit in the box (above).

    Returns:
      ``(N, K, h, w, C)`` (or ``(K, h, w, C)``) glimpses of ``image.dtype``;
      gradients flow to ``image``, ``boxes`` and ``fill_value``.
  """
  image, boxes, batched = _check_image_and(
    image, "boxes", boxes, (None, 4), "(N, K, 4)"
  )
  out_size = v.check_out_shape("out_size", out_size)
  align_corners = v.check_bool("align_corners", align_corners)
  n, height, width, channels = image.shape
  num_boxes = boxes.shape[1]
  out_height, out_width = out_size
  dtype = v.compute_dtype(boxes.dtype)
  b = boxes.astype(dtype)
  xs = _box_positions(b[..., 0], b[..., 2], out_width, align_corners)
  ys = _box_positions(b[..., 1], b[..., 3], out_height, align_corners)
  xs = (2 * xs + 1) / width - 1  # pixel -> normalised, align_corners=False
  ys = (2 * ys + 1) / height - 1
  grid = jnp.stack(
    jnp.broadcast_arrays(xs[:, :, None, :], ys[..., None]), -1
  )  # (N, K, h, w, 2)
  grid = grid.reshape(n, num_boxes * out_height, out_width, 2)
  out = _sample(image, grid, mode, padding_mode, fill_value)
  out = out.reshape(n, num_boxes, out_height, out_width, channels)
  return _restore(out, batched)


for _function in (warp_affine, warp_perspective, crop_and_resize):
  _function.__doc__ = _function.__doc__.replace(
    "{sampling_args}", _SAMPLING_ARGS
  )
del _function
