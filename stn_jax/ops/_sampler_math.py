"""The tap geometry of 2-D ``grid_sample`` and its three linear maps.

Every output point reads a few input pixels ("taps": 1 for nearest, 4 for
bilinear, 16 for bicubic) with weights that depend on the grid. With
``out = sum_t w_t(grid) * image[i_t(grid)]`` (the tap index ``i_t`` is
piecewise constant in the grid):

* ``forward``: ``out``.
* ``tangent``: the JVP, linear in the tangents ``(d_image, d_grid)``:
  ``sum_t w_t * d_image[i_t] + (dw_t/dx dx + dw_t/dy dy) * image[i_t]``.
* ``backward``: its transpose (the VJP): the image cotangent is a
  scatter-add of ``w_t * ct``, the grid cotangent ``dw_t * <image[i_t], ct>``.

All three are plain XLA ops, differentiable to any order by JAX: the tap
weights are written so that autodiff of them equals the explicit weight
derivatives, PyTorch's (0 where a coordinate is clamped, on and beyond the
edges; the mirror's sign under reflection), through ``padded``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def unnormalize(coord, size, align_corners):
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
  extra = jnp.fmod(distance, span)  # exact in floating point
  # The number of whole spans, as PyTorch's floor(distance / span) with a
  # correctly rounded division. distance - extra is an exact multiple of
  # span, so rounding its quotient is exact even where XLA divides by
  # multiplying with a reciprocal (41 / 41 then gave 0.99999994, floor 0,
  # and the edge pixel 41 reflected to 0).
  # (floor(q + 0.5), not round: the Pallas Triton lowering has no round.)
  flips = jnp.floor((distance - extra) / span + 0.5)
  even = jnp.fmod(flips, 2) == 0
  reflected = jnp.where(even, extra + low, span - extra + low)
  return reflected, jnp.where(even, sign, -sign)


def pad(coord, size, padding_mode, align_corners):
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def padded(pixel, size, padding_mode, align_corners):
  """``pad``'s coordinate, whose derivative is ``pad``'s (PyTorch's)."""
  return pad(pixel, size, padding_mode, align_corners)[0]


@padded.defjvp
def _padded_jvp(size, padding_mode, align_corners, primals, tangents):
  (pixel,), (tangent,) = primals, tangents
  # The primal through this same rule, so every order keeps PyTorch's
  # derivative; the slope is piecewise constant (its derivative is 0).
  out = padded(pixel, size, padding_mode, align_corners)
  slope = pad(pixel, size, padding_mode, align_corners)[1]
  return out, jax.lax.stop_gradient(slope) * tangent


def round_half_even(x):
  """``jnp.round(x)`` (half to even, as PyTorch's nearest mode) for finite
  ``x``, from floor and select only: the Pallas Triton lowering has no
  ``round``. Exact: ``x - floor(x)`` is exact in floating point."""
  low = jnp.floor(x)
  frac = x - low
  odd = jnp.fmod(low, 2) != 0
  up = (frac > 0.5) | ((frac == 0.5) & odd)
  return jnp.where(up, low + 1, low)


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
  pixel, scale = unnormalize(coord, size, align_corners)
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
      position, _ = pad(start + offset, size, padding_mode, align_corners)
      taps.append((position, w, d * scale))
  else:
    d_pad = pad(pixel, size, padding_mode, align_corners)[1]
    pixel = padded(pixel, size, padding_mode, align_corners)
    if mode == "nearest":
      zero = jnp.zeros_like(pixel)
      taps = [(round_half_even(pixel), jnp.ones_like(pixel), zero)]
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


def taps(grid, height, width, mode, padding_mode, align_corners) -> list[_Tap]:
  """The taps of a batch of grids (N, P, 2): 1, 4 or 16 of them."""
  return point_taps(
    grid[..., 0], grid[..., 1], height, width, mode, padding_mode, align_corners
  )


def point_taps(
  gx, gy, height, width, mode, padding_mode, align_corners
) -> list[_Tap]:
  """The taps of points given as separate x and y arrays of one shape.

  ``taps`` for a grid; also called inside the Pallas forward kernel
  (``_pallas_sampler.py``) on a block of points, so it uses only ops that
  the Pallas Triton lowering has (no stack, no ``round``).
  """
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


def tap_values(image, tap):
  # Invalid taps read a clamped real pixel: mask it so an inf/nan there
  # cannot leak into the result through a zero weight.
  return jnp.where(tap.valid[..., None], _gather(image, tap.index), 0)


def forward(image, grid, mode, padding_mode, align_corners):
  """image (N, H, W, C), grid (N, P, 2) -> (N, P, C)."""
  height, width = image.shape[1:3]
  # A sum of per-tap products, not an einsum/reduction: XLA fuses it into
  # one loop on every backend.
  return sum(
    tap.weight[..., None] * tap_values(image, tap)
    for tap in taps(grid, height, width, mode, padding_mode, align_corners)
  )


def tangent(image, grid, d_image, d_grid, mode, padding_mode, align_corners):
  """The JVP of ``forward`` at (image, grid): (N, P, C).

  Linear in ``d_image`` (N, H, W, C) and ``d_grid`` (N, P, 2); either may
  be None (a zero tangent, whose work is skipped).
  """
  height, width = image.shape[1:3]
  out = 0
  for tap in taps(grid, height, width, mode, padding_mode, align_corners):
    if d_image is not None:
      out = out + tap.weight[..., None] * tap_values(d_image, tap)
    if d_grid is not None and mode != "nearest":
      # Masked: a tangent at an undefined point may itself be non-finite.
      slope = jnp.where(
        tap.valid,
        tap.d_weight_dx * d_grid[..., 0] + tap.d_weight_dy * d_grid[..., 1],
        0,
      )
      out = out + slope[..., None] * tap_values(image, tap)
  if isinstance(out, int):  # nearest with only a grid tangent
    out = jnp.zeros((*grid.shape[:-1], image.shape[-1]), image.dtype)
  return out


def segment_sum_sorted(index, values, size):
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


def backward(
  image,
  grid,
  out_grad,
  mode,
  padding_mode,
  align_corners,
  deterministic,
  image_grad=True,
  grid_grad=True,
):
  """The transpose of ``tangent`` applied to ``out_grad`` (N, P, C).

  Returns:
    (image cotangent (N, H, W, C) or None, grid cotangent (N, P, 2) or
    None): None for a gradient not asked for, whose work is skipped.
    ``deterministic`` sums the image scatter in a fixed order
    (``segment_sum_sorted``).
  """
  n, height, width, channels = image.shape
  tap_list = taps(grid, height, width, mode, padding_mode, align_corners)
  offset = (jnp.arange(n, dtype=jnp.int32) * (height * width))[:, None]
  d_image = d_grid = None
  if image_grad and deterministic:
    d_image = segment_sum_sorted(
      jnp.concatenate([(tap.index + offset).ravel() for tap in tap_list]),
      jnp.concatenate(
        [
          (tap.weight[..., None] * out_grad).reshape(-1, channels)
          for tap in tap_list
        ]
      ),
      n * height * width,
    )
  elif image_grad:  # one scatter per tap: cheaper than one joined
    d_image = jnp.zeros((n * height * width, channels), out_grad.dtype)
    for tap in tap_list:
      d_image = d_image.at[tap.index + offset].add(
        tap.weight[..., None] * out_grad, mode="promise_in_bounds"
      )
  if grid_grad:
    grad_x = grad_y = jnp.zeros(grid.shape[:-1], out_grad.dtype)
    if mode != "nearest":
      for tap in tap_list:
        # d out / d weight of this tap, contracted with the output gradient.
        dot = (tap_values(image, tap) * out_grad).sum(-1)
        grad_x = grad_x + tap.d_weight_dx * dot
        grad_y = grad_y + tap.d_weight_dy * dot
    d_grid = jnp.stack([grad_x, grad_y], -1)
  if d_image is not None:
    d_image = d_image.reshape(image.shape)
  return d_image, d_grid
