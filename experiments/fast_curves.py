"""Test error against examples seen: each fast-recipe run beside the
``cpu_long`` run of the same cell, one figure per dataset.

Usage:
  python experiments/fast_curves.py --run "RTS ST-CNN fast=DIR" \
      --run "RTS ST-CNN cpu_long=DIR" [--points "LABEL=step:err,..."] \
      [--points_batch_size 256] [--paper "ST-CNN=0.5" ...] \
      --out experiments/results/figures/fast_curves_mnist.png

Each ``--run`` is ``LABEL=WORKDIR`` (a run folder with ``metrics.jsonl``
and ``config.json``, or an archived run's folder with its
``manifest.json``); its evaluations give one curve of % test error (solid)
and, where the run evaluated it, one of % validation error. ``--points``
adds a curve from evaluations reported elsewhere (``step:percent`` pairs)
when a run's folder is gone, with ``--points_batch_size`` its batch size.
Each ``--paper`` draws a flat line at a published error.
"""

from __future__ import annotations

import argparse
import json
import os

from stn_jax import viz
from stn_jax.sweep import archive as sweep_archive


def evaluations(folder: str) -> tuple[int, dict[str, list[tuple[int, float]]]]:
  """(batch size, {split: [(examples seen, % error), ...]}) of a run folder
  (its metrics.jsonl and config.json) or of an archived run (its
  manifest.json); the last logged value of each step wins (a resumed run
  repeats steps)."""
  manifest = sweep_archive.read_manifest(folder)
  if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
    with open(os.path.join(folder, "config.json")) as f:
      batch_size = json.load(f)["batch_size"]
    with open(os.path.join(folder, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  elif manifest is not None:
    batch_size = manifest["config"]["batch_size"]
    rows = manifest.get("evaluations", [])
  else:
    raise FileNotFoundError(f"{folder} has no metrics.jsonl or manifest.json")
  found: dict[str, dict[int, float]] = {}
  for row in rows:
    for key, value in row.items():
      if key.endswith("_error") and not key.startswith("train"):
        split = key[: -len("_error")]
        found.setdefault(split, {})[row["step"]] = 100 * value
  return batch_size, {
    split: sorted((step * batch_size, err) for step, err in points.items())
    for split, points in found.items()
  }


def parse_points(text: str) -> tuple[str, list[tuple[int, float]]]:
  """``'LABEL=step:err,step:err'`` -> (label, [(step, err), ...])."""
  label, _, pairs = text.partition("=")
  points = []
  for pair in pairs.split(","):
    step, _, err = pair.partition(":")
    points.append((int(step), float(err)))
  return label, points


def parse_paper(text: str) -> tuple[str, float]:
  """``'0.5'`` -> ('', 0.5); ``'ST-CNN=0.5'`` -> (' ST-CNN', 0.5): the
  label's part of the line's name ('paper ST-CNN: 0.5%')."""
  label, _, value = text.rpartition("=")
  try:
    number = float(value)
  except ValueError:
    raise ValueError(
      f"expected a percent error, VALUE or LABEL=VALUE; got {value!r}"
    ) from None
  return (f" {label}" if label else ""), number


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", default=[])
  parser.add_argument("--points", action="append", default=[])
  parser.add_argument("--points_batch_size", type=int, default=256)
  parser.add_argument("--title", default="")
  parser.add_argument(
    "--paper",
    action="append",
    default=[],
    help="the paper's error in percent, 'VALUE' or 'LABEL=VALUE' (repeatable)",
  )
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  curves = []
  for spec in args.run:
    label, _, folder = spec.partition("=")
    try:
      _, found = evaluations(folder)
    except (FileNotFoundError, KeyError, ValueError) as error:
      parser.error(f"--run {spec!r}: {error}")
    for split, rows in sorted(found.items(), key=lambda kv: kv[0] != "test"):
      curves.append((f"{label}: {split}", [(x / 1e6, y) for x, y in rows]))
  for spec in args.points:
    label, points = parse_points(spec)
    scale = args.points_batch_size / 1e6
    curves.append((f"{label}: test", [(s * scale, e) for s, e in points]))
  if not curves:
    parser.error("give at least one --run or --points")
  high = max(x for _, line in curves for x, _ in line)
  for spec in args.paper:
    try:
      label, value = parse_paper(spec)
    except ValueError as error:
      parser.error(f"--paper {spec!r}: {error}")
    curves.append((f"paper{label}: {value}%", [(0, value), (high, value)]))
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  viz.line_plot(
    [
      (
        name
        if name.startswith("paper")
        else f"{name} (last {line[-1][1]:.2f})",
        line,
      )
      for name, line in curves
    ],
    args.out,
    title=args.title or "error against examples seen",
    xlabel="training examples seen (millions)",
    ylabel="% error",
    size=(800, 480),
  )
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
