"""The paper networks' training step with their wide convolutions as patches.

Usage:
  python experiments/conv_im2col/whole_step.py {xla,f32,bf16}
      [--models rts_cnn,rts_st_cnn,gtsrb_st_cnn] [--chunk 4]

An experiment (its float32 mode is now the library's
``conv_weight_gradient='im2col'``, with rules for which layers take it).
``xla``: the step as the library runs it
(``conv_weight_gradient='auto'``). ``f32`` / ``bf16``: every convolution
with at least 8 input channels and an odd square kernel (the layers where
the patch products of ``bench.py`` were faster) computes its forward pass,
input gradient and weight gradient as C++ patches and one matrix product
per chunk of images (``bench.py``'s functions), in float32 or in bfloat16
with float32 accumulation. The layers with 1-3 input channels keep the
library's path. Prints ms per step (batch 256, Adam, synthetic data, the
GTSRB CNN + 3 ST at width 0.25): median of 3 blocks of 5 steps. Run the
modes one after another in separate processes and compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import bench  # noqa: E402
import bench_models_torch  # noqa: E402

from stn_jax.models import convolution  # noqa: E402


def patch_convolution(dtype, chunk):
  """A ``(x, kernel) -> conv`` ('SAME', stride 1) whose three products are
  patch products in ``dtype``."""

  @jax.custom_vjp
  def conv(x, kernel):
    return bench.forward(x, kernel, chunk, dtype)

  def forward(x, kernel):
    return conv(x, kernel), (x, kernel)

  def backward(residuals, cotangent):
    x, kernel = residuals
    dx = bench.input_gradient(cotangent, kernel, chunk, dtype)
    dw = bench.weight_gradient(x, cotangent, kernel.shape, chunk, dtype)
    return dx.astype(x.dtype), dw.astype(kernel.dtype)

  conv.defvjp(forward, backward)
  return conv


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("xla", "f32", "bf16"))
  parser.add_argument("--models", default="rts_cnn,rts_st_cnn,gtsrb_st_cnn")
  parser.add_argument("--chunk", type=int, default=4)
  args = parser.parse_args()
  if args.mode != "xla":
    bench.build()
    dtype = jnp.bfloat16 if args.mode == "bf16" else jnp.float32
    patched = patch_convolution(dtype, args.chunk)
    library = convolution.patch_gradient_conv

    def conv_general_dilated(lhs, rhs, window_strides, padding, *a, **k):
      kh, kw, c_in, _ = rhs.shape
      if (
        c_in >= 8
        and kh == kw
        and kh % 2 == 1
        and padding == "SAME"
        and all(s == 1 for s in window_strides)
        and lhs.shape[0] % args.chunk == 0
      ):
        return patched(lhs, rhs)
      return library(lhs, rhs, window_strides, padding, *a, **k)

    # conv() looks this name up when a model is built.
    convolution.patch_gradient_conv = conv_general_dilated
  configs = bench_models_torch.model_configs(0.25)
  for name in args.models.split(","):
    config, in_shape, num_classes = configs[name]
    run, _ = bench_models_torch.jax_step_fn(config, in_shape, num_classes, 256)
    run()
    run()
    blocks = []
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(5):
        run()
      blocks.append((time.perf_counter() - start) / 5)
    ms = 1e3 * statistics.median(blocks)
    print(f"{args.mode} {name}: {ms:.1f} ms per step, {256e3 / ms:,.0f} ex/s")


if __name__ == "__main__":
  main()
