"""Shared pieces of the paper-table scripts: seed passes over a sweep and
mean +- std cells."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from stn_jax import cli, sweep, viz
from stn_jax.data import controlled
from stn_jax.provenance import header_lines  # noqa: F401 (the scripts' header)
from stn_jax.sweep import StopOnSignal


class Scale(NamedTuple):
  """What a ``--scale`` changes in every run of a table.

  ``arg`` is appended to every point's config arg (e.g. ``'small=true'``
  for the configs' narrow CPU networks); ``overrides`` are config keys set
  on every point (e.g. the step budget).
  """

  arg: str
  overrides: Mapping[str, object]


def table_parser(
  doc: str, out: str, scales: Mapping[str, Scale]
) -> argparse.ArgumentParser:
  """The arguments every paper-table script takes (scale, workdir, out,
  seeds, --set, --report_only, --archive); scripts add their own."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--scale", choices=sorted(scales), required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", default=out)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    help="extra override for every run, e.g. tfds_dir=...",
  )
  parser.add_argument(
    "--report_only",
    action="store_true",
    help="train nothing: tabulate the finished runs (e.g. "
    "while the sweep runs elsewhere)",
  )
  parser.add_argument(
    "--population",
    action="store_true",
    help="train each cell's seeds together as one population (one "
    "vmapped step; for accelerators): one pass over all seeds instead of "
    "seed by seed (stn_jax.sweep.population)",
  )
  parser.add_argument(
    "--archive",
    help="folder keeping every finished run's small files (record, "
    "config, results, metrics; no checkpoints) to commit: restored into "
    "--workdir first, so a rerun with a lost or new workdir trains only "
    "what is not in it (stn_jax.sweep.archive)",
  )
  return parser


def run_script(main: Callable[[], int | None]) -> int:
  """Calls a table script's ``main()`` and returns its exit status; bad
  input found there (a ``ValueError``, e.g. an unknown or mistyped --set
  field) prints one line naming it, without a traceback, and returns 2.
  (A run's own failure is recorded in its sweep record, not raised.)

  SIGTERM or Ctrl-C outside a training loop (between points or sweeps, or
  after a sweep's last point) is held here: the script's remaining sweeps
  are only tabulated (:func:`run_in_seed_passes`), its tables are written,
  and it returns 143 or 130. A second signal stops it at once."""
  prog = os.path.basename(sys.argv[0])
  with StopOnSignal() as stop:
    try:
      status = int(main() or 0)
    except ValueError as error:
      print(f"{prog}: error: {error}", file=sys.stderr)
      return 2
    if stop.signal:  # came between sweeps: they were only tabulated
      stop.acted()
      print(
        f"{prog}: stopped by {stop.signal} between runs: no run started "
        "after it. Rerun the same command to continue.",
        file=sys.stderr,
      )
      status = status or cli.exit_status(stop.signal)
    return status


def scales_of(config_path: str) -> dict[str, Scale]:
  """The config file's ``SCALES`` (``{name: (implied arg, overrides)}``) as
  :class:`Scale` tuples."""
  module = sweep.load_config_module(config_path)
  return {name: Scale(*value) for name, value in module.SCALES.items()}


def recipe_words(config) -> str:
  """A run's optimisation recipe in words, from its config: steps, batch,
  examples, optimiser, learning rate and schedule, warmup, smoothing,
  weight decay and augmentation (the last three where set)."""
  examples = config.num_steps * config.batch_size
  text = (
    f"{config.num_steps:,} {config.optimizer} steps of {config.batch_size} "
    f"({examples / 1e6:.1f}M examples), lr {config.learning_rate:g} "
  )
  if config.get("lr_schedule", "step") == "cosine":
    text += "cosine to 0"
  else:
    text += f"x{config.lr_decay_factor:g} every {config.lr_decay_every:,}"
  if config.get("warmup_steps", 0):
    text += f", {config.warmup_steps:,} warmup steps"
  if config.get("label_smoothing", 0.0):
    text += f", label smoothing {config.label_smoothing:g}"
  if config.get("weight_decay", 0.0):
    text += f", weight decay {config.weight_decay:g}"
  augment = [
    words.format(config.get(key, 0.0))
    for key, words in (
      ("augment_rotation", "rotation ±{:g}°"),
      ("augment_scale", "scale ±{:g}"),
      ("augment_translate", "shift ±{:g} of the size"),
    )
    if config.get(key, 0.0)
  ]
  if augment:
    text += ", augmentation: " + ", ".join(augment)
  return text


