"""Where the transformer goes in a ResNet-STN (issue 38's study).

Usage:
  python experiments/resnet_stn.py --workdir DIR [--scale cpu] [--seeds 3]
      [--datasets gtsrb,rts] [--only k=v[,k=v]] [--max_examples 1000]
      [--out experiments/results/resnet_stn.md]
      [--archive experiments/results/runs/resnet_stn] [--report_only]
      [--set k=v ...]

Trains the ``placement`` sweep of configs/gtsrb.py (GTSRB, 32x32) and of
configs/mnist.py (RTS): the pre-activation ResNet without a transformer and
the ResNet-STN with its transformer on the input, after stage 1, after
stage 2, on the input localising from the shared stem, and at all three
places (``configs/common.py: PLACEMENT_VARIANTS``), at one ``--scale`` of
those config files, seed by seed through the resumable sweep runner
(``DIR/gtsrb/placement``, ``DIR/rts/placement``). Then, for every finished
run, a row per variant (mean ± std over seeds). ``--only`` (repeatable)
keeps the points whose config argument has every ``k=v`` of one of its
values (e.g. ``--only model=preact_resnet --only placement=stage1``).

Per variant:

- test and validation measure from the run's results (GTSRB: % accuracy on
  the official test set and the held-out tracks; RTS: % error), chosen
  nowhere: every run trains its whole budget;
- examples/s: the median of the run's logged training throughput (its
  first two logs, which include compilation, left out);
- parameters;
- invariance (:func:`stn_jax.evaluation.invariance_sweep`): the first
  ``--max_examples`` clean test images (GTSRB: its test signs; RTS: the
  undistorted MNIST test digits centred in the canvas) under rotation,
  scale and translation, each over its default magnitudes: the error
  averaged over the magnitudes, and one PNG per dataset and family with a
  curve per variant.

Each run's evaluation is cached in its folder (``resnet_stn.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from _tables import (
  DONE,
  cached_evaluation,
  header_lines,
  invariance_figure,
  mean_std_cell,
  parse_arg,
  recipe_words,
  run_in_seed_passes,
  run_script,
  scales_of,
  write_table,
)

from stn_jax import evaluation, models, restore, sweep
from stn_jax.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
  "gtsrb": os.path.join(REPO, "configs", "gtsrb.py"),
  "rts": os.path.join(REPO, "configs", "mnist.py"),
}
FAMILIES = ("rotation", "scale", "translation")
CACHE = "resnet_stn.json"


def variant_label(arg: dict[str, str]) -> str:
  """``'ResNet'`` or ``'ResNet-STN: <places>[, shared stem]'`` of a
  point's parsed config arg."""
  if arg["model"] == "preact_resnet":
    return "ResNet"
  label = f"ResNet-STN: {arg.get('placement', 'input')}"
  if arg.get("shared_stem", "false") == "true":
    label += ", shared stem"
  return label


def keeps(only: list[str]):
  """The ``keep`` of a sweep's parsed point args for ``--only`` values:
  a point is kept when some value's ``k=v`` pairs all match it (every
  point without ``--only``)."""
  specs = [parse_arg(value) for value in only]
  for spec in specs:
    if not spec:
      raise ValueError("--only must be k=v[,k=v...]; got an empty value.")

  def keep(arg: dict[str, str]) -> bool:
    return not specs or any(
      all(arg.get(k) == v for k, v in spec.items()) for spec in specs
    )

  return keep


def clean_test_images(config) -> tuple[np.ndarray, np.ndarray]:
  """The clean test objects of a run's dataset: GTSRB's own test signs,
  or the undistorted MNIST test digits for a distorted MNIST run."""
  where = dict(tfds_dir=config.get("tfds_dir", "") or None)
  name = config.dataset
  if name.startswith("distorted_mnist/"):
    name = "distorted_mnist/plain"
  test = datasets.load_arrays(name, "test", **where)
  return test["image"], test["label"]


