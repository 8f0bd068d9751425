"""The C++ CPU kernels of grid_sample (``csrc/grid_sample_cpu.cc``), and the
image patches of the convolution layers (``csrc/im2col_cpu.cc``, used by
:mod:`stn_jax.models.convolution`).

On the CPU, the XLA formulation of the sampler's backward pass is 2-4x slower
than PyTorch: it writes per-tap arrays to memory and XLA's scatter costs about
2 ns per scalar update. A fused loop in C++, called as an XLA FFI custom call,
removes both. It computes the same tap rules as the XLA path in
``sampling.py`` (tests compare the two, and both against PyTorch). The
bilinear forward pass has a kernel too: each image is copied into a buffer
with a zero border, so a point reads its 4 taps with no bounds checks or
masks, about 2x faster than XLA's gathers (nearest and bicubic stay in XLA).
Both run their chunks on XLA's own intra-op thread pool.

The kernel is compiled on first use with the system C++ compiler, for this
CPU (``-march=native``), into a cache directory (``$STN_JAX_CACHE_DIR``,
default ``~/.cache/stn_jax``) and loaded from there afterwards (the first
build takes about a minute). Without a compiler, or with
``STN_JAX_CPU_KERNEL=0``, the XLA path is used on the CPU too: same numbers,
slower. On GPU/TPU the XLA path is always used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

_CSRC = os.path.join(os.path.dirname(__file__), "csrc")
_SOURCES = tuple(
  os.path.join(_CSRC, name) for name in ("grid_sample_cpu.cc", "im2col_cpu.cc")
)
# Included by the sources; part of the build's cache key.
_HEADERS = (os.path.join(_CSRC, "parallel_chunks.h"),)
_FLAGS = (
  "-O3",
  "-march=native",
  "-fno-math-errno",
  "-fno-trapping-math",
  "-std=c++17",
  "-shared",
  "-fPIC",
  "-pthread",
  "-w",
)
_DTYPES = {jnp.dtype(jnp.float32): "F32", jnp.dtype(jnp.float64): "F64"}
MODE_CODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}


def _cache_dir() -> str:
  return os.environ.get("STN_JAX_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "stn_jax",
  )


def _cpu_identity() -> str:
  identity = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("model name", "flags", "Features")):
          identity += line
  except OSError:
    identity += platform.processor()
  return identity


def _build(compiler: str) -> str:
  """Compiles the kernel unless a cached build exists; returns its path."""
  source = b""
  for name in (*_SOURCES, *_HEADERS):
    with open(name, "rb") as f:
      source += f.read()
  # -march=native: the build is only valid for this kind of CPU.
  key = hashlib.sha256(
    source
    + jax.__version__.encode()
    + " ".join(_FLAGS).encode()
    + _cpu_identity().encode()
  ).hexdigest()[:16]
  path = os.path.join(_cache_dir(), f"grid_sample_cpu_{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(_cache_dir(), exist_ok=True)
  # Build under a unique name, then rename: a concurrent process never loads
  # a half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
  os.close(fd)
  try:
    subprocess.run(
      [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", *_SOURCES, "-o", tmp],
      check=True,
      capture_output=True,
      text=True,
      timeout=600,
    )
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _target(dtype, kind="backward") -> str:
  return f"stn_jax_grid_sample_{kind}_{_DTYPES[jnp.dtype(dtype)].lower()}"


@functools.cache
def _load() -> bool:
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    warnings.warn(
      "stn_jax: no C++ compiler found, so grid_sample and the wide "
      "convolutions use their slower XLA paths on the CPU.",
      stacklevel=4,
    )
    return False
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
    for dtype, suffix in _DTYPES.items():
      for kind in ("backward", "forward"):
        symbol = getattr(library, f"StnGridSample{kind.title()}{suffix}")
        jax.ffi.register_ffi_target(
          _target(dtype, kind), jax.ffi.pycapsule(symbol), platform="cpu"
        )
    for suffix in ("F32", "BF16"):
      jax.ffi.register_ffi_target(
        f"stn_jax_im2col_{suffix.lower()}",
        jax.ffi.pycapsule(getattr(library, f"StnIm2col{suffix}")),
        platform="cpu",
      )
  except (OSError, subprocess.SubprocessError, AttributeError) as error:
    detail = getattr(error, "stderr", None) or str(error)
    warnings.warn(
      "stn_jax: building the CPU kernels (grid_sample, convolution "
      "patches) failed, so the slower XLA paths are used on the CPU. "
      "Compiler output: "
      f"{detail[-2000:]}",
      stacklevel=4,
    )
    return False
  return True


def enabled(dtype) -> bool:
  """Whether to use the kernel for this dtype (builds it on first call).

  True when the default backend is the CPU, the dtype is float32/float64,
  ``STN_JAX_CPU_KERNEL`` is not ``0`` and the kernel builds.
  """
  return (
    os.environ.get("STN_JAX_CPU_KERNEL", "1") != "0"
    and jax.default_backend() == "cpu"
    and jnp.dtype(dtype) in _DTYPES
    and _load()
  )


def _attributes(mode, padding_mode, align_corners):
  return dict(
    mode=np.int32(MODE_CODES[mode]),
    padding=np.int32(PADDING_CODES[padding_mode]),
    align_corners=np.int32(align_corners),
  )


def backward(
  image,
  grid,
  out_grad,
  mode,
  padding_mode,
  align_corners,
  *,
  image_grad=True,
  grid_grad=True,
):
  """Gradients of grid_sample.

  Args:
    image: (N, H, W, C); grid: (N, P, 2); out_grad: (N, P, C).
    mode, padding_mode, align_corners: as in ``grid_sample``.
    image_grad, grid_grad: static bools, which gradients to compute; the
      kernel skips the work of the other (the image scatter, or the tap
      value products).

  Returns:
    (image gradient (N, H, W, C) or None, grid gradient (N, P, 2) or None).
  """
  if not (image_grad or grid_grad):
    return None, None
  outs = (
    jax.ShapeDtypeStruct(image.shape if image_grad else (0,), image.dtype),
    jax.ShapeDtypeStruct(grid.shape if grid_grad else (0,), grid.dtype),
  )
  d_image, d_grid = jax.ffi.ffi_call(
    _target(image.dtype), outs, vmap_method="broadcast_all"
  )(
    image,
    grid,
    out_grad,
    **_attributes(mode, padding_mode, align_corners),
    want_image_grad=np.int32(image_grad),
    want_grid_grad=np.int32(grid_grad),
  )
  return (d_image if image_grad else None), (d_grid if grid_grad else None)


# The bilinear kernels copy each image into a zero-bordered buffer (one per
# chunk of work, up to 4 per pool thread): above this many elements per
# image the buffers would cost more memory than they save time (the C++
# kMaxBorderedElements; beyond it the backward uses its blocked path).
FORWARD_MAX_IMAGE_ELEMENTS = 1 << 21


def has_forward(image_shape, mode) -> bool:
  """Whether the forward kernel handles images of ``image_shape``
  ``(..., H, W, C)`` in ``mode`` (bilinear, every padding)."""
  height, width, channels = image_shape[-3:]
  return (
    mode == "bilinear"
    and (height + 4) * (width + 4) * channels <= FORWARD_MAX_IMAGE_ELEMENTS
  )


def forward(image, grid, mode, padding_mode, align_corners):
  """Bilinear grid_sample: image (N, H, W, C), grid (N, P, 2) -> (N, P, C).

  The values of the XLA path (``_sampler_math.forward``) to rounding: the
  same taps and weights, summed in the same order. Only for
  ``has_forward(image.shape, mode)``.
  """
  if not has_forward(image.shape, mode):
    raise ValueError(
      f"the forward kernel is for bilinear images of at most "
      f"{FORWARD_MAX_IMAGE_ELEMENTS} padded elements; got mode {mode!r}, "
      f"image shape {tuple(image.shape)}."
    )
  out = jax.ShapeDtypeStruct((*grid.shape[:-1], image.shape[-1]), image.dtype)
  return jax.ffi.ffi_call(
    _target(image.dtype, "forward"), out, vmap_method="broadcast_all"
  )(image, grid, **_attributes(mode, padding_mode, align_corners))


def im2col(x, kernel_size, top_left, out_size, dtype=jnp.float32):
  """Image patches of a stride-1 convolution window, by the C++ kernel.

  Args:
    x: ``(N, H, W, C)`` float32.
    kernel_size: ``(kh, kw)``.
    top_left: ``(top, left)``: output ``(y, x)``'s window starts at input
      ``(y - top, x - left)``; reads outside the image are zeros (so
      ``top``/``left`` are a convolution's leading zero padding).
    out_size: ``(H_out, W_out)``, any sizes.
    dtype: of the patches, float32 or bfloat16 (rounded to nearest even).

  Returns:
    ``(N, H_out, W_out, kh * kw * C)``, each patch in ``(i, j, c)`` order
    (an HWIO kernel reshaped to ``(kh * kw * C, C_out)`` multiplies it).
    Only where :func:`enabled` holds for float32. Linear in ``x``: forward
    mode (so Hessian-vector products through it) works, reverse mode
    through the patches themselves does not; ``vmap`` runs the kernel once
    per vmapped element.
  """
  (kh, kw), (top, left) = kernel_size, top_left
  return _im2col_function(
    int(kh),
    int(kw),
    int(top),
    int(left),
    tuple(map(int, out_size)),
    jnp.dtype(dtype).name,
  )(x.astype(jnp.float32))


@functools.cache
def _im2col_function(kh, kw, top, left, out_size, dtype):
  suffix = "bf16" if dtype == "bfloat16" else "f32"

  @jax.custom_jvp
  def patches(x):
    out = jax.ShapeDtypeStruct(
      (x.shape[0], *out_size, kh * kw * x.shape[3]), dtype
    )
    return jax.ffi.ffi_call(
      f"stn_jax_im2col_{suffix}", out, vmap_method="sequential"
    )(
      x,
      kh=np.int32(kh),
      kw=np.int32(kw),
      top=np.int32(top),
      left=np.int32(left),
    )

  @patches.defjvp
  def _(primals, tangents):  # linear: the tangent's patches
    return patches(primals[0]), patches(tangents[0])

  return patches