def parse_arg(arg: str) -> dict[str, str]:
  """``'k1=v1,k2=v2'`` -> ``{'k1': 'v1', 'k2': 'v2'}`` (strings)."""
  return dict(item.split("=", 1) for item in arg.split(",") if item)


def run_in_seed_passes(
  config_path: str,
  sweep_names: Sequence[str],
  workdir: str,
  *,
  seeds: int,
  keep: Callable[[dict[str, str]], bool],
  overrides: dict,
  extra_arg: str,
  report_only: bool = False,
  archive: str | None = None,
  population: bool = False,
) -> tuple[list[dict], list[dict]]:
  """Runs the sweeps' points seed by seed: every kept point's seed 0, then
  every kept point's seed 1, and so on.

  An interrupted invocation therefore leaves every cell with some seeds
  rather than some cells with none. SIGTERM or Ctrl-C stops it: during a
  point, that point saves its checkpoint and this returns; between points
  or sweeps (also after a sweep's last point), no further point trains,
  the later sweeps are only collected, and the signal is passed on to the
  caller's handler when this returns (:func:`run_script` holds it). Rerunning reuses finished points (the
  sweep runner is resumable). With ``population`` there is one pass: each
  cell's seeds train together as one population.

  Args:
    config_path: the config file holding ``sweep_<name>`` functions.
    sweep_names: the sweeps to run; each gets ``workdir/<name>``.
    seeds: points whose ``seed`` arg is below this are run.
    keep: takes a point's parsed arg and says whether to run it.
    overrides: config overrides for every point.
    extra_arg: appended to every point's arg (e.g. ``'small=true'``).
    report_only: train nothing; unfinished points come back 'pending'.
    archive: each sweep's finished points are kept in ``archive/<name>``
      (:mod:`stn_jax.sweep.archive`).
    population: train each cell's seeds as one population
      (:mod:`stn_jax.sweep.population`).

  Returns:
    (records of the kept points, as the sweep runner returns them;
     the records of the points trained by this call).
  """
  by_sweep, trained = {}, []

  def collected():
    return [r for name in sweep_names for r in by_sweep.get(name, [])]

  # A signal between sweeps, or passed on after a sweep's last point:
  # every later sweep is only collected, and the signal goes on to the
  # caller when this returns (run_script holds it and reports it).
  with StopOnSignal() as stop:
    for seed in [seeds - 1] if population else range(seeds):

      def select(point, seed=seed):
        a = parse_arg(point["arg"])
        return int(a.get("seed", 0)) <= seed and keep(a)

      for name in sweep_names:
        folders = [os.path.join(workdir, name)]
        folders += [os.path.join(archive, name)] if archive else []
        if stop.signal and not any(map(os.path.isdir, folders)):
          continue  # stopped before this sweep began: nothing to collect
        by_sweep[name] = sweep.run_sweep(
          config_path,
          name,
          os.path.join(workdir, name),
          overrides=overrides,
          select=select,
          extra_arg=extra_arg,
          report_only=report_only or bool(stop.signal),
          archive=archive and os.path.join(archive, name),
          train_population=population,
        )
        trained += [r for r in by_sweep[name] if r["status"] == "finished"]
        if any(r["status"] == "interrupted" for r in by_sweep[name]):
          return collected(), trained  # SIGTERM: tabulate what is done
  return collected(), trained


