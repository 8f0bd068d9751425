"""Where one training step's time goes, per op, on this machine.

Usage:
  python experiments/profile_step.py [--models rts_st_cnn,rts_cnn,gtsrb_st_cnn]
      [--batch 256] [--repeats 10] [--gtsrb_width 0.25]
      [--out experiments/results/cpu_profile_raw.md]

For each model (built from the configs, as ``bench_models_torch.py``):

1. the whole jitted train step (forward, cross-entropy, backward, Adam),
   median ms per batch;
2. every convolution, sampler call (``affine_grid``/``params_to_grid`` +
   ``grid_sample``), local contrast normalisation, dense layer and the
   optimiser update, timed alone at the shapes the model gives it:
   forward, and forward + backward (the VJP with respect to its input and
   its parameters, as in training). The ops are found by tracing the model
   once with their ``__call__`` wrapped, so the list follows the code;
3. the FLOPs of each convolution and dense layer, counted from their
   shapes (forward ``2 * N * H * W * kh * kw * C_in * C_out``; forward +
   backward three times that: the input and the weight gradient cost one
   forward each), and the achieved GFLOP/s. XLA's cost analysis is not
   used: it counts a loop's body once, and the patch-product gradients
   loop over image chunks.

The per-op times add up to less than the step (pooling, ReLU,
cross-entropy, fusion boundaries); the table says how much is left.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_models_torch import model_configs
from flax import nnx

from stn_jax import models, ops, recipe, steps, xla_cpu
from stn_jax.models import contrast, layers
from stn_jax.provenance import commit_description, machine_description


def median_ms(fn, args, repeats):
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def recorded_ops(model, images):
  """``[(kind, name, module, input)]`` for every conv, dense layer,
  transformer and contrast normalisation the model calls on ``images``,
  with concrete inputs of the right shapes (captured in a first pass)."""
  calls = []
  originals = {}
  kinds = {
    nnx.Conv: "conv",
    nnx.Linear: "dense",
    layers.SpatialTransformer: "sampler",
    contrast.LocalContrastNorm: "contrast norm",
  }
  for cls, kind in kinds.items():
    original = cls.__call__
    originals[cls] = original

    def wrapped(self, x, *a, _original=original, _kind=kind, **k):
      calls.append((_kind, self, np.asarray(x)))
      return _original(self, x, *a, **k)

    cls.__call__ = wrapped
  try:
    model(images)
  finally:
    for cls, original in originals.items():
      cls.__call__ = original
  return calls


def analytic_flops(kind, module, x):
  """Forward FLOPs of a convolution (stride 1, 'SAME') or dense layer on
  ``x``; 0 for other ops."""
  if kind == "conv":
    kh, kw, c_in, c_out = module.kernel.shape
    n, h, w, _ = x.shape
    return 2.0 * n * h * w * kh * kw * c_in * c_out
  if kind == "dense":
    n_in, n_out = module.kernel.shape
    return 2.0 * x.shape[0] * n_in * n_out
  return 0.0


def describe(kind, module, x):
  if kind == "conv":
    k = module.kernel.shape
    return f"conv {k[0]}x{k[1]} {k[2]}->{k[3]} on {x.shape[1]}x{x.shape[2]}"
  if kind == "dense":
    k = module.kernel.shape
    return f"dense {k[0]}->{k[1]}"
  if kind == "sampler":
    return f"grid+sample {x.shape[1]}x{x.shape[2]}x{x.shape[3]}"
  return f"contrast norm {x.shape[1]}x{x.shape[2]}x{x.shape[3]}"


def op_functions(kind, module, x):
  """(forward, forward+backward) functions of (params, x) for one op; for
  a transformer only the grid and sampler (its localisation net's layers
  are timed as their own convs and dense layers)."""
  graphdef, params = nnx.split(module)

  if kind == "sampler":

    def apply_theta(theta, x):
      m = nnx.merge(graphdef, params)
      grid = ops.params_to_grid(
        m.transform, theta, m.out_size, align_corners=m.align_corners
      )
      return m.sample(x, grid)

    theta = nnx.merge(graphdef, params).transform_params(x)

    def forward(_, x):
      return apply_theta(theta, x)

    def forward_backward(_, x, cotangent):
      _, vjp = jax.vjp(apply_theta, theta, x)
      return vjp(cotangent)

    return forward, forward_backward
  else:

    def apply(params, x):
      return nnx.merge(graphdef, params)(x)

  def forward_backward(params, x, cotangent):
    _, vjp = jax.vjp(apply, params, x)
    return vjp(cotangent)

  return apply, forward_backward


def profile_model(name, config, in_shape, num_classes, batch, repeats):
  config = config.copy_and_resolve_references()
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  model = models.from_config(config, in_shape)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(batch, *in_shape)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  rows = []
  # Every timed function compiled as the training loop compiles its step
  # (config.xla_cpu_library).
  jit = functools.partial(
    jax.jit,
    compiler_options=xla_cpu.step_compiler_options(config),
  )

  # The whole step.
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer)
  data = {"image": images, "label": labels}
  step = jit(
    functools.partial(steps.train_step, graphdef=graphdef, optimizer=optimizer)
  )
  step_ms = median_ms(step, (state, data), repeats)

  # The optimiser update alone.
  params = state.model
  grads = jax.tree.map(jnp.ones_like, params)

  def update(grads, opt_state, params):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  update_jit = jit(update)
  rows.append(
    (
      "optimizer update",
      median_ms(update_jit, (grads, state.opt_state, params), repeats),
      None,
      0.0,
      0.0,
    )
  )

  for kind, module, x in recorded_ops(model, images):
    x = jnp.asarray(x)
    forward, forward_backward = op_functions(kind, module, x)
    params = nnx.state(module)
    f_ms = median_ms(jit(forward), (params, x), repeats)
    # A random cotangent: with a constant one XLA may simplify the
    # gradients (e.g. a product with ones becomes a sum).
    out = jax.eval_shape(forward, params, x)
    cotangent = jnp.asarray(
      np.random.default_rng(1).normal(size=out.shape), out.dtype
    )
    fb_ms = median_ms(jit(forward_backward), (params, x, cotangent), repeats)
    forward_flops = analytic_flops(kind, module, x)
    rows.append(
      (describe(kind, module, x), fb_ms, f_ms, forward_flops, 3 * forward_flops)
    )
  step_flops = sum(row[4] for row in rows)
  return step_ms, step_flops, rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="rts_st_cnn,rts_cnn,gtsrb_st_cnn")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--gtsrb_width", type=float, default=0.25)
  parser.add_argument("--out", default="experiments/results/cpu_profile_raw.md")
  args = parser.parse_args(argv)
  configs = model_configs(args.gtsrb_width)
  lines = [
    "# Per-op profile of one training step",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}",
    f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`; every timed function "
    "compiled with the configs' `xla_cpu_library` (default 'auto': "
    f"{xla_cpu.resolve_library('auto')})",
    f"- batch {args.batch}, median of {args.repeats}; fwd+bwd is the VJP "
    "with respect to the op's input and parameters for a random cotangent; FLOPs counted from the "
    "conv and dense shapes (fwd+bwd = 3 x fwd); the step's GFLOP are "
    "theirs",
    "",
  ]
  for name in args.models.split(","):
    if name not in configs:
      parser.error(f"--models: unknown {name!r}; choose from {sorted(configs)}")
    config, in_shape, num_classes = configs[name]
    step_ms, step_flops, rows = profile_model(
      name, config, in_shape, num_classes, args.batch, args.repeats
    )
    total = sum(r[1] for r in rows)
    lines += [
      f"## {name}",
      "",
      f"Whole step: **{step_ms:.1f} ms** per batch "
      f"({args.batch / step_ms * 1e3:,.0f} ex/s), "
      f"{step_flops / 1e9:.2f} GFLOP in its convs and dense layers, "
      f"{step_flops / step_ms / 1e6:.1f} GFLOP/s.",
      "",
      "| op | fwd ms | fwd+bwd ms | share of step | GFLOP (fwd+bwd) | GFLOP/s |",
      "|---|---|---|---|---|---|",
    ]
    for label, fb_ms, f_ms, _, fb_flops in rows:
      rate = f"{fb_flops / fb_ms / 1e6:.1f}" if fb_flops else "-"
      lines.append(
        f"| {label} | {'-' if f_ms is None else f'{f_ms:.2f}'} | {fb_ms:.2f} | "
        f"{fb_ms / step_ms:.0%} | {fb_flops / 1e9:.3f} | {rate} |"
      )
    lines += [
      f"| (rest: pooling, ReLU, loss, fusion) | | {step_ms - total:.2f} | "
      f"{(step_ms - total) / step_ms:.0%} | | |",
      "",
    ]
    print("\n".join(lines[-len(rows) - 7 :]), flush=True)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
