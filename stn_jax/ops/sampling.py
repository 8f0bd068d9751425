"""Differentiable image sampling at the points of a grid.

``grid_sample`` gives the same numbers as ``torch.nn.functional.grid_sample``
(NHWC here, NCHW there) for every mode, padding mode and ``align_corners``,
and its gradients are PyTorch's, including at the borders. It differs where
PyTorch fails: a ``nan`` or ``inf`` grid point is an undefined sample, read
as zero with zero gradient, never an out-of-bounds read.

How it works: every output pixel reads a few input pixels ("taps": 1 for
nearest, 4 for bilinear, 16 for bicubic) with weights that depend on the grid.
The forward pass gathers the taps. The backward pass is a custom VJP: the
image gradient is a weighted scatter-add of the taps, and the grid gradient
is the analytic derivative of the tap weights times the tap values. On the
CPU a fused C++ kernel (``_cpu_kernel.py``) computes the backward pass by the
same rules; XLA ops are used elsewhere.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from stn_jax.ops import _cpu_kernel
from stn_jax.ops import _validation as v

__all__ = ["MODES", "PADDING_MODES", "ALL_PADDING_MODES", "grid_sample"]

MODES = ("bilinear", "nearest", "bicubic")
# The padding modes PyTorch has (and grid_sample matches exactly).
PADDING_MODES = ("zeros", "border", "reflection")
# Every padding mode grid_sample accepts: PyTorch's and a constant fill.
ALL_PADDING_MODES = PADDING_MODES + ("fill",)
_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic convolution constant.


class _Tap(NamedTuple):
  """Where and how strongly every output point reads one input pixel.

  Each field has shape ``(N, P)`` for N images and P output points.
  """

  index: jax.Array  # int32 pixel index y * W + x within the image.
  valid: jax.Array  # bool: the tap reads a real pixel.
  weight: jax.Array  # interpolation weight, zero where not valid.
  d_weight_dx: jax.Array  # d weight / d grid x (normalised units).
  d_weight_dy: jax.Array  # d weight / d grid y.


def _unnormalize(coord, size, align_corners):
  """[-1, 1] -> pixel units; returns (pixel coordinate, d pixel / d coord)."""
  if align_corners:
    return ((coord + 1) / 2) * (size - 1), (size - 1) / 2
  return ((coord + 1) * size - 1) / 2, size / 2


def _clip(coord, size):
  """Clamp to [0, size - 1]; derivative 0 on and beyond the edges (PyTorch)."""
  inside = (coord > 0) & (coord < size - 1)
  return jnp.clip(coord, 0, size - 1), inside.astype(coord.dtype)


def _reflect(coord, twice_low, twice_high):
  """Reflect into [low, high]; returns (coordinate, derivative sign)."""
  if twice_low == twice_high:
    return jnp.zeros_like(coord), jnp.zeros_like(coord)
  low = twice_low / 2
  span = (twice_high - twice_low) / 2
  shifted = coord - low
  sign = jnp.where(shifted < 0, -1.0, 1.0).astype(coord.dtype)
  distance = jnp.abs(shifted)
  extra = jnp.fmod(distance, span)
  even = jnp.fmod(jnp.floor(distance / span), 2) == 0
  reflected = jnp.where(even, extra + low, span - extra + low)
  return reflected, jnp.where(even, sign, -sign)


def _pad(coord, size, padding_mode, align_corners):
  """Apply the padding mode to pixel coordinates; returns (coord, derivative)."""
  if padding_mode == "zeros":
    return coord, jnp.ones_like(coord)
  if padding_mode == "border":
    return _clip(coord, size)
  if align_corners:
    reflected, sign = _reflect(coord, 0, 2 * (size - 1))
  else:
    reflected, sign = _reflect(coord, -1, 2 * size - 1)
  clipped, inside = _clip(reflected, size)
  return clipped, sign * inside


def _cubic_weights(t):
  """Bicubic weights of taps at offsets -1, 0, 1, 2 and their d/dt."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1, (
      3 * (a + 2) * x - 2 * (a + 3)
    ) * x

  def far(x):  # 1 < |x| < 2
    return (
      ((a * x - 5 * a) * x + 8 * a) * x - 4 * a,
      (3 * a * x - 10 * a) * x + 8 * a,
    )

  w0, d0 = far(t + 1)
  w1, d1 = near(t)
  w2, d2 = near(1 - t)
  w3, d3 = far(2 - t)
  return (w0, w1, w2, w3), (d0, d1, -d2, -d3)


