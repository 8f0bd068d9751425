"""2-D convolution layers whose gradients are fast on XLA's CPU backend.

On a CPU, XLA computes a convolution's weight gradient as another
convolution (input and output gradient swap roles, the batch becomes the
contracted feature), and its input gradient as a transposed convolution.
With YNNPACK's convolutions (jaxlib 0.10's default) the weight gradients
of the paper networks ran at 5-20 GFLOP/s on a 2-core AMD EPYC, 4-9x
slower than the forward pass; with Eigen's (:mod:`stn_jax.xla_cpu`)
near the forward's speed, except for layers with 1-3 input channels
(``experiments/results/cpu_profile.md``).

``weight_gradient='patches'`` computes the gradients of layers with at
most 4 input channels (a network's first layer, or a layer after a
transformer on the image) as matrix products instead
(:mod:`stn_jax.models.conv_products`): the input gradient by columns, and,
for output gradients of 4 MiB and more, the weight gradient from chunks of
a few images at a time (chosen so the chunk's patches fill about 6 MB, near the CPU's
cache): the patch matrix ``P (k*k*C_in, chunk*H*W)`` is built from
``k*k`` shifted views of the zero-padded input and multiplied by the
output gradient ``(chunk*H*W, C_out)``; a ``lax.scan`` adds the chunks.
Wider layers keep XLA's gradients. The forward pass is XLA's, unchanged;
the gradients' float rounding differs (summation order: about 1e-6 of
their scale, up to 3e-5 for weights with 1-3 input channels). ``'xla'``
keeps XLA's own gradients, bitwise as before.

``'im2col'`` goes further, for layers with kernels of at least 16 taps
(4x4) and at least 36 input channels (the GTSRB CNN + 3 ST's wide
layers; rules measured on the paper networks): their forward pass and
both gradients are each one matrix product per chunk of 4 images, over
image patches built by a C++ kernel (``stn_jax/ops/csrc/im2col_cpu.cc``;
the input gradient is the patches of the output gradient times the flipped
kernel). Values differ from XLA's convolution by float rounding (about
1e-6 relative). Other layers, and runs where the C++ kernel is not
available (no compiler, ``STN_JAX_CPU_KERNEL=0``, not the CPU backend),
take the ``'patches'`` path.

The rules above were measured with Eigen's convolutions, which XLA's CPU
backend compiles a run's steps with by default (:mod:`stn_jax.xla_cpu`).
Under Eigen, the ``'patches'`` and ``'im2col'`` layers of at most 4 input
channels also compute their forward pass as a ``(kh, 1)`` convolution of
the ``kw`` horizontal shifts of the input stacked as channels (the same
sums, which Eigen runs 1.2-2.2x faster than a 1-3 channel convolution;
:func:`weight_gradient`'s ``library``).

Runs choose with ``config.conv_weight_gradient`` (default ``'auto'``:
``'im2col'`` on the CPU (``'patches'`` without its C++ kernel), ``'xla'``
on accelerators; workdirs written before the key existed read ``'xla'``,
what they ran with). The layers are ordinary ``nnx.Conv`` modules (same
parameters, same checkpoints); the choice is made when a model is built,
inside :func:`weight_gradient`.
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

from stn_jax.models import conv_products

WEIGHT_GRADIENTS = ("auto", "patches", "im2col", "xla")
# Output gradients smaller than this keep XLA's weight gradient, which is
# faster for small layers (e.g. the default small ST-CNN's, batch 128);
# larger ones (the paper networks at batch 256) use the patch products.
# Measured with experiments/bench_conv.py.
_MIN_PATCH_BYTES = 4 * 2**20
# Input channels up to which the input gradient is computed by columns
# (below); XLA's is faster above (measured at 32).
_MAX_SCATTER_CHANNELS = 4
# ... and up to which the weight gradient is computed by patch products:
# with Eigen's convolutions (stn_jax.xla_cpu, 'eigen') XLA's weight
# gradients of the paper networks' 20-62-channel layers were 1.2-3.4x
# faster than the patch products (with YNNPACK's, 1.3-7x slower).
_MAX_PATCH_WEIGHT_CHANNELS = 4
# 'im2col': layers with at least this many input channels and kernels of at
# least this many taps compute all three products from C++ patches (the
# GTSRB CNN + 3 ST's 2x2 to 16x16 layers of 38-62 channels: its step 0.93x
# of 'patches' with Eigen's convolutions); narrower layers (the RTS
# networks' 20-32 channels) and 3x3 kernels (a ResNet's: 1.1x slower as
# patches) are faster as XLA's convolutions.
_MIN_IM2COL_CHANNELS = 36
_MIN_IM2COL_TAPS = 16

# Layers with at most this many input channels compute their forward pass
# as a (kh x 1) convolution over the kw horizontal shifts of the input
# stacked as channels (:func:`_rows_conv`), when the steps are compiled
# with Eigen's kernels (weight_gradient(..., library='eigen')): Eigen's
# convolution of 1-3 channels is slow (about 30 GFLOP/s), and with kw*C_in
# channels the same sums ran 1.2-2.2x faster, equal to the float (AMD EPYC,
# 2 cores: the 9x9 1->32 layer on 42x42 in 54-61 ms against 74-78, on
# 21x21 in 9-14 against 21-25, batch 256). YNNPACK's direct convolution of
# one channel is faster still, and slower on the stacked shifts, so the
# layers keep it under 'ynnpack'.
_MAX_ROWS_CHANNELS = 4

_method = "xla"
_rows_forward = False


def check_weight_gradient(method) -> None:
  """Refuses a ``config.conv_weight_gradient`` not in
  :data:`WEIGHT_GRADIENTS`."""
  if method not in WEIGHT_GRADIENTS:
    raise ValueError(
      "config.conv_weight_gradient must be one of "
      f"{', '.join(WEIGHT_GRADIENTS)}; got {method!r}."
    )


def resolve_weight_gradient(method: str) -> str:
  """``method``, with ``'auto'`` resolved: ``'im2col'`` on the CPU
  backend, ``'xla'`` elsewhere (GPUs' own convolutions are fast, and the
  patch products are unmeasured there); ``'im2col'`` where its C++ kernel
  is not available (not the CPU backend, no compiler,
  ``STN_JAX_CPU_KERNEL=0``) resolves to ``'patches'``."""
  check_weight_gradient(method)
  if method == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    method = "im2col"
  if method == "im2col":
    from stn_jax.ops import _cpu_kernel  # builds the kernel on first use

    return "im2col" if _cpu_kernel.enabled(jnp.float32) else "patches"
  return method


@contextlib.contextmanager
def weight_gradient(
  method: str, *, library: str | None = None
) -> Iterator[None]:
  """Layers made by :func:`conv` inside this context compute their
  gradients by ``method``: ``'patches'`` (matrix products over patch
  chunks), ``'im2col'`` (the forward pass too, from C++ patches, where it
  applies), ``'xla'`` (XLA's own convolution) or ``'auto'``
  (:func:`resolve_weight_gradient`). Outside any context: ``'xla'``.

  ``library``: the XLA CPU kernels their steps will be compiled with
  (:func:`stn_jax.xla_cpu.resolve_library`; None: unknown). With
  ``'eigen'``, the ``'patches'`` and ``'im2col'`` layers of at most
  :data:`_MAX_ROWS_CHANNELS` input channels compute their forward pass from
  horizontal shifts (:func:`_rows_conv`), which Eigen runs faster."""
  global _method, _rows_forward
  previous = _method, _rows_forward
  _method = resolve_weight_gradient(method)
  _rows_forward = library == "eigen"
  try:
    yield
  finally:
    _method, _rows_forward = previous


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
  function = _CONV_FUNCTIONS.get((_method, _rows_forward))
  if function is None:
    function = lax.conv_general_dilated
  return nnx.Conv(
    in_features,
    out_features,
    tuple(kernel_size),
    rngs=rngs,
    conv_general_dilated=function,
    **kwargs,
  )


def im2col_conv(lhs, rhs, window_strides, padding, *args, **kwargs):
  """:func:`patch_gradient_conv`, with the forward pass and both gradients
  from C++ patches (module docstring) for float32 layers of at least
  :data:`_MIN_IM2COL_CHANNELS` input channels while the CPU kernel is
  available; every other layer exactly as :func:`patch_gradient_conv`."""
  return patch_gradient_conv(
    lhs, rhs, window_strides, padding, *args, im2col=True, **kwargs
  )


def _im2col_applies(lhs, rhs) -> bool:
  from stn_jax.ops import _cpu_kernel  # builds the kernel on first use

  return (
    lhs.dtype == jnp.float32
    and rhs.dtype == jnp.float32
    and rhs.shape[2] >= _MIN_IM2COL_CHANNELS
    and rhs.shape[0] * rhs.shape[1] >= _MIN_IM2COL_TAPS
    and _cpu_kernel.enabled(jnp.float32)
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
  *,
  im2col: bool = False,
  rows: bool = False,
  **kwargs,
):
  """``lax.conv_general_dilated`` with the patch-product weight gradient
  (module docstring) where it applies: 2-D NHWC/HWIO, unit strides and
  dilations, one feature group. Anything else is passed
  to ``lax.conv_general_dilated`` unchanged. ``im2col``: see
  :func:`im2col_conv`; ``rows``: a layer of at most
  :data:`_MAX_ROWS_CHANNELS` input channels (not taken by ``im2col``)
  computes its forward pass by :func:`_rows_conv`."""
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
  im2col = bool(im2col and _im2col_applies(lhs, rhs))
  return conv_p.bind(
    lhs,
    rhs,
    padding=padding,
    precision=precision,
    im2col=im2col,
    rows=bool(
      rows
      and not im2col
      and rhs.shape[2] <= _MAX_ROWS_CHANNELS
      and rhs.shape[1] > 1
    ),
  )


# The layer functions by (method, forward by rows); one object each, so
# that models built apart have equal graph definitions.
_CONV_FUNCTIONS = {
  ("patches", False): patch_gradient_conv,
  ("patches", True): functools.partial(patch_gradient_conv, rows=True),
  ("im2col", False): im2col_conv,
  ("im2col", True): functools.partial(im2col_conv, rows=True),
}


def _conv(x, kernel, *, padding, precision, im2col, rows):
  if im2col:
    return conv_products.conv_by_im2col(x, kernel, padding, precision)
  if rows:
    return _rows_conv(x, kernel, padding=padding, precision=precision)
  return _xla_conv(x, kernel, padding=padding, precision=precision)


def _xla_conv(x, kernel, *, padding, precision):
  return lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )


def _rows_conv(x, kernel, *, padding, precision):
  """:func:`_xla_conv` of ``x (N, H, W, C_in)`` by ``kernel (kh, kw, C_in,
  C_out)`` as a ``(kh, 1)`` convolution of the ``kw`` horizontal shifts
  of the padded ``x``, stacked as ``kw * C_in`` channels (shift ``j``,
  channel ``c`` at ``j * C_in + c``, as ``kernel.reshape(kh, 1, kw * C_in,
  C_out)`` orders them): the same sums, in channels that Eigen's kernels
  use better than 1-3 (:data:`_MAX_ROWS_CHANNELS`)."""
  kh, kw, c_in, c_out = kernel.shape
  (top, bottom), (left, right) = padding
  w_out = x.shape[2] + left + right - kw + 1
  padded = jnp.pad(x, ((0, 0), (0, 0), (left, right), (0, 0)))
  shifts = jnp.concatenate(
    [padded[:, :, j : j + w_out] for j in range(kw)], axis=-1
  )
  return lax.conv_general_dilated(
    shifts,
    kernel.reshape(kh, 1, kw * c_in, c_out),
    (1, 1),
    ((top, bottom), (0, 0)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )


# conv(x, kernel), stride 1, NHWC/HWIO, explicit zero padding: XLA's
# convolution, differentiated as the bilinear map it is (the tangent is
# conv(dx, kernel) + conv(x, dkernel), so forward mode and every higher
# order work), with a transpose that computes the weight gradient by patch
# products and, for <= 4 input channels, the input gradient by columns.
# With im2col=True all three products come from C++ patches instead; with
# rows=True the forward pass (and forward-mode tangents) by _rows_conv.
conv_p = Primitive("stn_conv_patch_gradient")
conv_p.def_impl(_conv)
mlir.register_lowering(conv_p, mlir.lower_fun(_conv, multiple_results=False))


@conv_p.def_abstract_eval
def _conv_abstract_eval(x, kernel, *, padding, precision, im2col, rows):
  out = jax.eval_shape(
    functools.partial(_xla_conv, padding=padding, precision=precision),
    x,
    kernel,
  )
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


def _conv_transpose(cotangent, x, kernel, *, padding, precision, im2col, rows):
  want_x, want_kernel = (
    ad.is_undefined_primal(x),
    ad.is_undefined_primal(kernel),
  )
  if want_x and want_kernel:
    raise NotImplementedError("conv is linear in one operand at a time.")
  if want_kernel:
    if type(cotangent) is ad.Zero:
      return [None, ad.Zero(kernel.aval)]
    if im2col:
      grad = conv_products.weight_gradient_by_im2col(
        x, cotangent, kernel.aval.shape[:2], padding, precision
      )
    elif (
      x.aval.shape[-1] <= _MAX_PATCH_WEIGHT_CHANNELS
      and cotangent.size * cotangent.dtype.itemsize >= _MIN_PATCH_BYTES
    ):
      grad = conv_products.weight_gradient_by_patches(
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
  if im2col:
    grad = conv_products.input_gradient_by_im2col(
      cotangent, kernel, x.aval.shape, padding, precision
    )
  elif x.aval.shape[-1] <= _MAX_SCATTER_CHANNELS:
    grad = conv_products.input_gradient_by_columns(
      cotangent, kernel, x.aval.shape, padding
    )
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
  params = {k: v for k, v in params.items() if k not in ("im2col", "rows")}
  out = jax.vmap(
    functools.partial(_xla_conv, **params), in_axes=(x_dim, kernel_dim)
  )(x, kernel)
  return out, 0


ad.primitive_jvps[conv_p] = _conv_jvp
ad.primitive_transposes[conv_p] = _conv_transpose
batching.primitive_batchers[conv_p] = _conv_batch
