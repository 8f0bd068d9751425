"""Test error against examples seen: each fast-recipe run beside the
``cpu_long`` run of the same cell, one figure per dataset.

Usage:
  python experiments/fast_curves.py --run "RTS ST-CNN fast=DIR" \
      --run "RTS ST-CNN cpu_long=DIR" [--points "LABEL=step:err,..."] \
      --batch_size 256 --out experiments/results/figures/fast_curves_mnist.png

Each ``--run`` is ``LABEL=WORKDIR`` (a run folder with ``metrics.jsonl``
and ``config.json``); its evaluations give one curve of % test error (solid)
and, where the run evaluated it, % validation error (dashed). ``--points``
adds a curve from evaluations reported elsewhere (``step:percent`` pairs)
when a run's folder is gone, with ``--points_batch_size`` its batch size.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def evaluations(folder: str) -> tuple[int, dict[str, list[tuple[int, float]]]]:
  """(batch size, {split: [(examples seen, % error), ...]}) of a run folder:
  the last logged value of each step wins (a resumed run repeats steps)."""
  with open(os.path.join(folder, "config.json")) as f:
    batch_size = json.load(f)["batch_size"]
  found: dict[str, dict[int, float]] = {}
  with open(os.path.join(folder, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      for key, value in row.items():
        if key.endswith("_error") and not key.startswith("train"):
          split = key[: -len("_error")]
          found.setdefault(split, {})[row["step"]] = 100 * value
  return batch_size, {
    split: sorted((step * batch_size, err) for step, err in rows.items())
    for split, rows in found.items()
  }


def parse_points(text: str) -> tuple[str, list[tuple[int, float]]]:
  """``'LABEL=step:err,step:err'`` -> (label, [(step, err), ...])."""
  label, _, pairs = text.partition("=")
  points = []
  for pair in pairs.split(","):
    step, _, err = pair.partition(":")
    points.append((int(step), float(err)))
  return label, points


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", default=[])
  parser.add_argument("--points", action="append", default=[])
  parser.add_argument("--points_batch_size", type=int, default=256)
  parser.add_argument("--title", default="")
  parser.add_argument("--paper", type=float, help="the paper's % error")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, spec in enumerate(args.run):
    label, _, folder = spec.partition("=")
    if not os.path.isfile(os.path.join(folder, "metrics.jsonl")):
      parser.error(f"--run {spec!r}: no metrics.jsonl in {folder!r}")
    _, curves = evaluations(folder)
    color = f"C{i}"
    for split, rows in sorted(curves.items()):
      style = "-" if split == "test" else "--"
      ax.plot(
        [x / 1e6 for x, _ in rows],
        [y for _, y in rows],
        style,
        marker="o",
        markersize=3,
        color=color,
        label=f"{label}: {split}",
      )
  for j, spec in enumerate(args.points, len(args.run)):
    label, points = parse_points(spec)
    ax.plot(
      [s * args.points_batch_size / 1e6 for s, _ in points],
      [e for _, e in points],
      ":",
      marker="s",
      markersize=3,
      color=f"C{j}",
      label=f"{label}: test",
    )
  if args.paper is not None:
    ax.axhline(args.paper, color="gray", lw=0.8)
    ax.annotate(
      f"paper {args.paper}%",
      (0, args.paper),
      textcoords="offset points",
      xytext=(4, 4),
      color="gray",
    )
  ax.set_xlabel("training examples seen (millions)")
  ax.set_ylabel("% error")
  ax.set_yscale("log")
  ax.set_title(args.title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