def _axis_taps(coord, size, mode, padding_mode, align_corners):
  """Taps along one axis.

  Args:
    coord: normalised coordinates (N, P), finite.

  Returns:
    list of (pixel position int32, in-bounds mask, weight, d weight / d coord)
    per tap along this axis.
  """
  pixel, scale = _unnormalize(coord, size, align_corners)
  # Far-away points are outside either way; bounding them keeps the int32
  # conversion defined without changing any result or gradient. Not with
  # reflection, which mirrors every tap back inside (and bounds it itself).
  if padding_mode == "zeros" or (
    mode == "bicubic" and padding_mode != "reflection"
  ):
    pixel = jnp.clip(pixel, -4.0, size + 3.0)
  if mode == "bicubic":
    # PyTorch pads each integer tap, not the continuous coordinate.
    start = jnp.floor(pixel)
    weights, derivatives = _cubic_weights(pixel - start)
    taps = []
    for offset, w, d in zip((-1, 0, 1, 2), weights, derivatives):
      position, _ = _pad(start + offset, size, padding_mode, align_corners)
      taps.append((position, w, d * scale))
  else:
    pixel, d_pad = _pad(pixel, size, padding_mode, align_corners)
    if mode == "nearest":
      zero = jnp.zeros_like(pixel)
      taps = [(jnp.round(pixel), jnp.ones_like(pixel), zero)]
    else:
      start = jnp.floor(pixel)
      frac = pixel - start
      slope = scale * d_pad
      taps = [(start, 1 - frac, -slope), (start + 1, frac, slope)]
  result = []
  for position, w, d in taps:
    inside = (position >= 0) & (position <= size - 1)
    position = jnp.clip(position, 0, size - 1).astype(jnp.int32)
    result.append((position, inside, w, d))
  return result


def _taps(grid, height, width, mode, padding_mode, align_corners) -> list[_Tap]:
  """The taps of a batch of grids (N, P, 2): 1, 4 or 16 of them."""
  gx, gy = grid[..., 0], grid[..., 1]
  defined = jnp.isfinite(gx) & jnp.isfinite(gy)
  gx = jnp.where(defined, gx, 0)
  gy = jnp.where(defined, gy, 0)
  x_taps = _axis_taps(gx, width, mode, padding_mode, align_corners)
  y_taps = _axis_taps(gy, height, mode, padding_mode, align_corners)
  taps = []
  for y, y_inside, wy, dwy in y_taps:
    for x, x_inside, wx, dwx in x_taps:
      valid = defined & x_inside & y_inside
      taps.append(
        _Tap(
          y * width + x,
          valid,
          jnp.where(valid, wx * wy, 0),
          jnp.where(valid, dwx * wy, 0),
          jnp.where(valid, wx * dwy, 0),
        )
      )
  return taps


def _gather(image, index):
  """image (N, H, W, C), index (N, P) in [0, H * W) -> values (N, P, C)."""
  n, height, width, channels = image.shape
  flat = image.reshape(n * height * width, channels)
  offset = (jnp.arange(n, dtype=jnp.int32) * (height * width))[:, None]
  return flat.at[index + offset].get(mode="promise_in_bounds")


def _tap_values(image, tap):
  # Invalid taps read a clamped real pixel: mask it so an inf/nan there
  # cannot leak into the result through a zero weight.
  return jnp.where(tap.valid[..., None], _gather(image, tap.index), 0)


def _xla_forward(image, grid, mode, padding_mode, align_corners):
  """image (N, H, W, C), grid (N, P, 2) -> (N, P, C), in XLA ops."""
  height, width = image.shape[1:3]
  taps = _taps(grid, height, width, mode, padding_mode, align_corners)
  # A sum of per-tap products, not an einsum/reduction: XLA fuses it into
  # one loop on every backend.
  return sum(tap.weight[..., None] * _tap_values(image, tap) for tap in taps)


