"""Beyond test error: invariance and calibration of CNN, ST-CNN and IC-STN.

Usage:
  python experiments/beyond.py --workdir DIR [--seeds 3] [--scale cpu]
      [--out experiments/results/beyond.md] [--max_examples 1000]
      [--models cnn,st_cnn,ic_st_cnn] [--distortions rts,p]
      [--archive experiments/results/runs/beyond] [--report_only]
      [--set k=v ...]

Trains the ``beyond`` sweep of configs/mnist.py (CNN, ST-CNN and IC-STN
with K = 1, 2, 4 recurrences, on RTS with affine and P with projective
transformers) at a Table 1 scale (default ``cpu``: the ``small=true``
networks, 1000 Adam steps of 128) through the resumable sweep runner, seeds
in passes. Then, for every finished run whose checkpoint is in the workdir:

- test error on its own test split (from the run's results);
- expected calibration error (15 bins) of its predictions on that split
  (:func:`stn_jax.calibration.expected_calibration_error`);
- invariance (:func:`stn_jax.evaluation.invariance_sweep`): the clean test
  digits centred in the canvas under the families that the training
  distortion covers (RTS: rotation, scale, translation; P: projective),
  each over its default magnitudes; reported as the error averaged over the
  magnitudes and at the largest one.

Each run's evaluation is cached in its folder (``beyond.json``), so a rerun
only evaluates new runs. The table gives mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import table1_distorted_mnist as table1
from _tables import (
  DONE,
  cached_evaluation,
  header_lines,
  invariance_figure,
  parse_arg,
  recipe_words,
  run_in_seed_passes,
  run_script,
  write_table,
)

from stn_jax import calibration, evaluation, restore, sweep
from stn_jax.data import controlled, datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {"rts": ("rotation", "scale", "translation"), "p": ("projective",)}
CACHE = "beyond.json"


def model_label(arg: dict[str, str]) -> str:
  """``'CNN'``, ``'ST-CNN'`` or ``'IC-STN K=k'`` of a point's parsed arg."""
  if arg["model"] == "cnn":
    return "CNN"
  if arg["model"] == "st_cnn":
    return "ST-CNN"
  return f"IC-STN K={arg.get('recurrences', '4')}"


def evaluate_run(point_dir: str, *, max_examples: int) -> dict:
  """The run's ECE on its test split and its invariance per family:
  ``{'ece': float, 'families': {family: {'mean': err, 'largest':
  magnitude, 'at_largest': err}}, 'curves': {family: [(magnitude, err),
  ...]}}`` (errors as fractions)."""
  run = restore(point_dir)
  config = run.config
  where = dict(tfds_dir=config.get("tfds_dir", "") or None)
  test = datasets.load_arrays(config.dataset, "test", **where)
  logits = np.concatenate(
    [
      np.asarray(run.predict(test["image"][i : i + 1000]))
      for i in range(0, len(test["image"]), 1000)
    ]
  )
  ece = float(calibration.expected_calibration_error(logits, test["label"]))
  plain = datasets.load_arrays("distorted_mnist/plain", "test", **where)
  keep = slice(None, max_examples or None)
  families = FAMILIES[config.dataset.split("/")[1]]
  records = evaluation.invariance_sweep(
    run.predict,
    plain["image"][keep],
    plain["label"][keep],
    size=run.in_shape[0],
    families=families,
  )
  summary = {}
  for family in families:
    rows = [r for r in records if r["family"] == family]
    identity = controlled.IDENTITY[family]
    largest = max(rows, key=lambda r: abs(r["magnitude"] - identity))
    summary[family] = {
      "mean": statistics.mean(r["error"] for r in rows),
      "largest": largest["magnitude"],
      "at_largest": largest["error"],
    }
  curves = {
    family: [
      (r["magnitude"], r["error"]) for r in records if r["family"] == family
    ]
    for family in families
  }
  return {"ece": ece, "families": summary, "curves": curves}


def _cell(values, scale=100.0, digits=2) -> str:
  if not values:
    return "-"
  values = [scale * v for v in values]
  mean = statistics.mean(values)
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def table_lines(rows: dict, distortions: list[str]) -> list[str]:
  """Markdown tables, one per distortion, from ``rows[(distortion,
  label)] = [{'test_error', 'ece', 'families'}, ...]`` (one per seed)."""
  lines = []
  for distortion in distortions:
    families = FAMILIES[distortion]
    cells = {k: v for k, v in rows.items() if k[0] == distortion}
    if not cells:
      continue
    lines += [
      "",
      f"## {distortion.upper()}",
      "",
      "| model | test error % | ECE % | "
      + " | ".join(
        f"{f}: mean error % | {f}: error % at the largest" for f in families
      )
      + " |",
      "|---|---|---|" + "---|---|" * len(families),
    ]
    for (_, label), runs in sorted(cells.items(), key=lambda kv: kv[0][1]):
      evaluated = [r for r in runs if r.get("families")]
      parts = [
        _cell([r["test_error"] for r in runs]),
        _cell([r["ece"] for r in evaluated]),
      ]
      for family in families:
        parts.append(_cell([r["families"][family]["mean"] for r in evaluated]))
        parts.append(
          _cell([r["families"][family]["at_largest"] for r in evaluated])
        )
      lines.append(f"| {label} | " + " | ".join(parts) + " |")
  return lines


