"""Convolution forward and gradients at the paper networks' shapes.

Usage:
  python experiments/bench_conv.py [--repeats 5]
  XLA_FLAGS=--xla_cpu_use_onednn=true python experiments/bench_conv.py

Prints, per shape (batch 256, 'SAME', stride 1), the median ms of XLA's
forward convolution, XLA's input gradient and weight gradient (each a
separate jitted VJP), and the same two gradients computed by
``stn_jax.models.convolution`` (columns for the input gradient, chunked
patch products for the weight gradient). Run it under different
``XLA_FLAGS`` to compare XLA's CPU options.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from stn_jax.models import conv_products

# (batch, size, C_in, C_out, kernel): the RTS ST-CNN's and RTS CNN's
# classifier convs, and the GTSRB CNN's (width 0.25) first conv and a
# localisation conv.
SHAPES = (
  (256, 21, 1, 32, 9),
  (256, 10, 32, 32, 7),
  (256, 42, 1, 32, 9),
  (256, 21, 32, 32, 7),
  (256, 32, 3, 50, 7),
  (256, 16, 50, 62, 4),
)


def median_ms(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def xla_conv(x, w):
  return lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(
    "| shape | XLA fwd | XLA input grad | XLA weight grad | "
    "columns input grad | patches weight grad |"
  )
  print("|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for n, size, c_in, c_out, k in SHAPES:
    x = jnp.asarray(rng.uniform(size=(n, size, size, c_in)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(k, k, c_in, c_out)), jnp.float32)
    g = jnp.asarray(rng.uniform(size=(n, size, size, c_out)), jnp.float32)
    pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)
    forward = jax.jit(xla_conv)
    x_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: xla_conv(x, w), x)[1](g))
    w_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: xla_conv(x, w), w)[1](g))
    columns = jax.jit(
      functools.partial(
        conv_products.input_gradient_by_columns,
        in_shape=x.shape,
        padding=(pad, pad),
      )
    )
    patches = jax.jit(
      functools.partial(
        conv_products.weight_gradient_by_patches,
        kernel_size=(k, k),
        padding=(pad, pad),
      )
    )
    times = [
      median_ms(forward, x, w, repeats=args.repeats),
      median_ms(x_grad, x, w, g, repeats=args.repeats),
      median_ms(w_grad, x, w, g, repeats=args.repeats),
      median_ms(columns, g, w, repeats=args.repeats),
      median_ms(patches, x, g, repeats=args.repeats),
    ]
    print(
      f"| {n}x{size}x{size}, {k}x{k} {c_in}->{c_out} | "
      + " | ".join(f"{t:.1f}" for t in times)
      + " |",
      flush=True,
    )


if __name__ == "__main__":
  main()
