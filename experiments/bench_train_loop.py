"""Training-loop speed of a run at several checkouts or settings, round robin.

Usage:
  python experiments/bench_train_loop.py --checkout NAME=PATH[@k=v,k=v]
      [--checkout ...] [--config CONFIG] [--steps 600] [--rounds 2]
      [--out experiments/results/train_loop.md]

Each round runs ``python -m stn_jax.main`` (default: the `make train`
config, small ST-CNN on RTS, batch 128) for ``--steps`` steps from every
checkout in turn (its own ``stn_jax`` first on PYTHONPATH, a fresh workdir,
no evaluation until the end, the ``k=v`` config overrides after ``@``) and
reads the examples/s that the run logged every 50 steps. The first logged
interval (compilation, kernel build) is dropped; the table gives the median
over the remaining intervals of all rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from stn_jax.provenance import commit_description, machine_description

CONFIG = (
  "configs/mnist.py:distortion=rts,model=st_cnn,transform=affine,small=true"
)


def main_command(config: str, workdir: str, steps: int) -> list[str]:
  """``python -m stn_jax.main`` for ``steps`` steps, logging every 50, with
  no evaluation or checkpoint before the end."""
  return [
    sys.executable,
    "-m",
    "stn_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.num_steps={steps}",
    f"--config.eval_every={10 * steps}",
    f"--config.checkpoint_every={10 * steps}",
    "--config.log_every=50",
  ]


def run_once(
  path: str, steps: int, config: str = CONFIG, overrides=()
) -> list[float]:
  """examples/s of each logged interval but the first."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [
      *main_command(config, workdir, steps),
      *(f"--config.{item}" for item in overrides),
    ]
    inherited = os.environ.get("PYTHONPATH")
    env = {
      **os.environ,
      "PYTHONPATH": os.pathsep.join([path, *filter(None, [inherited])]),
    }
    subprocess.run(
      command, cwd=path, env=env, check=True, capture_output=True, text=True
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rates = [
        record["examples_per_second"]
        for record in map(json.loads, f)
        if "examples_per_second" in record
      ]
  return rates[1:]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--checkout",
    action="append",
    required=True,
    help="NAME=PATH of a stn_jax checkout",
  )
  parser.add_argument("--config", default=CONFIG)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default="experiments/results/train_loop.md")
  args = parser.parse_args(argv)
  checkouts = {}
  for item in args.checkout:
    name, spec = item.split("=", 1)
    path, _, overrides = spec.partition("@")
    checkouts[name] = (path, [o for o in overrides.split(",") if o])
  rates = {name: [] for name in checkouts}
  for round_index in range(args.rounds):
    for name, (path, overrides) in checkouts.items():
      rates[name] += run_once(
        os.path.abspath(path), args.steps, args.config, overrides
      )
      print(
        f"round {round_index + 1} {name}: median "
        f"{statistics.median(rates[name]):.0f} ex/s",
        flush=True,
      )
  lines = [
    "# Training-loop speed",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit (this script): {commit_description()}",
    f"- machine: {machine_description()}",
    f"- run: `{args.config}`, {args.steps} steps per run, {args.rounds} "
    "rounds, checkouts run round robin; examples/s as logged every 50 "
    "steps, first interval dropped",
    "",
    "| checkout | overrides | median examples/s | intervals |",
    "|---|---|---|---|",
  ]
  for name, values in rates.items():
    median = statistics.median(values)
    overrides = ", ".join(checkouts[name][1])
    lines.append(f"| {name} | {overrides} | {median:,.0f} | {len(values)} |")
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
