"""Wall time of a 4-point small sweep: one point after another, and as Ray
tasks two at a time.

Usage:
  python experiments/bench_sweep.py [--steps 400] [--max_concurrent 2]
      [--out experiments/results/sweep_launchers.md]

The sweep is four `small=true` points on RTS (CNN and ST-CNN, seeds 0 and
1) for ``--steps`` steps of 128 each, one evaluation at the end. Each
launcher runs the whole sweep through ``python -m stn_jax.sweep`` in a
fresh workdir (the dataset is built beforehand, so no run pays for it); the
time is the command's wall time, Ray's cluster start included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from stn_jax.provenance import commit_description, machine_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = """
def sweep_bench(add):
  for model in ("cnn", "st_cnn"):
    for seed in (0, 1):
      add(f"distortion=rts,model={model},small=true", seed=seed)
"""


def config_file(folder: str) -> str:
  """configs/mnist.py plus the benchmark sweep, beside its common.py."""
  for name in ("mnist.py", "common.py"):
    with open(os.path.join(REPO, "configs", name)) as f:
      text = f.read()
    if name == "mnist.py":
      text += "\n" + SWEEP
      name = "bench_config.py"
    with open(os.path.join(folder, name), "w") as f:
      f.write(text)
  return os.path.join(folder, "bench_config.py")


def run(config: str, steps: int, extra: list[str]) -> float:
  """Seconds for the whole sweep in a fresh workdir."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [
      sys.executable,
      "-m",
      "stn_jax.sweep",
      f"--config={config}",
      "--sweep=bench",
      f"--workdir={workdir}",
      f"--set=num_steps={steps}",
      f"--set=eval_every={10 * steps}",
      f"--set=checkpoint_every={10 * steps}",
      *extra,
    ]
    start = time.perf_counter()
    subprocess.run(
      command, cwd=REPO, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--max_concurrent", type=int, default=2)
  parser.add_argument("--out", default="experiments/results/sweep_launchers.md")
  args = parser.parse_args(argv)
  from stn_jax.data import datasets

  datasets.load_arrays("distorted_mnist/rts", "test")  # built once, here
  with tempfile.TemporaryDirectory() as folder:
    config = config_file(folder)
    rows = []
    for name, extra in (
      ("local (sequential)", ["--launcher=local"]),
      (
        f"ray, max_concurrent={args.max_concurrent}",
        ["--launcher=ray", f"--max_concurrent={args.max_concurrent}"],
      ),
    ):
      seconds = run(config, args.steps, extra)
      rows.append((name, seconds))
      print(f"{name}: {seconds:.0f} s", flush=True)
  examples = 4 * args.steps * 128
  lines = [
    "# Sweep launchers: a 4-point small sweep",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}",
    f"- sweep: RTS, small CNN and small ST-CNN x seeds 0, 1; {args.steps} "
    "steps of 128 per point, one evaluation (10k test digits) at the end; "
    "wall time of the whole `python -m stn_jax.sweep` command (Ray's local "
    "cluster start included)",
    "",
    "| launcher | wall time | examples/s (all points) | speed-up |",
    "|---|---|---|---|",
  ]
  base = rows[0][1]
  for name, seconds in rows:
    lines.append(
      f"| {name} | {seconds:.0f} s | {examples / seconds:.0f} | "
      f"{base / seconds:.2f}x |"
    )
  text = "\n".join(lines) + "\n"
  with open(args.out, "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
