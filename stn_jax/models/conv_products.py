"""Stride-1 2-D convolutions and their gradients as matrix products.

The products behind :mod:`stn_jax.models.convolution`'s ``'patches'`` and
``'im2col'`` layers, each from its definition: a convolution of ``x (N, H,
W, C_in)`` with ``kernel (kh, kw, C_in, C_out)`` (HWIO) and zero ``padding
((top, bottom), (left, right))`` sums ``kernel[i, j, c, o] * x_padded[n, y
+ i, x + j, c]``. Its weight gradient is ``patches(x)^T @ cotangent``, its
input gradient the patches of the output gradient times the flipped
kernel (or, with few input channels, one product per output pixel's
window, added back in place). Products run over chunks of a few images
(``lax.scan``), so each chunk's patches stay near the CPU's caches.

All functions are pure jnp/lax (the ``*_by_im2col`` ones call the C++
patch kernel of :mod:`stn_jax.ops._cpu_kernel`) and are traced inside the
convolution primitive's rules; they are not meant as layers themselves.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

# Bytes of patches per chunk of images: about what stays in this class of
# CPU's caches (chunks of 2-8 paper-network images were fastest).
_CHUNK_BYTES = 6 * 2**20
# The C++ patches' chunks: up to this many images (4-8 were fastest at
# batch 256).
_IM2COL_CHUNK = 4


def input_gradient_by_columns(cotangent, kernel, in_shape, padding):
  """The gradient of ``sum(cotangent * conv(x, kernel))`` with respect to
  ``x`` of shape ``in_shape (N, H, W, C_in)``, for a stride-1 convolution
  with zero ``padding ((top, bottom), (left, right))``.

  Each output pixel's contribution to its ``kh x kw`` input window is one
  matrix product, ``(N*H_out*W_out, C_out) @ (C_out, kh*kw*C_in)``; the
  windows are then added back in place (``kh*kw`` shifted, zero-padded
  views, which XLA fuses into one pass). With few input channels this is
  several times faster on a CPU than XLA's transposed convolution, whose
  output then has 1-3 channels. Returns ``in_shape``.
  """
  kh, kw, c_in, c_out = kernel.shape
  n, h_out, w_out, _ = cotangent.shape
  (top, _), (left, _) = padding
  columns = cotangent.reshape(-1, c_out) @ kernel.reshape(-1, c_out).T
  columns = columns.reshape(n, h_out, w_out, kh, kw, c_in)
  total = 0
  for i in range(kh):
    for j in range(kw):
      total = total + jnp.pad(
        columns[:, :, :, i, j, :],
        ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)),
      )
  # total is the gradient of the padded input; crop the padding away.
  _, h, w, _ = in_shape
  return total[:, top : top + h, left : left + w].astype(cotangent.dtype)


def _largest_divisor(batch: int, limit: int) -> int:
  """The largest divisor of ``batch`` up to ``limit`` (at least 1): a chunk
  size that splits the batch evenly."""
  return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


def _chunk_size(batch: int, patch_bytes_per_image: int) -> int:
  """The largest divisor of ``batch`` whose patches fit :data:`_CHUNK_BYTES`
  (at least 1)."""
  return _largest_divisor(
    batch, max(1, _CHUNK_BYTES // max(1, patch_bytes_per_image))
  )


def weight_gradient_by_patches(x, cotangent, kernel_size, padding):
  """The gradient of ``sum(cotangent * conv(x, w))`` with respect to ``w``.

  Args:
    x: ``(N, H, W, C_in)`` input.
    cotangent: ``(N, H_out, W_out, C_out)`` output gradient, for a stride-1
      convolution of ``x`` padded by ``padding``.
    kernel_size: ``(kh, kw)``.
    padding: ``((top, bottom), (left, right))`` zero padding.

  Returns:
    ``(kh, kw, C_in, C_out)`` (HWIO), float32 for float32 inputs.
  """
  kh, kw = kernel_size
  n, _, _, c_in = x.shape
  _, h_out, w_out, c_out = cotangent.shape
  # Channel-major, so each shifted view is a contiguous row block of P.
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0))).transpose(3, 0, 1, 2)
  per_image = kh * kw * c_in * h_out * w_out * x.dtype.itemsize
  chunk = _chunk_size(n, per_image)
  padded = padded.reshape(c_in, n // chunk, chunk, *padded.shape[2:])
  padded = padded.transpose(1, 0, 2, 3, 4)  # (chunks, C_in, chunk, Hp, Wp)
  cotangent = cotangent.reshape(n // chunk, chunk * h_out * w_out, c_out)

  def add_chunk(total, inputs):
    x_chunk, cotangent_chunk = inputs
    patches = jnp.stack(
      [
        x_chunk[:, :, i : i + h_out, j : j + w_out]
        for i in range(kh)
        for j in range(kw)
      ]
    ).reshape(kh * kw * c_in, chunk * h_out * w_out)
    return total + patches @ cotangent_chunk, None

  total = jnp.zeros((kh * kw * c_in, c_out), jnp.result_type(x, cotangent))
  total, _ = lax.scan(add_chunk, total, (padded, cotangent))
  return total.reshape(kh, kw, c_in, c_out)


def _in_chunks(fn, init, *arrays):
  """``lax.scan`` of ``fn(carry, *chunk)`` over chunks of the arrays'
  leading (batch) axis; returns (carry, stacked outputs)."""
  chunk = _largest_divisor(arrays[0].shape[0], _IM2COL_CHUNK)
  chunked = [
    a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:]) for a in arrays
  ]
  return lax.scan(lambda carry, xs: fn(carry, *xs), init, chunked)


def conv_by_im2col(x, kernel, padding, precision=None):
  """A stride-1 convolution as C++ patches and one matrix product per chunk
  of images.

  Args:
    x: ``(N, H, W, C_in)`` float32.
    kernel: ``(kh, kw, C_in, C_out)`` (HWIO) float32.
    padding: ``((top, bottom), (left, right))``, zeros, each >= 0.
    precision: of the matrix products (``lax.Precision``), as for XLA's.

  Returns:
    ``(N, H + top + bottom - kh + 1, W + left + right - kw + 1, C_out)``:
    ``lax.conv_general_dilated``'s values to float rounding.
  """
  from stn_jax.ops import _cpu_kernel

  kh, kw, _, c_out = kernel.shape
  n, h, w, _ = x.shape
  (top, bottom), (left, right) = padding
  out_size = (h + top + bottom - kh + 1, w + left + right - kw + 1)
  matrix = kernel.reshape(-1, c_out)

  def one(carry, x_chunk):
    patches = _cpu_kernel.im2col(x_chunk, (kh, kw), (top, left), out_size)
    y = jnp.dot(
      patches.reshape(-1, patches.shape[-1]), matrix, precision=precision
    )
    return carry, y.reshape(*patches.shape[:3], c_out)

  _, y = _in_chunks(one, None, x)
  return y.reshape(n, *out_size, c_out)


def input_gradient_by_im2col(
  cotangent, kernel, in_shape, padding, precision=None
):
  """The gradient of ``sum(cotangent * conv(x, kernel))`` with respect to
  ``x`` of shape ``in_shape (N, H, W, C_in)``, for a stride-1 convolution
  with zero ``padding ((top, bottom), (left, right))``: the patches of the
  ``(N, H_out, W_out, C_out)`` ``cotangent`` (window corner ``(y - (kh - 1
  - top), x - (kw - 1 - left))``) times the flipped kernel ``(kh*kw*C_out,
  C_in)``, per chunk of images. Returns ``in_shape``, float32."""
  from stn_jax.ops import _cpu_kernel

  kh, kw, c_in, _ = kernel.shape
  _, h, w, _ = in_shape
  (top, _), (left, _) = padding
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, c_in)

  def one(carry, g_chunk):
    patches = _cpu_kernel.im2col(
      g_chunk, (kh, kw), (kh - 1 - top, kw - 1 - left), (h, w)
    )
    dx = jnp.dot(
      patches.reshape(-1, patches.shape[-1]), flipped, precision=precision
    )
    return carry, dx.reshape(*patches.shape[:3], c_in)

  _, dx = _in_chunks(one, None, cotangent)
  return dx.reshape(in_shape)


def weight_gradient_by_im2col(
  x, cotangent, kernel_size, padding, precision=None
):
  """:func:`weight_gradient_by_patches` with the patches built in C++: per
  chunk of images, ``patches(x)^T @ cotangent``, summed. Returns ``(kh, kw,
  C_in, C_out)``, float32."""
  from stn_jax.ops import _cpu_kernel

  kh, kw = kernel_size
  c_in, c_out = x.shape[-1], cotangent.shape[-1]
  out_size = cotangent.shape[1:3]
  (top, _), (left, _) = padding

  def one(total, x_chunk, g_chunk):
    patches = _cpu_kernel.im2col(x_chunk, (kh, kw), (top, left), out_size)
    total = total + lax.dot_general(
      patches.reshape(-1, patches.shape[-1]),
      g_chunk.reshape(-1, c_out),
      (((0,), (0,)), ((), ())),
      precision=precision,
    )
    return total, None

  total = jnp.zeros((kh * kw * c_in, c_out), jnp.float32)
  total, _ = _in_chunks(one, total, x, cotangent)
  return total.reshape(kh, kw, c_in, c_out)
