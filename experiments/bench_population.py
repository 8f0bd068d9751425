"""Population mode speed-up: K members in one step vs K separate steps.

The one step is timed vmapped, as a lax.map and unrolled.

Usage: python experiments/bench_population.py [--members 1,8,32] [--steps 30]
       [--paper] [--out experiments/results/population.md]

Model: the small ST-CNN on RTS (configs/mnist.py small=true), batch 128 per
member, or with --paper the paper-size one at its batch (256). Times steady-state training steps (after compilation) on synthetic
42x42 batches, so data loading is not measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stn_jax import config_args, models, recipe, steps
from stn_jax.provenance import commit_description, machine_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mnist_config(arg):
  return config_args.load_config_module(
    os.path.join(REPO, "configs", "mnist.py")
  ).get_config(arg)


def _parse_members(text):
  try:
    counts = [int(k) for k in text.split(",")]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise argparse.ArgumentTypeError(
      f"expected positive member counts such as '1,8,32', got {text!r}"
    )
  return counts


METHODS = ("vmap", "map", "unroll")


def time_members(config, k, num_steps, methods=METHODS):
  """Steady-state seconds per step of K members: K separate jitted steps,
  one vmapped, one lax.map and one unrolled population step."""
  batch = config.batch_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(k, batch, 42, 42, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=(k, batch)), jnp.int32)

  states = []
  for seed in range(k):
    member = config.copy_and_resolve_references()
    member.seed = seed
    model = models.from_config(member, (42, 42, 1))
    optimizer = recipe.make_optimizer(member, nnx.state(model))
    graphdef, state = steps.init_state(model, optimizer)
    states.append(state)
  batches = [{"image": images[t], "label": labels[t]} for t in range(k)]
  shapes = jax.eval_shape(
    lambda s, b: steps.train_step(s, b, graphdef=graphdef, optimizer=optimizer)[
      1
    ],
    states[0],
    batches[0],
  )
  accumulators = [steps.empty_accumulator(shapes) for _ in range(k)]
  single_step = steps.make_train_step(graphdef, optimizer)

  # Sequential: each member its own call of the jitted step.
  def sequential():
    for t in range(k):
      states[t], accumulators[t] = single_step(
        states[t], accumulators[t], batches[t]
      )
    jax.block_until_ready(accumulators)

  # Population: one vmapped (or lax.map) step for all members.
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  hyper = {
    name: jnp.full((k,), value, jnp.float32)
    for name, value in recipe.member_hyperparameters(config).items()
  }
  schedule = recipe.learning_rate_schedule(
    recipe.member_optimizer_config(config)
  )
  stacked = {"state": stack(states), "acc": stack(accumulators)}
  batch_all = {"image": images, "label": labels}

  def together(method):
    step = steps.make_train_step(
      graphdef, optimizer, population=method, schedule=schedule
    )

    def run():
      stacked["state"], stacked["acc"] = step(
        stacked["state"], stacked["acc"], batch_all, hyper
      )
      jax.block_until_ready(stacked["acc"])

    return run

  timings = {}
  contenders = [("sequential", sequential)]
  contenders += [(method, together(method)) for method in methods]
  for name, fn in contenders:
    fn()  # compile
    fn()
    start = time.perf_counter()
    for _ in range(num_steps):
      fn()
    timings[name] = (time.perf_counter() - start) / num_steps
    print(
      f"K={k} {name}: {1e3 * timings[name]:.1f} ms per step of {k} members",
      flush=True,
    )
  return timings


CPU_NOTE = (
  "On a 2-core CPU a vmapped or lax.map population step is much SLOWER "
  "than separate steps (3 members of the small ST-CNN: vmap 0.16x, "
  "lax.map 0.17x, in this file's history; the plain CNN likewise): XLA's "
  "CPU convolutions seem to lose their fast path with per-member weights "
  "(vmap gives grouped convolutions) and inside loops (lax.map); not "
  "profiled further. The unrolled step (each member traced separately "
  "into one compiled step) keeps the separate steps' speed, so "
  "population.train_population's default method ('auto') unrolls on one "
  "CPU device and vmaps on accelerators."
)


def _parse_methods(text):
  methods = [m.strip() for m in text.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise argparse.ArgumentTypeError(
      f"expected some of {', '.join(METHODS)}, got {text!r}"
    )
  return methods


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--members",
    type=_parse_members,
    default=[3],
    help="member counts K to time, comma-separated (e.g. 1,8,32)",
  )
  parser.add_argument(
    "--methods",
    type=_parse_methods,
    default=list(METHODS),
    help="population step methods to time besides K separate steps "
    "(comma-separated; default: vmap,map,unroll). The unrolled step "
    "compiles K copies of the step: slow to compile at large K.",
  )
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--model", default="st_cnn")
  parser.add_argument(
    "--paper",
    action="store_true",
    help="the paper-size network and batch (configs/mnist.py without "
    "small=true) instead of the small CPU one",
  )
  parser.add_argument("--out", default="experiments/results/population.md")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps: expected a positive count, got {args.steps}")
  size = "" if args.paper else ",small=true"
  config = mnist_config(f"distortion=rts,model={args.model}{size}")
  batch = config.batch_size
  results = {
    k: time_members(config, k, args.steps, args.methods) for k in args.members
  }

  network = "paper-size" if args.paper else "small (small=true)"
  lines = [
    "# Population mode: K runs in one step",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}",
    f"- model: {network} {args.model} on 42x42 RTS inputs "
    f"(configs/mnist.py), its optimizer, batch {batch} per member; "
    f"steady-state step time over {args.steps} steps after compilation, "
    "synthetic batches (no data loading)",
    "",
    "| K | mode | ms per step (all members) | examples/s per member | "
    "examples/s in total | speed-up over K separate steps |",
    "|---|---|---|---|---|---|",
  ]
  labels = {
    "sequential": "K separate jitted steps",
    "vmap": "1 population step, `vmap`",
    "map": "1 population step, `lax.map`",
    "unroll": "1 population step, unrolled",
  }
  for k, timings in results.items():
    for name, seconds in timings.items():
      label = labels[name]
      lines.append(
        f"| {k} | {label} | {1e3 * seconds:.1f} | {batch / seconds:,.0f} | "
        f"{k * batch / seconds:,.0f} | "
        f"{timings['sequential'] / seconds:.2f}x |"
      )
  if jax.default_backend() == "cpu":
    lines += ["", CPU_NOTE]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
