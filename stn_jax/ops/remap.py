"""Sampling at per-pixel maps given in pixel coordinates (``cv2.remap``).

Pixel convention: that of :mod:`stn_jax.ops.geometry` (OpenCV's): pixel
``image[i, j]`` has centre ``(x, y) = (j, i)``. The helper
:func:`sample_pixels` is the one place where the pixel-space functions of
:mod:`stn_jax.ops.crops` and this module turn pixel points into the
normalised grid of :func:`stn_jax.ops.grid_sample`.

Reflection padding comes in two kinds, which differ by half a pixel:

* ``'reflection'`` mirrors about the image EDGES (``x = -0.5`` and ``W -
  0.5``): ``cba|abcd|dcb``, OpenCV's ``BORDER_REFLECT``; PyTorch's
  ``grid_sample(padding_mode='reflection', align_corners=False)``. This is
  what :func:`stn_jax.ops.warp_affine` and :func:`stn_jax.ops.warp_perspective`
  do.
* ``'reflection_101'`` mirrors about the corner pixel CENTRES (``x = 0`` and
  ``W - 1``): ``dcb|abcd|cba``, OpenCV's ``BORDER_REFLECT_101``; PyTorch's
  ``grid_sample(padding_mode='reflection', align_corners=True)``, hence
  kornia's ``remap``/``warp_affine``/``crop_by_boxes`` with
  ``align_corners=True`` (kornia's default for most of its warps). The sample
  point is mirrored, then interpolated: for bilinear and nearest this equals
  ``BORDER_REFLECT_101``; bicubic clamps its outer taps as PyTorch does, so
  it differs from OpenCV's bicubic within 2 pixels of the edges.
"""

from __future__ import annotations

import jax.numpy as jnp

from stn_jax.ops import _validation as v
from stn_jax.ops import sampling

__all__ = ["PIXEL_PADDING_MODES", "remap"]

PIXEL_PADDING_MODES = sampling.ALL_PADDING_MODES + ("reflection_101",)

SAMPLING_ARGS = """\
    mode: ``'bilinear'`` (``cv2.INTER_LINEAR``), ``'nearest'`` (rounds half
      to even; ``cv2.INTER_NEAREST`` rounds half up) or ``'bicubic'``
      (``cv2.INTER_CUBIC``: the same kernel, A = -0.75).
    padding_mode: ``'zeros'``, ``'fill'`` (``fill_value``; OpenCV's
      ``BORDER_CONSTANT``), ``'border'`` (``BORDER_REPLICATE``),
      ``'reflection'`` (about the image edges, ``BORDER_REFLECT``) or
      ``'reflection_101'`` (about the corner pixel centres,
      ``BORDER_REFLECT_101``, as kornia with ``align_corners=True``; see
      :mod:`stn_jax.ops.remap`).
    fill_value: the value outside the image with ``padding_mode='fill'``: a
      number or an array of shape ``()`` or ``(C,)``."""


def _axis(points, size, align_corners):
  """Pixel coordinates along one axis -> normalised (grids.py convention)."""
  if align_corners:
    return points if size == 1 else points * (2.0 / (size - 1)) - 1.0
  return (2.0 * points + 1.0) / size - 1.0


def sample_pixels(image, points, mode, padding_mode, fill_value):
  """Samples ``image`` at pixel points; the shared core of the pixel ops.

  Args:
    image: ``(N, H, W, C)`` float array (checked by the caller).
    points: ``(N, h, w, 2)`` float array of pixel ``(x, y)``.
    mode, padding_mode, fill_value: as in :func:`remap`.

  Returns:
    ``(N, h, w, C)`` array of ``image.dtype``.
  """
  v.check_choice("padding_mode", padding_mode, PIXEL_PADDING_MODES)
  height, width = image.shape[1:3]
  centres = padding_mode == "reflection_101"
  grid = jnp.stack(
    [
      _axis(points[..., 0], width, centres),
      _axis(points[..., 1], height, centres),
    ],
    -1,
  )
  return sampling.grid_sample(
    image,
    grid,
    mode=mode,
    padding_mode="reflection" if centres else padding_mode,
    align_corners=centres,
    fill_value=fill_value,
  )


def remap(
  image,
  map_x,
  map_y,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  fill_value=0.0,
):
  """Samples images at per-pixel maps of pixel coordinates.

    Like ``cv2.remap(image, map_x, map_y, interpolation, borderMode)``:
    output pixel ``(i, j)`` reads the image at pixel ``(x, y) = (map_x[i,
    j], map_y[i, j])``, pixel centres at integers (OpenCV's convention,
    :mod:`stn_jax.ops.geometry`). OpenCV quantises the point to 1/32 pixel;
    this does not. kornia's ``remap(image, map_x, map_y,
    align_corners=True)`` samples the same points (with ``align_corners=False``
    kornia scales them by ``W / (W - 1)`` about the image centre); its
    ``'reflection'`` padding is ``'reflection_101'`` here.

    Args:
      image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
      map_x: ``(N, h, w)`` (or ``(h, w)``, batched like ``image``) float
        array of ``x`` (along the width).
      map_y: the same shape: ``y`` (along the height).
  {sampling_args}

    Returns:
      ``(N, h, w, C)`` (or unbatched) array of ``image.dtype``. Gradients
      flow to ``image``, the maps and ``fill_value``; non-finite map points
      read 0.
  """
  image, image_batched = v.check_float_array(
    "image", image, (None, None, None), "(N, H, W, C)"
  )
  map_x, x_batched = v.check_float_array(
    "map_x", map_x, (None, None), "(N, h, w)"
  )
  map_y, y_batched = v.check_float_array(
    "map_y", map_y, (None, None), "(N, h, w)"
  )
  v.check_same_batching(
    ("image", "map_x"), (image_batched, x_batched), (image.shape, map_x.shape)
  )
  if x_batched != y_batched or map_x.shape != map_y.shape:
    raise ValueError(
      "map_y must have the shape of map_x; got map_x shape "
      f"{tuple(map_x.shape[x_batched ^ 1 :])} and map_y shape "
      f"{tuple(map_y.shape[y_batched ^ 1 :])}."
    )
  v.check_not_empty("image", image, "(N, H, W, C)")
  v.check_not_empty("map_x", map_x, "(N, h, w)")
  dtype = v.compute_dtype(map_x.dtype, map_y.dtype)
  points = jnp.stack([map_x.astype(dtype), map_y.astype(dtype)], -1)
  out = sample_pixels(image, points, mode, padding_mode, fill_value)
  return out if image_batched else out[0]


remap.__doc__ = remap.__doc__.replace("{sampling_args}", SAMPLING_ARGS)
