"""2-D convolution layers whose weight gradient is fast on XLA's CPU backend.

On a CPU, XLA computes a convolution's weight gradient as another
convolution (input and output gradient swap roles, the batch becomes the
contracted feature). For the paper networks' shapes that runs at 5-20
GFLOP/s on a 2-core AMD EPYC, 4-9x slower than the forward pass
(``experiments/results/cpu_profile.md``): it was the largest cost of every
paper network's training step once max pooling was fixed.

``weight_gradient='patches'`` computes the same gradient as matrix
products instead: for a chunk of a few images at a time (chosen so the
chunk's patches fill about 6 MB, near the CPU's cache), the patch matrix
``P (k*k*C_in, chunk*H*W)`` is built from ``k*k`` shifted views of the
zero-padded input and multiplied by the output gradient
``(chunk*H*W, C_out)``; a ``lax.scan`` adds the chunks. Layers whose output
gradient is under 4 MiB keep XLA's weight gradient, which is faster there. With at most 4
input channels (a network's first layer, or a layer after a transformer
on the image) the input gradient is computed by columns too
(:func:`input_gradient_by_columns`), where XLA's transposed convolution is
slowest. The forward pass is XLA's, unchanged; the gradients' float
rounding differs (summation order: about 1e-6 of their scale, up to 3e-5
for weights with 1-3 input channels). ``'xla'`` keeps XLA's own gradients,
bitwise as before.

Runs choose with ``config.conv_weight_gradient`` (default ``'auto'``:
``'patches'`` on the CPU, ``'xla'`` on accelerators; workdirs written
before the key existed read ``'xla'``, what they ran with). The layers are ordinary ``nnx.Conv`` modules (same parameters, same
checkpoints); the choice is made when a model is built, inside
:func:`weight_gradient`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

WEIGHT_GRADIENTS = ("auto", "patches", "xla")
# Bytes of patches per chunk of images: about what stays in this class of
# CPU's caches (chunks of 2-8 paper-network images were fastest).
_CHUNK_BYTES = 6 * 2**20

# Output gradients smaller than this keep XLA's weight gradient, which is
# faster for small layers (e.g. the default small ST-CNN's, batch 128);
# larger ones (the paper networks at batch 256) use the patch products.
# Measured with experiments/bench_conv.py.
_MIN_PATCH_BYTES = 4 * 2**20
# Input channels up to which the input gradient is computed by columns
# (below); XLA's is faster above (measured at 32).
_MAX_SCATTER_CHANNELS = 4

_method = "xla"


def check_weight_gradient(method) -> None:
  """Refuses a ``config.conv_weight_gradient`` not in
  :data:`WEIGHT_GRADIENTS`."""
  if method not in WEIGHT_GRADIENTS:
    raise ValueError(
      "config.conv_weight_gradient must be one of "
      f"{', '.join(WEIGHT_GRADIENTS)}; got {method!r}."
    )


def resolve_weight_gradient(method: str) -> str:
  """``method``, with ``'auto'`` resolved: ``'patches'`` on the CPU
  backend, ``'xla'`` elsewhere (GPUs' own convolution gradients are fast,
  and the patch products are unmeasured there)."""
  check_weight_gradient(method)
  if method == "auto":
    return "patches" if jax.default_backend() == "cpu" else "xla"
  return method


@contextlib.contextmanager
def weight_gradient(method: str) -> Iterator[None]:
  """Layers made by :func:`conv` inside this context compute their
  gradients by ``method``: ``'patches'`` (matrix products over patch
  chunks), ``'xla'`` (XLA's own convolution) or ``'auto'``
  (:func:`resolve_weight_gradient`). Outside any context: ``'xla'``."""
  global _method
  previous, _method = _method, resolve_weight_gradient(method)
  try:
    yield
  finally:
    _method = previous


def conv(
  in_features: int,
  out_features: int,
  kernel_size: Sequence[int],
  *,
  rngs: nnx.Rngs,
  **kwargs,
) -> nnx.Conv:
  """An ``nnx.Conv`` (NHWC, ``'SAME'`` padding unless ``kwargs`` say
  otherwise) whose weight gradient follows the enclosing
  :func:`weight_gradient` context."""
  function = (
    patch_gradient_conv if _method == "patches" else lax.conv_general_dilated
  )
  return nnx.Conv(
    in_features,
    out_features,
    tuple(kernel_size),
    rngs=rngs,
    conv_general_dilated=function,
    **kwargs,
  )


def patch_gradient_conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """``lax.conv_general_dilated`` with the patch-product weight gradient
  (module docstring) where it applies: 2-D NHWC/HWIO, unit strides and
  dilations, one feature group. Anything else is passed
  to ``lax.conv_general_dilated`` unchanged."""
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  simple = (
    lhs.ndim == 4
    and tuple(dims.lhs_spec) == (0, 3, 1, 2)
    and tuple(dims.rhs_spec) == (3, 2, 0, 1)
    and tuple(dims.out_spec) == (0, 3, 1, 2)
    and all(s == 1 for s in window_strides)
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and all(d == 1 for d in (rhs_dilation or (1, 1)))
    and feature_group_count == 1
    and not kwargs.get("preferred_element_type")
    and kwargs.get("out_sharding") is None
  )
  if not simple:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
    )
  if isinstance(padding, str):  # 'SAME' or 'VALID' as lax reads them
    padding = lax.padtype_to_pads(
      lhs.shape[1:3], rhs.shape[:2], (1, 1), padding
    )
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if min(min(pair) for pair in padding) < 0:  # cropping: XLA's own
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      dimension_numbers=dimension_numbers,
      precision=precision,
      **kwargs,
    )
  return conv_p.bind(lhs, rhs, padding=padding, precision=precision)


def _xla_conv(x, kernel, *, padding, precision):
  return lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )


# conv(x, kernel), stride 1, NHWC/HWIO, explicit zero padding: XLA's
# convolution, differentiated as the bilinear map it is (the tangent is
# conv(dx, kernel) + conv(x, dkernel), so forward mode and every higher
# order work), with a transpose that computes the weight gradient by patch
# products and, for <= 4 input channels, the input gradient by columns.
conv_p = Primitive("stn_conv_patch_gradient")
conv_p.def_impl(_xla_conv)
mlir.register_lowering(
  conv_p, mlir.lower_fun(_xla_conv, multiple_results=False)
)


@conv_p.def_abstract_eval
def _conv_abstract_eval(x, kernel, **params):
  out = jax.eval_shape(functools.partial(_xla_conv, **params), x, kernel)
  return x.update(shape=out.shape, dtype=out.dtype)


def _conv_jvp(primals, tangents, **params):
  x, kernel = primals
  dx, dkernel = tangents
  out = conv_p.bind(x, kernel, **params)
  terms = []
  if type(dx) is not ad.Zero:
    terms.append(conv_p.bind(dx, kernel, **params))
  if type(dkernel) is not ad.Zero:
    terms.append(conv_p.bind(x, dkernel, **params))
  if not terms:  # JAX calls a JVP rule with a nonzero tangent only
    return out, jnp.zeros_like(out)
  return out, functools.reduce(lambda a, b: a + b, terms)


def _conv_transpose(cotangent, x, kernel, *, padding, precision):
  want_x, want_kernel = (
    ad.is_undefined_primal(x),
    ad.is_undefined_primal(kernel),
  )
  if want_x and want_kernel:
    raise NotImplementedError("conv is linear in one operand at a time.")
  if want_kernel:
    if type(cotangent) is ad.Zero:
      return [None, ad.Zero(kernel.aval)]
    if cotangent.size * cotangent.dtype.itemsize >= _MIN_PATCH_BYTES:
      grad = weight_gradient_by_patches(
        x, cotangent, kernel.aval.shape[:2], padding
      )
    else:  # small layers: XLA's own is faster
      (grad,) = jax.linear_transpose(
        lambda k: _xla_conv(x, k, padding=padding, precision=precision),
        jax.ShapeDtypeStruct(kernel.aval.shape, kernel.aval.dtype),
      )(cotangent)
    return [None, grad.astype(kernel.aval.dtype)]
  if type(cotangent) is ad.Zero:
    return [ad.Zero(x.aval), None]
  if x.aval.shape[-1] <= _MAX_SCATTER_CHANNELS:
    grad = input_gradient_by_columns(cotangent, kernel, x.aval.shape, padding)
  else:
    (grad,) = jax.linear_transpose(
      lambda x: _xla_conv(x, kernel, padding=padding, precision=precision),
      jax.ShapeDtypeStruct(x.aval.shape, x.aval.dtype),
    )(cotangent)
  return [grad.astype(x.aval.dtype), None]


def _conv_batch(operands, dims, **params):
  x, kernel = operands
  x_dim, kernel_dim = dims
  if kernel_dim is None:  # the vmapped axis joins the batch axis
    x = jnp.moveaxis(x, x_dim, 0)
    size = x.shape[0]
    out = conv_p.bind(x.reshape(-1, *x.shape[2:]), kernel, **params)
    return out.reshape(size, -1, *out.shape[1:]), 0
  # A kernel per vmapped element: XLA's batched convolution (gradients
  # through it are XLA's too).
  out = jax.vmap(
    functools.partial(_xla_conv, **params), in_axes=(x_dim, kernel_dim)
  )(x, kernel)
  return out, 0


ad.primitive_jvps[conv_p] = _conv_jvp
ad.primitive_transposes[conv_p] = _conv_transpose
batching.primitive_batchers[conv_p] = _conv_batch


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


def _chunk_size(batch: int, patch_bytes_per_image: int) -> int:
  """The largest divisor of ``batch`` whose patches fit :data:`_CHUNK_BYTES`
  (at least 1)."""
  limit = max(1, _CHUNK_BYTES // max(1, patch_bytes_per_image))
  return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


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