def _segment_sum_sorted(index, values, size):
  """``zeros((size, C)).at[index].add(values)`` with a fixed summation
  order: the contributions are sorted by target (a stable sort), summed by
  a segmented scan (a fixed tree of additions), and each target's total is
  written once. No atomic adds, so accelerators give bitwise reproducible
  results."""
  order = jnp.argsort(index, stable=True)
  index, values = index[order], values[order]
  starts = jnp.concatenate([jnp.ones(1, bool), index[1:] != index[:-1]])
  ends = jnp.concatenate([index[1:] != index[:-1], jnp.ones(1, bool)])

  def combine(a, b):
    (a_sum, a_start), (b_sum, b_start) = a, b
    return jnp.where(b_start[:, None], b_sum, a_sum + b_sum), a_start | b_start

  totals, _ = jax.lax.associative_scan(combine, (values, starts))
  target = jnp.where(ends, index, size)  # non-final rows are dropped
  return (
    jnp.zeros((size, values.shape[-1]), values.dtype)
    .at[target]
    .set(totals, mode="drop", unique_indices=True)
  )


def _xla_backward(
  image, grid, out_grad, mode, padding_mode, align_corners, deterministic
):
  """Gradients of _xla_forward: (image (N, H, W, C), grid (N, P, 2))."""
  n, height, width, channels = image.shape
  taps = _taps(grid, height, width, mode, padding_mode, align_corners)
  offset = (jnp.arange(n, dtype=jnp.int32) * (height * width))[:, None]
  grad_x = grad_y = jnp.zeros(grid.shape[:-1], grid.dtype)
  if deterministic:
    image_grad = _segment_sum_sorted(
      jnp.concatenate([(tap.index + offset).ravel() for tap in taps]),
      jnp.concatenate(
        [
          (tap.weight[..., None] * out_grad).reshape(-1, channels)
          for tap in taps
        ]
      ),
      n * height * width,
    )
  else:
    image_grad = jnp.zeros((n * height * width, channels), image.dtype)
  for tap in taps:
    if not deterministic:  # one scatter per tap: cheaper than one joined
      image_grad = image_grad.at[tap.index + offset].add(
        tap.weight[..., None] * out_grad, mode="promise_in_bounds"
      )
    if mode != "nearest":
      # d out / d weight of this tap, contracted with the output gradient.
      dot = (_tap_values(image, tap) * out_grad).sum(-1)
      grad_x = grad_x + tap.d_weight_dx * dot
      grad_y = grad_y + tap.d_weight_dy * dot
  return image_grad.reshape(image.shape), jnp.stack([grad_x, grad_y], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _sample(image, grid, mode, padding_mode, align_corners, deterministic):
  """image (N, H, W, C), grid (N, P, 2) -> (N, P, C)."""
  return _xla_forward(image, grid, mode, padding_mode, align_corners)


def _sample_fwd(image, grid, mode, padding_mode, align_corners, deterministic):
  out = _sample(image, grid, mode, padding_mode, align_corners, deterministic)
  return out, (image, grid)


def _sample_bwd(
  mode, padding_mode, align_corners, deterministic, residuals, out_grad
):
  image, grid = residuals
  options = (mode, padding_mode, align_corners)
  xla = lambda *args: _xla_backward(*args, *options, deterministic)
  if not _cpu_kernel.enabled(image.dtype):
    return xla(image, grid, out_grad)
  # Both branches are traced; the platform being compiled for picks one.
  # (The CPU kernel is deterministic: each thread owns whole images.)
  return jax.lax.platform_dependent(
    image,
    grid,
    out_grad,
    default=xla,
    cpu=lambda *args: _cpu_kernel.backward(*args, *options),
  )


_sample.defvjp(_sample_fwd, _sample_bwd)


def grid_sample(
  image,
  grid,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  align_corners: bool = False,
  fill_value=0.0,
  deterministic: bool = False,
):
  """Samples ``image`` at the normalised points of ``grid``.

  Equal to ``torch.nn.functional.grid_sample`` with the same options, with
  NHWC instead of NCHW layout. Output pixel ``(n, i, j)`` reads the input at
  ``grid[n, i, j] = (x, y)``, where ``x = -1`` is the left and ``x = 1`` the
  right of the image and ``y`` runs from top (-1) to bottom (1); with
  ``align_corners=False`` these are the outer edges of the corner pixels,
  with ``True`` their centres.

  Args:
    image: ``(N, H, W, C)`` or ``(H, W, C)`` float array.
    grid: ``(N, H_out, W_out, 2)`` or ``(H_out, W_out, 2)`` float array of
      ``(x, y)``; batched together with ``image`` or not at all.
    mode: ``'bilinear'``, ``'nearest'`` (round half to even, as PyTorch) or
      ``'bicubic'`` (cubic convolution, A = -0.75).
    padding_mode: value read outside the image: ``'zeros'``, ``'border'``
      (nearest edge pixel), ``'reflection'`` (mirrored about the edges) or
      ``'fill'`` (``fill_value``; not in PyTorch). ``'fill'`` is defined as
      ``zeros_sample + fill_value * (1 - m)``, where ``m`` is the
      ``'zeros'`` sample of an all-ones image: every tap outside the image
      reads ``fill_value``. So a point whose taps are all inside reads the
      image, one whose taps are all outside reads ``fill_value``, and one
      at the border blends the two with the interpolation weights (as
      OpenCV's ``BORDER_CONSTANT`` with a constant ``borderValue``).
    align_corners: see above. ``mode``, ``padding_mode`` and
      ``align_corners`` must be static (Python values; under ``jax.jit`` use
      ``static_argnames`` or ``functools.partial``): a traced one raises
      ``ValueError``.
    fill_value: used only with ``padding_mode='fill'``: a number or a float
      array of shape ``()`` or ``(C,)`` (one value per channel). It may be
      traced; gradients flow to it.
    deterministic: static bool. The image gradient is a scatter-add of the
      taps' contributions; on accelerators XLA's scatter-add uses atomic
      adds, whose order (and so the float rounding) varies from run to
      run. ``True`` sums them in a fixed order instead (stable sort by
      pixel, segmented scan, one write per pixel): bitwise reproducible,
      slower. The CPU kernel is deterministic either way; on the CPU both
      settings agree to float rounding (tested).

  Returns:
    ``(N, H_out, W_out, C)`` (or unbatched) array of ``image.dtype``.
    bfloat16/float16 inputs are computed in float32. A grid point with a
    ``nan`` or ``inf`` coordinate is undefined: it reads 0 and passes no
    gradient, in every padding mode (``'fill'`` included: it reads 0, not
    ``fill_value``).

  Gradients flow to ``image`` and ``grid`` (zero to ``grid`` for
  ``'nearest'``), equal to PyTorch's.

  Raises:
    ValueError: on a wrong rank, shape or dtype, an unknown mode, a traced
      option, an empty ``image`` or ``grid`` (any size 0, ``N = 0``
      included), or an ``image`` of more than ``2**31 - 1`` pixels
      (``N * H * W``; flattened indices are 32-bit: split the batch).
  """
  image, image_batched = v.check_float_array(
    "image", image, (None, None, None), "(N, H, W, C)"
  )
  grid, grid_batched = v.check_float_array(
    "grid", grid, (None, None, 2), "(N, H_out, W_out, 2)"
  )
  if image_batched != grid_batched:
    raise ValueError(
      "image and grid must both have a batch axis or both lack "
      f"one; got image shape {tuple(image.shape[image_batched ^ 1 :])}"
      f" and grid shape {tuple(grid.shape[grid_batched ^ 1 :])}."
    )
  if image.shape[0] != grid.shape[0]:
    raise ValueError(
      "grid must have the batch size of image; got image "
      f"shape {tuple(image.shape)} and grid shape "
      f"{tuple(grid.shape)}."
    )
  v.check_not_empty("image", image, "(N, H, W, C)")
  v.check_not_empty("grid", grid, "(N, H_out, W_out, 2)")
  v.check_index_range("image", image.shape, "(N, H, W, C)")
  v.check_choice("mode", mode, MODES)
  v.check_choice("padding_mode", padding_mode, ALL_PADDING_MODES)
  align_corners = v.check_bool("align_corners", align_corners)
  deterministic = v.check_bool("deterministic", deterministic)
  fill_value = v.check_fill_value("fill_value", fill_value, image.shape[-1])
  dtype = v.compute_dtype(image.dtype, grid.dtype)
  n, out_height, out_width, _ = grid.shape
  points = grid.astype(dtype).reshape(n, -1, 2)
  if padding_mode == "fill":
    out = _sample(
      image.astype(dtype), points, mode, "zeros", align_corners, deterministic
    )
    ones = jnp.ones((*image.shape[:3], 1), dtype)
    mass = _sample(ones, points, mode, "zeros", align_corners, deterministic)
    # Undefined (non-finite) points read 0, as in the other modes.
    defined = jnp.isfinite(points).all(-1, keepdims=True)
    out = out + jnp.where(defined, fill_value.astype(dtype) * (1 - mass), 0)
  else:
    out = _sample(
      image.astype(dtype),
      points,
      mode,
      padding_mode,
      align_corners,
      deterministic,
    )
  out = out.reshape(n, out_height, out_width, -1).astype(image.dtype)
  return out if image_batched else out[0]
