"""One run in 1 process vs N processes on this machine (jax.distributed).

Usage:
  python experiments/bench_distributed.py [--processes 2] [--steps 300]
      [--config CONFIG] [--out experiments/results/distributed.md]

Runs ``python -m stn_jax.main`` for ``--steps`` steps (default: the `make
train` config, small ST-CNN on RTS, batch 128) once as one process and once
as ``--processes`` processes on localhost (``--coordinator_address``,
``--num_processes``, ``--process_id``; each process gets an equal share of
the cores through ``taskset`` when it is available), and reads the
examples/s that process 0 logged every 50 steps (first interval dropped,
median of the rest). The global batch is the same, so this is the cost of
splitting one run over processes that talk through gloo, not a speed-up
claim: on one machine the processes share its cores and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_train_loop import main_command

from stn_jax.provenance import commit_description, machine_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = (
  "configs/mnist.py:distortion=rts,model=st_cnn,transform=affine,small=true"
)


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(config: str, steps: int, processes: int) -> tuple[float, float]:
  """(median examples/s of process 0's logged intervals, wall seconds)."""
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as workdir:
    port = _port()
    started = time.perf_counter()
    running = []
    for pid in range(processes):
      command = main_command(config, workdir, steps)
      if processes > 1:
        command += [
          f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={processes}",
          f"--process_id={pid}",
        ]
        share = max(1, cores // processes)
        first = (pid * share) % cores
        if shutil.which("taskset"):
          command = ["taskset", "-c", f"{first}-{first + share - 1}", *command]
      running.append(
        subprocess.Popen(
          command,
          cwd=REPO,
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
          text=True,
        )
      )
    for process in running:
      _, stderr = process.communicate()
      if process.returncode:
        raise SystemExit(f"a process failed: {stderr[-2000:]}")
    wall = time.perf_counter() - started
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rates = [
        r["examples_per_second"]
        for r in map(json.loads, f)
        if "examples_per_second" in r
      ]
  return statistics.median(rates[1:]), wall


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--config", default=CONFIG)
  parser.add_argument("--out", default="experiments/results/distributed.md")
  args = parser.parse_args(argv)
  rows = []
  for n in (1, args.processes):
    rate, wall = run(args.config, args.steps, n)
    print(f"{n} process(es): {rate:.0f} ex/s, {wall:.0f} s", flush=True)
    rows.append((n, rate, wall))
  lines = [
    "# One run split over processes (jax.distributed, gloo) on one machine",
    "",
    f"- command: `python experiments/bench_distributed.py "
    f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}",
    f"- run: `{args.config}`, {args.steps} steps, the same global batch; "
    "examples/s as process 0 logged every 50 steps, first interval "
    "dropped, median of the rest; wall time of the whole command "
    "(start-up, compilation and the final evaluation included)",
    "",
    "| processes | examples/s | wall time |",
    "|---|---|---|",
    *(f"| {n} | {rate:,.0f} | {wall:.0f} s |" for n, rate, wall in rows),
    "",
  ]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