def cached_evaluation(
  point_dir: str,
  evaluate: Callable[[], dict],
  *,
  cache: str,
  max_examples: int,
  archive_dir: str | None = None,
) -> dict | None:
  """A run's evaluation (``evaluate()``'s dict, with ``max_examples``),
  read from the JSON file ``cache`` in ``point_dir``, else in
  ``archive_dir`` (the point's archive folder, which outlives the
  workdir), when it was made with the same ``max_examples``; else
  computed from the run's checkpoint and written to both. None when
  neither folder has it and the run has no checkpoint here (a run
  restored from an archive)."""
  folders = [point_dir] + ([archive_dir] if archive_dir else [])
  for folder in folders:
    path = os.path.join(folder, cache)
    if os.path.isfile(path):
      with open(path) as f:
        cached = json.load(f)
      if cached.get("max_examples") == max_examples:
        return cached
  if not os.path.isdir(os.path.join(point_dir, "checkpoints")):
    return None
  result = {"max_examples": max_examples, **evaluate()}
  for folder in folders:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, cache), "w") as f:
      json.dump(result, f, indent=1)
  return result


def mean_std_cell(
  values: Sequence[float],
  paper: float | None,
  scale: float = 100.0,
  paper_digits: int = 1,
) -> str:
  """``'mean ± std (paper P, +diff; n=N)'`` of ``values * scale``; the
  paper's number is printed with the precision it was published with."""
  if not values:
    return "not run"
  mean = scale * statistics.mean(values)
  std = scale * statistics.stdev(values) if len(values) > 1 else 0.0
  if paper is None:
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"
  return (
    f"{mean:.2f} ± {std:.2f} (paper {paper:.{paper_digits}f}, "
    f"{mean - paper:+.2f}; n={len(values)})"
  )


DONE = ("finished", "skipped")


def total_minutes(records: Sequence[dict]) -> float:
  """Training wall time of the done ``records`` (as last run), minutes."""
  return (
    sum(
      r["results"].get("wall_seconds", 0)
      for r in records
      if r["status"] in DONE
    )
    / 60
  )


# A results file's hand-written part starts at a heading with this text;
# rewriting the table keeps it.
NOTES_HEADING = "(written by hand)"


def kept_notes(path: str) -> list[str]:
  """The lines of ``path`` from its first heading containing
  :data:`NOTES_HEADING` on (with a blank line before), or none."""
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    if line.startswith("#") and NOTES_HEADING in line:
      return ["", *lines[i:]]
  return []


def write_table(out: str, lines: list[str], failed: Sequence[dict]) -> int:
  """Writes ``lines`` (plus a section naming each failed run, and the
  hand-written notes ``out`` already has: :func:`kept_notes`) to ``out``,
  prints them, and returns the exit status: 1 if any run failed."""
  if failed:
    lines = (
      lines
      + ["", "## Failed runs", ""]
      + [f"- {r['name']}: {r['error'].splitlines()[-1]}" for r in failed]
    )
  lines = lines + kept_notes(out)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 1 if failed else 0


def invariance_figure(
  rows: Mapping, group: str, family: str, path: str, title: str
) -> str | None:
  """One PNG of % error against ``family``'s magnitude: a curve per
  ``(group, label)`` key of ``rows`` (``{(group, label): [run, ...]}``,
  each run with ``'curves': {family: [(magnitude, error), ...]}``), the
  mean over its evaluated seeds. Returns ``path``, or None (nothing
  written) when no run of ``group`` has curves."""
  curves = []
  for (key, label), runs in sorted(rows.items(), key=lambda kv: kv[0][1]):
    if key != group:  # another group's runs may lack this family
      continue
    evaluated = [r["curves"][family] for r in runs if r.get("curves")]
    if not evaluated:
      continue
    magnitudes = [m for m, _ in evaluated[0]]
    mean = [
      100 * statistics.mean(run[i][1] for run in evaluated)
      for i in range(len(magnitudes))
    ]
    curves.append(
      (f"{label} (n={len(evaluated)})", list(zip(magnitudes, mean)))
    )
  if not curves:
    return None
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  viz.line_plot(
    curves,
    path,
    title=title,
    xlabel=controlled.UNITS[family],
    ylabel="% error",
  )
  return path
