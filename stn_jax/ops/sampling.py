"""Differentiable image sampling at the points of a grid.

``grid_sample`` gives the same numbers as ``torch.nn.functional.grid_sample``
(NHWC here, NCHW there) for every mode, padding mode and ``align_corners``,
and its gradients are PyTorch's, including at the borders. It differs where
PyTorch fails: a ``nan`` or ``inf`` grid point is an undefined sample, read
as zero with zero gradient, never an out-of-bounds read.

How it works: every output pixel reads a few input pixels ("taps": 1 for
nearest, 4 for bilinear, 16 for bicubic) with weights that depend on the grid
(``_sampler_math.py``). The forward pass gathers the taps. Differentiation is
a custom JVP whose tangent map is linear; reverse mode is its transpose: the
image gradient is a weighted scatter-add of the taps, and the grid gradient
is the analytic derivative of the tap weights times the tap values. On the
CPU a fused C++ kernel (``_cpu_kernel.py``) computes that transpose; XLA ops
are used elsewhere. Every JAX transform composes (jvp, jacfwd, linearize,
hessian, grad of grad, vmap, jit), with the kernel on or off
(``_sampler_autodiff.py``).

Opt-in: with ``STN_JAX_SAMPLER=pallas`` in the environment when a call is
traced, the forward gathers run as one Pallas kernel instead (compiled by
Triton on a CUDA GPU, interpreted on the CPU; ``_pallas_sampler.py``), for
every mode and padding mode; gradients are unchanged. The default,
``xla``, is the path above.
"""

from __future__ import annotations

import jax.numpy as jnp

from stn_jax.ops import _pallas_sampler, _sampler_autodiff
from stn_jax.ops import _validation as v

__all__ = ["MODES", "PADDING_MODES", "ALL_PADDING_MODES", "grid_sample"]

MODES = ("bilinear", "nearest", "bicubic")
# The padding modes PyTorch has (and grid_sample matches exactly).
PADDING_MODES = ("zeros", "border", "reflection")
# Every padding mode grid_sample accepts: PyTorch's and a constant fill.
ALL_PADDING_MODES = PADDING_MODES + ("fill",)


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
  ``'nearest'``), equal to PyTorch's. Every JAX transform composes: jit,
  vmap, grad, jvp, jacfwd, jacrev, linearize, hessian, grad of grad (second
  derivatives are those of the piecewise-polynomial interpolant, with
  PyTorch's convention at clamped and mirrored coordinates). Gradients to
  ``grid`` alone (an STN's input image needs none) skip the image-gradient
  scatter; gradients to ``image`` alone skip the grid's.

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
  sampler = _pallas_sampler.selected()
  if padding_mode == "fill":
    out = _sampler_autodiff.sample(
      image.astype(dtype),
      points,
      mode,
      "zeros",
      align_corners,
      deterministic,
      sampler,
    )
    ones = jnp.ones((*image.shape[:3], 1), dtype)
    mass = _sampler_autodiff.sample(
      ones, points, mode, "zeros", align_corners, deterministic, sampler
    )
    # Undefined (non-finite) points read 0, as in the other modes.
    defined = jnp.isfinite(points).all(-1, keepdims=True)
    out = out + jnp.where(defined, fill_value.astype(dtype) * (1 - mass), 0)
  else:
    out = _sampler_autodiff.sample(
      image.astype(dtype),
      points,
      mode,
      padding_mode,
      align_corners,
      deterministic,
      sampler,
    )
  out = out.reshape(n, out_height, out_width, -1).astype(image.dtype)
  return out if image_batched else out[0]