def median_throughput(point_dir: str) -> float | None:
  """The median ``examples_per_second`` of a run's training logs, its
  first two (compilation) left out; None without logs."""
  path = os.path.join(point_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    rates = [
      record["examples_per_second"]
      for record in map(json.loads, f)
      if "examples_per_second" in record
    ]
  rates = rates[2:] or rates
  return statistics.median(rates) if rates else None


def evaluate_run(point_dir: str, *, max_examples: int) -> dict:
  """A run's parameter count, throughput and invariance: ``{'parameters':
  int, 'examples_per_second': float | None, 'families': {family: mean
  error}, 'curves': {family: [(magnitude, error), ...]}}`` (errors as
  fractions)."""
  run = restore(point_dir)
  images, labels = clean_test_images(run.config)
  keep = slice(None, max_examples or None)
  records = evaluation.invariance_sweep(
    run.predict,
    images[keep],
    labels[keep],
    size=run.in_shape[0],
    families=FAMILIES,
  )
  curves = {
    family: [
      (r["magnitude"], r["error"]) for r in records if r["family"] == family
    ]
    for family in FAMILIES
  }
  return {
    "parameters": models.count_params(run.model),
    "examples_per_second": median_throughput(point_dir),
    "families": {
      family: statistics.mean(error for _, error in curve)
      for family, curve in curves.items()
    },
    "curves": curves,
  }


def measure(dataset: str, results: dict, split: str) -> float | None:
  """The table's measure of a run on ``split``, as a fraction: GTSRB's
  accuracy, RTS's error; None when the run did not evaluate ``split``."""
  error = results.get(f"{split}_error")
  if error is None:
    return None
  return 1.0 - error if dataset == "gtsrb" else error


def table_lines(rows: dict, datasets_: list[str]) -> list[str]:
  """One markdown table per dataset from ``rows[(dataset, label)] = [{...},
  ...]`` (one dict per seed: 'test', 'validation' and
  :func:`evaluate_run`'s keys)."""
  lines = []
  for dataset in datasets_:
    cells = {k: v for k, v in rows.items() if k[0] == dataset}
    if not cells:
      continue
    what = "accuracy" if dataset == "gtsrb" else "error"
    lines += [
      "",
      f"## {dataset.upper()}",
      "",
      f"| variant | test {what} % | validation {what} % | examples/s | "
      "parameters | "
      + " | ".join(f"{family}: mean error %" for family in FAMILIES)
      + " |",
      "|---|---|---|---|---|" + "---|" * len(FAMILIES),
    ]
    for (_, label), runs in sorted(cells.items(), key=lambda kv: kv[0][1]):
      evaluated = [r for r in runs if r.get("families")]
      rates = [r["examples_per_second"] for r in evaluated]
      rates = [rate for rate in rates if rate is not None]
      parts = [
        mean_std_cell([r["test"] for r in runs], None),
        mean_std_cell(
          [r["validation"] for r in runs if r["validation"] is not None],
          None,
        ),
        f"{statistics.median(rates):,.0f}" if rates else "-",
        f"{evaluated[0]['parameters']:,}" if evaluated else "-",
      ]
      for family in FAMILIES:
        parts.append(
          mean_std_cell([r["families"][family] for r in evaluated], None)
          if evaluated
          else "-"
        )
      lines.append(f"| {label} | " + " | ".join(parts) + " |")
  return lines


def write_figures(rows: dict, datasets_: list[str], folder: str) -> list[str]:
  """One PNG per dataset and family: % error against magnitude, a curve
  per variant (the mean over its evaluated seeds); returns the paths."""
  paths = [
    invariance_figure(
      rows,
      dataset,
      family,
      os.path.join(folder, f"resnet_stn_{dataset}_{family}.png"),
      f"{dataset.upper()}: ResNet(-STN) variants under {family}",
    )
    for dataset in datasets_
    for family in FAMILIES
  ]
  return [path for path in paths if path]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--scale", default="cpu")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--datasets", default="gtsrb,rts")
  parser.add_argument(
    "--only",
    action="append",
    default=[],
    help="k=v[,k=v]: run and report only the points with these config "
    "arguments (repeatable: any of them)",
  )
  parser.add_argument("--max_examples", type=int, default=1000)
  parser.add_argument("--out", default="experiments/results/resnet_stn.md")
  parser.add_argument(
    "--figures",
    default="experiments/results/figures",
    help="folder for the invariance curves (resnet_stn_<dataset>_<family>.png)",
  )
  parser.add_argument(
    "--archive",
    help="folder keeping every finished run's small files, per dataset "
    "(ARCHIVE/<dataset>/placement), restored into --workdir first",
  )
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--set", action="append", default=[])
  args = parser.parse_args(argv)
  chosen = args.datasets.split(",")
  unknown = sorted(set(chosen) - set(CONFIGS))
  if unknown:
    parser.error(f"--datasets: unknown {unknown}; expected gtsrb and/or rts")
  keep = keeps(args.only)
  start, rows, failed, trained, recipes = time.perf_counter(), {}, [], 0, []
  # After a SIGTERM/SIGINT stops a run, the later datasets are tabulated,
  # not trained (the signal is not sent twice).
  stopped = False
  for dataset in chosen:
    scales = scales_of(CONFIGS[dataset])
    if args.scale not in scales:
      parser.error(
        f"--scale: {args.scale!r} is not a scale of "
        f"{os.path.relpath(CONFIGS[dataset], REPO)}; choose from "
        f"{sorted(scales)}"
      )
    scale = scales[args.scale]
    overrides = {**scale.overrides, **sweep.parse_overrides(args.set)}
    workdir = os.path.join(args.workdir, dataset)
    records, new = run_in_seed_passes(
      CONFIGS[dataset],
      ("placement",),
      workdir,
      seeds=args.seeds,
      keep=keep,
      overrides=overrides,
      extra_arg=scale.arg,
      report_only=args.report_only or stopped,
      archive=args.archive and os.path.join(args.archive, dataset),
    )
    stopped = stopped or any(r["status"] == "interrupted" for r in records)
    trained += len(new)
    failed += [r for r in records if r["status"] == "failed"]
    for record in records:
      if record["status"] not in DONE:
        continue
      point_dir = os.path.join(workdir, "placement", record["name"])
      evaluated = cached_evaluation(
        point_dir,
        lambda d=point_dir: evaluate_run(d, max_examples=args.max_examples),
        cache=CACHE,
        max_examples=args.max_examples,
        archive_dir=args.archive
        and os.path.join(args.archive, dataset, "placement", record["name"]),
      )
      results = record["results"]
      rows.setdefault(
        (dataset, variant_label(parse_arg(record["arg"]))), []
      ).append(
        {
          "test": measure(dataset, results, "test"),
          "validation": measure(dataset, results, "validation"),
          **(evaluated or {}),
        }
      )
    module = sweep.load_config_module(CONFIGS[dataset])
    config = sweep.build_config(
      module,
      {
        "arg": ",".join(filter(None, ["model=preact_resnet", scale.arg])),
        "overrides": {},
      },
      {k: v for k, v in overrides.items() if k != "tfds_dir"},
    )
    recipes.append(f"{dataset}: {recipe_words(config)}")
  lines = header_lines(
    "Where the transformer goes in a ResNet-STN (mean ± std over seeds)"
  ) + [
    f"- scale: **{args.scale}**; seeds: {args.seeds}; " + "; ".join(recipes),
    f"- wall time of this invocation: "
    f"{(time.perf_counter() - start) / 60:.1f} min ({trained} runs trained "
    "now)",
    f"- invariance: the first {args.max_examples or 'all'} clean test "
    "images (GTSRB: its test signs; RTS: undistorted MNIST digits centred "
    "in the canvas), each family over its default magnitudes "
    "(stn_jax.evaluation.DEFAULT_MAGNITUDES), error averaged over them",
    "- examples/s: the median of each run's logged training throughput, "
    "then the median over seeds (on a shared machine, a lower bound)",
    "- the last four columns come from the evaluated runs (their n may be "
    "below the accuracy's): a run whose checkpoint is gone and whose "
    "evaluation is in neither its folder nor its archive counts in the "
    "accuracy only; '-': no run of that variant is evaluated",
  ]
  lines += table_lines(rows, chosen)
  figures = write_figures(rows, chosen, args.figures)
  if figures:
    lines += ["", "Invariance curves (mean over seeds):", ""]
    lines += [f"- `{path}`" for path in figures]
  return write_table(args.out, lines, failed)


if __name__ == "__main__":
  raise SystemExit(run_script(main))
