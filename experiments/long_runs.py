"""Longer CPU runs that approach the paper's numbers, one table row per run.

Usage:
  python experiments/long_runs.py --workdir workdirs/long_runs
      [--scale cpu_long|fast]
      [--cells "RTS ST-CNN,RTS CNN,GTSRB CNN + 3 ST,GTSRB CNN"]
      [--out experiments/results/long_runs.md] [--report_only] [--set k=v]
      [--archive experiments/results/runs/long_runs]

Each cell is one run of a table script's ``--scale`` (default
``cpu_long``: the paper's networks and schedule shape with a budget of
about 1-2 hours on 2 CPU cores; ``fast``: the recipe chosen on the
validation split to need fewer examples, results in
``experiments/results/fast_runs.md``):

- ``RTS CNN``, ``RTS ST-CNN``: ``table1_distorted_mnist.py --scale
  SCALE`` (RTS, seed 0), % test error;
- ``GTSRB CNN``, ``GTSRB CNN + 3 ST``: ``gtsrb.py --scale SCALE``
  (32x32, seed 0), % test accuracy.

Runs go through the resumable sweep runner under ``--workdir`` (the same
points as the table scripts would make there), one after another in the
order of ``--cells``. Interrupt with Ctrl-C or SIGTERM and rerun the same
command to continue from the last checkpoint; finished runs are reused.
The table is rewritten from every finished run after each one. With
``--archive``, each finished run's small files are also kept there (to
commit), and a rerun with a lost workdir reports them without training.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import NamedTuple

import gtsrb as gtsrb_table
import table1_distorted_mnist as table1
from _tables import (
  DONE,
  header_lines,
  kept_notes,
  recipe_words,
  run_in_seed_passes,
  run_script,
)

from stn_jax import sweep
from stn_jax.sweep import archive as sweep_archive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Cell(NamedTuple):
  """One run: which sweep point of which table script, and the paper's
  number (``accuracy``: the cell reports % accuracy, else % error)."""

  config: str  # config file, relative to the repo
  sweep: str  # its sweep holding the point
  point: dict  # the point's config arguments that select it
  scales: dict  # the table script's SCALES (--scale picks one)
  paper: str
  accuracy: bool
  extra_arg: str = ""  # appended to the point's arg, as the script does


CELLS = {
  "RTS CNN": Cell(
    "configs/mnist.py",
    "table1",
    {"distortion": "rts", "model": "cnn", "seed": "0"},
    table1.SCALES,
    "0.8",
    False,
  ),
  "RTS ST-CNN": Cell(
    "configs/mnist.py",
    "table1",
    {
      "distortion": "rts",
      "model": "st_cnn",
      "transform": "affine",
      "seed": "0",
    },
    table1.SCALES,
    "0.5",
    False,
  ),
  "GTSRB CNN": Cell(
    "configs/gtsrb.py",
    "models",
    {"model": "gtsrb_cnn", "seed": "0"},
    gtsrb_table.SCALES,
    "98.85 (single CNN, size not stated)",
    True,
    "size=32",
  ),
  "GTSRB CNN + 3 ST": Cell(
    "configs/gtsrb.py",
    "models",
    {"model": "gtsrb_st_cnn", "seed": "0"},
    gtsrb_table.SCALES,
    "99.71 (48x48)",
    True,
    "size=32",
  ),
}


def run_cell(
  name: str,
  workdir: str,
  overrides: dict,
  report_only: bool,
  archive: str | None = None,
  scale_name: str = "cpu_long",
):
  """Runs (or, with ``report_only``, looks up) one cell at the table
  script's scale ``scale_name``; returns its sweep record and its config.
  ``archive`` keeps finished runs' small files (laid out as ``workdir``:
  ``<config name>/<sweep>/<point>``)."""
  cell = CELLS[name]
  if scale_name not in cell.scales:
    return None, None
  scale = cell.scales[scale_name]
  config_path = os.path.join(REPO, cell.config)
  overrides = {**scale.overrides, **overrides}
  wanted = cell.point.items()

  def keep(arg):
    return all(arg.get(k) == v for k, v in wanted)

  config_name = os.path.splitext(os.path.basename(cell.config))[0]
  records, _ = run_in_seed_passes(
    config_path,
    (cell.sweep,),
    os.path.join(workdir, config_name),
    seeds=1,
    keep=keep,
    overrides=overrides,
    extra_arg=",".join(a for a in (scale.arg, cell.extra_arg) if a),
    report_only=report_only,
    archive=archive and os.path.join(archive, config_name),
  )
  if len(records) != 1:
    raise SystemExit(
      f"error: cell {name!r} matched {len(records)} points of sweep "
      f"{cell.sweep!r} in {cell.config}; expected 1."
    )
  record = records[0]
  record["point_dir"] = os.path.join(
    workdir,
    os.path.splitext(os.path.basename(cell.config))[0],
    cell.sweep,
    record["name"],
  )
  module = sweep.load_config_module(config_path)
  config = sweep.build_config(
    module,
    {"arg": record["arg"], "overrides": {}},
    {k: v for k, v in overrides.items() if k != "tfds_dir"},
  )
  return record, config


def step_minutes(point_dir: str, config) -> float:
  """Minutes the run's training steps took, summed over every invocation
  of a resumed run (:func:`stn_jax.sweep.archive.step_seconds` of its
  metrics log; for a run restored from an archive manifest, the time the
  manifest recorded). Evaluations and checkpoint saves are not included."""
  rows = []
  with open(os.path.join(point_dir, "metrics.jsonl")) as f:
    for line in f:
      rows.append(json.loads(line))
  seconds = sweep_archive.step_seconds(rows, config.batch_size)
  manifest = sweep_archive.read_manifest(point_dir)
  if not seconds and manifest is not None:
    seconds = manifest.get("step_seconds", 0.0)
  return seconds / 60


def table(
  results: dict, wall: float, scale_name: str = "cpu_long"
) -> list[str]:
  """The results file: header, one row per finished run, what is missing."""
  title = {
    "cpu_long": "Long CPU runs that approach the paper",
    "fast": "The fast recipe: the paper's networks with fewer examples",
  }.get(scale_name, f"Runs at the {scale_name} scale")
  lines = header_lines(title) + [
    f"- scale: `{scale_name}`; wall time of this invocation: "
    f"{wall / 60:.1f} min",
    "- `<ours>`: % test error for RTS, % test accuracy for GTSRB (official "
    "test set, 32x32), at the end of training (no selection on the test "
    "set); `<paper>`: the same measure as published.",
    "- wall time: of the run's last invocation (a resumed run's earlier "
    "invocations are not in it); steps alone: the training steps' own "
    "time summed over every invocation from metrics.jsonl (no evaluation "
    "or checkpointing).",
    "- validation: the same measure on the validation split (distorted "
    "MNIST: the last 5,000 training digits, distorted once; GTSRB: the "
    "held-out tracks), where the run evaluates it.",
    "",
    "| cell | ours | paper | validation | budget | wall time |",
    "|---|---|---|---|---|---|",
  ]
  missing = []
  for name, (record, config) in results.items():
    cell = CELLS[name]
    if record is None:
      missing.append(f"- {name}: no `{scale_name}` scale yet")
      continue
    if record["status"] not in DONE:
      missing.append(f"- {name}: {record['status']}")
      continue

    def measure(error, accuracy=cell.accuracy):
      return 100 * (1 - error) if accuracy else 100 * error

    ours = measure(record["results"]["test_error"])
    validation = record["results"].get("validation_error")
    validation = "-" if validation is None else f"{measure(validation):.2f}"
    minutes = record["results"].get("wall_seconds", 0) / 60
    steps = step_minutes(record["point_dir"], config)
    lines.append(
      f"| {name} | {ours:.2f} | {cell.paper} | {validation} | "
      f"{recipe_words(config)} | "
      f"{minutes:.0f} min (last invocation; steps alone {steps:.0f} min "
      "over all) |"
    )
  if missing:
    lines += ["", "Not in the table yet:", "", *missing]
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--cells", default=",".join(CELLS))
  parser.add_argument(
    "--scale",
    default="cpu_long",
    choices=("cpu_long", "fast"),
    help="the table scripts' scale every cell runs at",
  )
  parser.add_argument(
    "--out",
    help="results file (default: experiments/results/long_runs.md for "
    "cpu_long, fast_runs.md for fast)",
  )
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument(
    "--archive",
    help="folder keeping finished runs' small files to commit "
    "(stn_jax.sweep.archive); restored into --workdir first",
  )
  parser.add_argument(
    "--set", action="append", default=[], help="override for every run"
  )
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.cells.split(",") if n.strip()]
  unknown = [n for n in names if n not in CELLS]
  if unknown:
    parser.error(f"--cells: unknown {unknown}; expected some of {list(CELLS)}")
  overrides = sweep.parse_overrides(args.set)
  out = args.out or os.path.join(
    "experiments/results",
    "long_runs.md" if args.scale == "cpu_long" else f"{args.scale}_runs.md",
  )
  start = time.perf_counter()
  results = {}
  for name in names:
    results[name] = run_cell(
      name,
      args.workdir,
      overrides,
      args.report_only,
      args.archive,
      scale_name=args.scale,
    )
    record = results[name][0]
    if record is not None and record["status"] == "interrupted":
      break
  lines = table(results, time.perf_counter() - start, args.scale)
  lines += kept_notes(out)
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  failed = [n for n, (r, _) in results.items() if r and r["status"] == "failed"]
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(run_script(main))
