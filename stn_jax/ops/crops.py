"""Crops: by quadrilaterals, by a transform, by indices, and the centre.

Pixel convention: that of :mod:`stn_jax.ops.geometry` (OpenCV's): pixel
``image[i, j]`` has centre ``(x, y) = (j, i)`` and the image covers ``[-0.5,
W - 0.5] x [-0.5, H - 0.5]``. Sizes are ``(height, width)``. Every function
takes a batch or a single example and works under ``jax.jit``, ``jax.vmap``
and ``jax.grad``. Axis-aligned boxes ``(x1, y1, x2, y2)`` are
:func:`stn_jax.ops.crop_and_resize`; a box given as 4 corners is a
quadrilateral here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import _validation as v
from stn_jax.ops import fitting
from stn_jax.ops.remap import SAMPLING_ARGS, sample_pixels

__all__ = [
  "crop_by_boxes",
  "crop_by_transform_mat",
  "center_crop",
  "crop_by_indices",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def _pixel_centres(out_size, dtype):
  """(h, w, 3) NumPy-built homogeneous pixel centres (x, y, 1)."""
  height, width = out_size
  x, y = np.meshgrid(np.arange(width), np.arange(height))
  return jnp.asarray(np.stack([x, y, np.ones_like(x)], -1), dtype)


def _project(backward, out_size):
  """(N, 3, 3) destination -> source homographies to (N, h, w, 2) points."""
  uvw = jnp.einsum(
    "hwk,nik->nhwi",
    _pixel_centres(out_size, backward.dtype),
    backward,
    precision=_HIGHEST,
  )
  # w == 0 (a point at infinity) gives inf/nan, which reads 0.
  return uvw[..., :2] / uvw[..., 2:]


def _check_image(image):
  image, batched = v.check_float_array(
    "image", image, (None, None, None), "(N, H, W, C)"
  )
  v.check_not_empty("image", image, "(N, H, W, C)")
  return image, batched


def crop_by_transform_mat(
  image,
  matrix,
  out_size,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
):
  """Crops by a pixel transform from the image to the crop.

    Crop pixel ``(x, y)`` reads the image at ``inv(matrix)`` applied to ``(x,
    y)`` (pixel coordinates, module docstring); with a ``(3, 3)`` matrix
    this is :func:`stn_jax.ops.warp_perspective`, with a ``(2, 3)`` one
    :func:`stn_jax.ops.warp_affine`, plus ``padding_mode='reflection_101'``.
    kornia's ``crop_by_transform_mat`` keeps only the first two rows of a
    ``(3, 3)`` matrix (an affine warp); this applies the whole homography.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      matrix: ``(N, 3, 3)`` or ``(N, 2, 3)`` (or unbatched) float array,
        image pixel -> crop pixel, batched like ``image``.
      out_size: ``(height, width)`` of the crop.
  {sampling_args}

    Returns:
      ``(N, height, width, C)`` (or unbatched) array of ``image.dtype``;
      gradients flow to ``image``, ``matrix`` and ``fill_value``. A singular
      matrix reads 0 everywhere.
  """
  image, image_batched = _check_image(image)
  rows = np.shape(matrix)[-2] if np.ndim(matrix) >= 2 else None
  if rows not in (2, 3):
    raise ValueError(
      "matrix must have shape (N, 3, 3) or (N, 2, 3) (or the same without "
      f"the batch axis); got shape {tuple(np.shape(matrix))}."
    )
  matrix, batched = v.check_float_array(
    "matrix", matrix, (rows, 3), f"(N, {rows}, 3)"
  )
  v.check_same_batching(
    ("image", "matrix"), (image_batched, batched), (image.shape, matrix.shape)
  )
  out_size = v.check_out_shape("out_size", out_size)
  matrix = matrix.astype(v.compute_dtype(matrix.dtype))
  if rows == 2:
    last = jnp.zeros_like(matrix[:, :1]).at[:, :, 2].set(1)
    matrix = jnp.concatenate([matrix, last], axis=1)
  points = _project(jnp.linalg.inv(matrix), out_size)
  out = sample_pixels(image, points, mode, padding_mode, fill_value)
  return out if image_batched else out[0]


def _output_corners(out_size, align_corners):
  """(4, 2) NumPy corners of the crop, clockwise from the top-left."""
  height, width = out_size
  if align_corners:
    low, right, bottom = 0.0, width - 1.0, height - 1.0
  else:
    low, right, bottom = -0.5, width - 0.5, height - 0.5
  return np.array([[low, low], [right, low], [right, bottom], [low, bottom]])


def _check_quads(boxes):
  """Raises if a concrete quadrilateral has three collinear corners."""
  values = v.concrete_value(boxes)
  if values is None:
    return
  quads = values.astype(np.float64).reshape(-1, 4, 2)
  if not np.isfinite(quads).all():
    raise ValueError("boxes must be finite; got nan/inf corners.")
  centred = quads - quads.mean(1, keepdims=True)
  spread2 = (centred**2).sum(-1).mean(-1)  # squared RMS spread
  for leave_out in range(4):
    a, b, c = (quads[:, k] for k in range(4) if k != leave_out)
    area2 = np.abs(
      (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
      - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    )
    bad = np.flatnonzero(area2 <= v.DEGENERATE_RTOL * spread2)
    if bad.size:
      index = np.unravel_index(bad[0], boxes.shape[:-2])
      raise ValueError(
        f"boxes[{', '.join(map(str, index))}] is a collapsed quadrilateral: "
        f"3 of its corners lie on one line (the corners other than corner "
        f"{leave_out}), so no perspective transform maps it to a "
        f"rectangle; got {quads[bad[0]].tolist()}."
      )


def crop_by_boxes(
  image,
  boxes,
  out_size,
  *,
  align_corners: bool = False,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
):
  """Crops quadrilaterals from images, each rectified to ``out_size``.

    Each box is 4 corners ``(x, y)`` in pixel coordinates (module docstring)
    in the order top-left, top-right, bottom-right, bottom-left of the crop.
    The perspective transform that sends them to the crop's corners (below)
    is fitted with :func:`stn_jax.ops.get_perspective_transform`, and crop
    pixel ``(x, y)`` reads the image where that transform's inverse sends it.
    The crop's corners are

    * ``align_corners=False`` (default): its outer edges ``(-0.5, -0.5), (w
      - 0.5, -0.5), (w - 0.5, h - 0.5), (-0.5, h - 0.5)``: an axis-aligned
      box with corners ``(x1, y1) ... (x2, y2)`` gives exactly
      :func:`stn_jax.ops.crop_and_resize` of ``(x1, y1, x2, y2)``.
    * ``align_corners=True``: its corner pixel centres ``(0, 0), (w - 1, 0),
      (w - 1, h - 1), (0, h - 1)``, as kornia's ``crop_by_boxes(image,
      boxes, dst_box)`` with that ``dst_box`` (kornia also keeps only the
      affine part of the transform it fits, so it agrees for
      parallelograms only) and :func:`stn_jax.ops.crop_and_resize` with
      ``align_corners=True``. Needs ``h, w >= 2``.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      boxes: ``(N, K, 4, 2)`` or ``(K, 4, 2)`` float array: K quadrilaterals
        per image, batched like ``image`` (kornia's ``(B, 4, 2)`` is
        ``boxes[:, None]``).
      out_size: ``(h, w)`` of each crop.
      align_corners: where the box corners land (above).
  {sampling_args}

    Returns:
      ``(N, K, h, w, C)`` (or ``(K, h, w, C)``) crops of ``image.dtype``;
      gradients flow to ``image``, ``boxes`` and ``fill_value``.

    Raises:
      ValueError: for wrong shapes, and when ``boxes`` is concrete (not
        traced) and a box has three collinear corners (it collapses to a
        line or a triangle). Traced degenerate boxes give crops of
        ``nan``/0.
  """
  image, batched = _check_image(image)
  boxes, boxes_batched = v.check_float_array(
    "boxes", boxes, (None, 4, 2), "(N, K, 4, 2)"
  )
  v.check_same_batching(
    ("image", "boxes"), (batched, boxes_batched), (image.shape, boxes.shape)
  )
  v.check_not_empty("boxes", boxes, "(N, K, 4, 2)")
  out_size = v.check_out_shape("out_size", out_size)
  align_corners = v.check_bool("align_corners", align_corners)
  if align_corners and min(out_size) < 2:
    raise ValueError(
      "out_size must be at least (2, 2) with align_corners=True (the box "
      "corners go to the corner pixel centres, which coincide along an axis "
      f"of size 1); got {out_size}."
    )
  _check_quads(boxes)
  n, k = boxes.shape[:2]
  dtype = v.compute_dtype(boxes.dtype)
  quads = boxes.astype(dtype).reshape(n * k, 4, 2)
  corners = jnp.broadcast_to(
    jnp.asarray(_output_corners(out_size, align_corners), dtype), quads.shape
  )
  backward = fitting.get_perspective_transform(corners, quads)
  points = _project(backward, out_size)  # (N K, h, w, 2)
  points = points.reshape(n, k * out_size[0], out_size[1], 2)
  out = sample_pixels(image, points, mode, padding_mode, fill_value)
  out = out.reshape(n, k, *out_size, image.shape[-1])
  return out if batched else out[0]


def center_crop(image, out_size):
  """The central ``out_size`` window of images, copied exactly (no resampling).

  The window starts at row ``(H - h) // 2`` and column ``(W - w) // 2``
  (when ``H - h`` is odd it sits half a pixel above the centre): the same
  as kornia's ``center_crop`` (``int(H / 2 - h / 2)``); torchvision's rounds
  ``(H - h) / 2`` half to even instead, one row lower when ``(H - h) / 2``
  is 1.5, 3.5, ...

  Args:
    image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
    out_size: ``(h, w)`` with ``h <= H`` and ``w <= W`` (static).

  Returns:
    ``(N, h, w, C)`` (or unbatched) slice of ``image``.
  """
  image, batched = _check_image(image)
  out_size = v.check_out_shape("out_size", out_size)
  height, width = image.shape[1:3]
  if out_size[0] > height or out_size[1] > width:
    raise ValueError(
      f"out_size must fit in the image, (h, w) <= ({height}, {width}) (use "
      f"crop_and_resize to pad); got {out_size}."
    )
  top, left = (height - out_size[0]) // 2, (width - out_size[1]) // 2
  out = image[:, top : top + out_size[0], left : left + out_size[1]]
  return out if batched else out[0]


def crop_by_indices(image, offsets, size):
  """Windows of ``size`` at integer pixel offsets, copied exactly.

  Window ``n`` is ``image[n, y : y + h, x : x + w]`` with ``(x, y) =
  offsets[n]``. The offsets may be traced (under ``jax.jit``); the size is
  static. kornia's ``crop_by_indices(image, boxes)`` with corner boxes
  ``(B, 4, 2)`` of equal size is ``crop_by_indices(image, boxes[:, 0],
  (y2 - y1 + 1, x2 - x1 + 1))`` (kornia's corners are inclusive pixel
  indices).

  Args:
    image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
    offsets: ``(N, 2)`` or ``(2,)`` integer array of the top-left pixel
      ``(x, y)`` of each window, batched like ``image``.
    size: ``(h, w)``, at most the image size (static).

  Returns:
    ``(N, h, w, C)`` (or unbatched) array; gradients flow to ``image``.

  Raises:
    ValueError: for wrong shapes or dtypes, and when ``offsets`` is concrete
      and a window leaves the image. A traced offset is clamped into range
      (as ``jax.lax.dynamic_slice`` does).
  """
  image, batched = _check_image(image)
  if not hasattr(offsets, "dtype"):
    offsets = np.asarray(offsets)
  if not jnp.issubdtype(offsets.dtype, jnp.integer) or offsets.shape not in (
    (image.shape[0], 2),
    (2,),
  ):
    raise ValueError(
      "offsets must be an integer array of shape (N, 2) (or (2,) without "
      f"the batch axis) with the batch of image {tuple(image.shape)}; got "
      f"shape {tuple(offsets.shape)} of dtype {offsets.dtype}."
    )
  offsets_batched = len(offsets.shape) == 2
  if offsets_batched != batched:
    raise ValueError(
      "image and offsets must both have a batch axis or both lack one; got "
      f"offsets shape {tuple(offsets.shape)}."
    )
  size = v.check_out_shape("size", size)
  height, width = image.shape[1:3]
  if size[0] > height or size[1] > width:
    raise ValueError(
      f"size must fit in the image, (h, w) <= ({height}, {width}); got {size}."
    )
  values = v.concrete_value(offsets)
  if values is not None:
    values = values.reshape(-1, 2)
    low = (values < 0).any(-1)
    high = (values[:, 0] > width - size[1]) | (values[:, 1] > height - size[0])
    bad = np.flatnonzero(low | high)
    if bad.size:
      raise ValueError(
        f"offsets[{bad[0]}] = {values[bad[0]].tolist()} puts the {size} "
        f"window outside the {(height, width)} image: (x, y) must lie in "
        f"[0, {width - size[1]}] x [0, {height - size[0]}]."
      )
  offsets = jnp.asarray(offsets).reshape(-1, 2).astype(jnp.int32)

  def window(one_image, offset):
    start = (offset[1], offset[0], jnp.zeros((), jnp.int32))
    return jax.lax.dynamic_slice(one_image, start, (*size, one_image.shape[-1]))

  out = jax.vmap(window)(image, offsets)
  return out if batched else out[0]


for _function in (crop_by_transform_mat, crop_by_boxes):
  _function.__doc__ = _function.__doc__.replace(
    "{sampling_args}", SAMPLING_ARGS
  )
del _function
