"""A convolution as C++ image patches and one XLA matrix product (issue 31).

Usage:
  python experiments/conv_im2col/bench.py [--repeats 5] [--chunks 4,8,16]
      [--shapes 21:7:32:32,42:9:1:32]

An experiment: it builds ``stn_jax/ops/csrc/im2col_cpu.cc`` (the library's
kernel) with the system C++ compiler, and times, per paper-network shape
(batch 256, 'SAME', stride 1), the three products of a convolution layer
computed two ways:

- XLA: ``lax.conv_general_dilated`` and its two gradients (separate jitted
  VJPs);
- patches: a ``lax.scan`` over chunks of images, each chunk's patches built
  by the C++ kernel and multiplied by the kernel matrix (forward), by the
  output gradient (weight gradient, summed over chunks), or the output
  gradient's patches by the flipped kernel (input gradient); in float32, and
  in bfloat16 with float32 accumulation (``preferred_element_type``).

Every patch result is checked against XLA's (max relative error printed).
Prints a markdown table of median ms.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
# (size, kernel, C_in, C_out): the RTS CNN's two convs, the RTS ST-CNN's
# wide conv, the GTSRB CNN's (width 0.25) first conv and a wide conv.
SHAPES = (
  (21, 7, 32, 32),
  (42, 9, 1, 32),
  (10, 7, 32, 32),
  (32, 7, 3, 50),
  (16, 4, 50, 62),
)
BATCH = 256


def build() -> None:
  compiler = os.environ.get("CXX") or shutil.which("c++")
  if compiler is None:
    raise SystemExit("bench.py needs a C++ compiler (c++ or $CXX).")
  out = os.path.join(tempfile.mkdtemp(), "im2col_cpu.so")
  subprocess.run(
    [
      compiler,
      "-O3",
      "-march=native",
      "-std=c++17",
      "-shared",
      "-fPIC",
      "-w",
      f"-I{jax.ffi.include_dir()}",
      os.path.join(
        os.path.dirname(os.path.dirname(HERE)),
        "stn_jax",
        "ops",
        "csrc",
        "im2col_cpu.cc",
      ),
      "-o",
      out,
    ],
    check=True,
  )
  library = ctypes.cdll.LoadLibrary(out)
  for name in ("F32", "BF16"):
    jax.ffi.register_ffi_target(
      f"stn_im2col_{name.lower()}",
      jax.ffi.pycapsule(getattr(library, f"StnIm2col{name}")),
      platform="cpu",
    )


def patches(x, kh, kw, top, left, dtype):
  n, h, w, c = x.shape
  target = "stn_im2col_f32" if dtype == jnp.float32 else "stn_im2col_bf16"
  out = jax.ShapeDtypeStruct((n, h, w, kh * kw * c), dtype)
  return jax.ffi.ffi_call(target, out)(
    x,
    kh=np.int32(kh),
    kw=np.int32(kw),
    top=np.int32(top),
    left=np.int32(left),
  )


def chunked(x, chunk):
  return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def forward(x, kernel, chunk, dtype):
  kh, kw, c_in, c_out = kernel.shape
  matrix = kernel.reshape(-1, c_out).astype(dtype)

  def one(_, x_chunk):
    p = patches(x_chunk, kh, kw, kh // 2, kw // 2, dtype)
    y = jnp.dot(
      p.reshape(-1, p.shape[-1]), matrix, preferred_element_type=jnp.float32
    )
    return None, y.reshape(*x_chunk.shape[:3], c_out)

  _, y = lax.scan(one, None, chunked(x, chunk))
  return y.reshape(*x.shape[:3], c_out)


def input_gradient(cotangent, kernel, chunk, dtype):
  kh, kw, c_in, c_out = kernel.shape
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, C_out, C_in)
  matrix = flipped.reshape(-1, c_in).astype(dtype)

  def one(_, g_chunk):
    p = patches(g_chunk, kh, kw, kh - 1 - kh // 2, kw - 1 - kw // 2, dtype)
    dx = jnp.dot(
      p.reshape(-1, p.shape[-1]), matrix, preferred_element_type=jnp.float32
    )
    return None, dx.reshape(*g_chunk.shape[:3], c_in)

  _, dx = lax.scan(one, None, chunked(cotangent, chunk))
  return dx.reshape(*cotangent.shape[:3], c_in)


def weight_gradient(x, cotangent, kernel_shape, chunk, dtype):
  kh, kw, c_in, c_out = kernel_shape

  def one(total, inputs):
    x_chunk, g_chunk = inputs
    p = patches(x_chunk, kh, kw, kh // 2, kw // 2, dtype)
    total = total + lax.dot_general(
      p.reshape(-1, p.shape[-1]),
      g_chunk.reshape(-1, c_out).astype(dtype),
      (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32,
    )
    return total, None

  total = jnp.zeros((kh * kw * c_in, c_out), jnp.float32)
  total, _ = lax.scan(
    one, total, (chunked(x, chunk), chunked(cotangent, chunk))
  )
  return total.reshape(kernel_shape)


def median_ms(function, *args, repeats):
  jax.block_until_ready(function(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def relative_error(got, want):
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def measure_shape(size, k, c_in, c_out, *, chunks, repeats):
  """Yields the table's three rows (forward, input and weight gradient) of
  one shape."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (BATCH, size, size, c_in))
  kernel = 0.05 * jax.random.normal(keys[1], (k, k, c_in, c_out))
  cotangent = jax.random.normal(keys[2], (BATCH, size, size, c_out))
  pads = [(k // 2, k - 1 - k // 2)] * 2
  xla = jax.jit(
    lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )
  _, vjp = jax.vjp(xla, x, kernel)
  want_dx, want_dw = vjp(cotangent)
  products = {
    "forward": (
      xla,
      (x, kernel),
      xla(x, kernel),
      lambda c, d: jax.jit(lambda x, w: forward(x, w, c, d)),
      (x, kernel),
    ),
    "input gradient": (
      jax.jit(lambda x, w, g: jax.vjp(xla, x, w)[1](g)[0]),
      (x, kernel, cotangent),
      want_dx,
      lambda c, d: jax.jit(lambda g, w: input_gradient(g, w, c, d)),
      (cotangent, kernel),
    ),
    "weight gradient": (
      jax.jit(lambda x, w, g: jax.vjp(xla, x, w)[1](g)[1]),
      (x, kernel, cotangent),
      want_dw,
      lambda c, d: jax.jit(
        lambda x, g: weight_gradient(x, g, kernel.shape, c, d)
      ),
      (x, cotangent),
    ),
  }
  for name, (reference, ref_args, want, make, make_args) in products.items():
    xla_ms = median_ms(reference, *ref_args, repeats=repeats)
    cells, errors = [], []
    for dtype in (jnp.float32, jnp.bfloat16):
      best = None
      for chunk in chunks:
        if BATCH % chunk:
          continue
        function = make(chunk, dtype)
        ms = median_ms(function, *make_args, repeats=repeats)
        if best is None or ms < best[0]:
          best = (ms, chunk, relative_error(function(*make_args), want))
      cells.append(f"{best[0]:.1f} ({best[1]})")
      errors.append(f"{best[2]:.1e}")
    yield (
      f"| {BATCH}x{size}x{size}, {k}x{k} {c_in}->{c_out} | {name} | "
      f"{xla_ms:.1f} | {cells[0]} | {cells[1]} | {' / '.join(errors)} |"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--chunks", default="4,8,16")
  parser.add_argument(
    "--shapes",
    default=None,
    help="size:kernel:C_in:C_out,... (default: SHAPES)",
  )
  args = parser.parse_args()
  shapes = (
    SHAPES
    if args.shapes is None
    else tuple(
      tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")
    )
  )
  chunks = [int(c) for c in args.chunks.split(",")]
  build()
  print(
    "| shape | product | XLA ms | patches f32 ms (chunk) | "
    "patches bf16 ms (chunk) | rel. error f32 / bf16 |"
  )
  print("|---|---|---|---|---|---|")
  for shape in shapes:
    for row in measure_shape(*shape, chunks=chunks, repeats=args.repeats):
      print(row, flush=True)


if __name__ == "__main__":
  main()