def write_figures(rows: dict, distortions: list[str], folder: str) -> list[str]:
  """One PNG per distortion and family: % error against magnitude, one
  curve per model (the mean over its evaluated seeds); returns the paths."""
  paths = [
    invariance_figure(
      rows,
      distortion,
      family,
      os.path.join(folder, f"beyond_{distortion}_{family}.png"),
      f"{distortion.upper()}-trained models under {family}",
    )
    for distortion in distortions
    for family in FAMILIES[distortion]
  ]
  return [path for path in paths if path]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--scale", default="cpu", choices=sorted(table1.SCALES))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default="experiments/results/beyond.md")
  parser.add_argument("--max_examples", type=int, default=1000)
  parser.add_argument("--models", default="cnn,st_cnn,ic_st_cnn")
  parser.add_argument("--distortions", default="rts,p")
  parser.add_argument(
    "--figures",
    default="experiments/results/figures",
    help="folder for the invariance curves (beyond_<distortion>_<family>.png)",
  )
  parser.add_argument("--archive")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--set", action="append", default=[])
  args = parser.parse_args(argv)
  distortions = args.distortions.split(",")
  unknown = sorted(set(distortions) - set(FAMILIES))
  if unknown:
    parser.error(f"--distortions: unknown {unknown}; expected rts and/or p")
  scale = table1.SCALES[args.scale]
  overrides = {**scale.overrides, **sweep.parse_overrides(args.set)}
  models = args.models.split(",")
  config_path = os.path.join(REPO, "configs", "mnist.py")
  start = time.perf_counter()
  records, trained = run_in_seed_passes(
    config_path,
    ("beyond",),
    args.workdir,
    seeds=args.seeds,
    keep=lambda a: a["model"] in models and a["distortion"] in distortions,
    overrides=overrides,
    extra_arg=scale.arg,
    report_only=args.report_only,
    archive=args.archive,
  )
  rows: dict = {}
  for record in records:
    if record["status"] not in DONE:
      continue
    a = parse_arg(record["arg"])
    point_dir = os.path.join(args.workdir, "beyond", record["name"])
    evaluated = cached_evaluation(
      point_dir,
      lambda d=point_dir: evaluate_run(d, max_examples=args.max_examples),
      cache=CACHE,
      max_examples=args.max_examples,
      archive_dir=args.archive
      and os.path.join(args.archive, "beyond", record["name"]),
    )
    rows.setdefault((a["distortion"], model_label(a)), []).append(
      {"test_error": record["results"]["test_error"], **(evaluated or {})}
    )
  module = sweep.load_config_module(config_path)
  config = sweep.build_config(
    module,
    {"arg": scale.arg, "overrides": {}},
    {k: v for k, v in overrides.items() if k != "tfds_dir"},
  )
  failed = [r for r in records if r["status"] == "failed"]
  lines = header_lines(
    "Beyond test error: invariance and calibration (mean ± std over seeds)"
  ) + [
    f"- scale: **{args.scale}**: {recipe_words(config)}; seeds: "
    f"{args.seeds}; config arg added to every run: `{scale.arg or '(none)'}`",
    f"- wall time of this invocation: "
    f"{(time.perf_counter() - start) / 60:.1f} min ({len(trained)} runs "
    "trained now)",
    f"- invariance: the first {args.max_examples or 'all'} clean test "
    "digits centred in the canvas, each family over its default "
    "magnitudes (stn_jax.evaluation.DEFAULT_MAGNITUDES); 'mean': error "
    "averaged over the magnitudes, 'at the largest': at the largest one",
    "- ECE: expected calibration error, 15 bins, on the run's test split",
  ]
  lines += table_lines(rows, distortions)
  figures = write_figures(rows, distortions, args.figures)
  if figures:
    lines += ["", "Invariance curves (mean over seeds):", ""]
    lines += [f"- `{path}`" for path in figures]
  return write_table(args.out, lines, failed)


if __name__ == "__main__":
  raise SystemExit(run_script(main))
