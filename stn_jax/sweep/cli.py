"""``python -m stn_jax.sweep``: a sweep from the command line.

  python -m stn_jax.sweep [run | collect | dry-run] \
      --config=configs/mnist.py[:ARG] --sweep=table1 --workdir=DIR \
      [--set=num_steps=1000 ...] [--launcher=local|ray|population] \
      [--shard=i/n] [--archive=ARCHIVE]

``--config=file.py:ARG`` means what it means for ``stn_jax.main``: the
config file and its ``get_config`` argument; here ``ARG`` (e.g.
``small=true``) is appended to every point's own argument.

A sweep is a function ``sweep_<name>(add)`` beside ``get_config`` in the
config file; each ``add(arg, **overrides)`` adds one point: the config
arg string and config overrides (dotted keys such as ``'model_kwargs.width'``
go through a dict: ``add(arg, **{'model_kwargs.width': 0.5})``).

Modes (:class:`stn_jax.sweep.Mode`), one meaning each:

  run (the default)   train this process's unfinished points, skip the
                      finished ones; records and tables kept up to date
  collect             train nothing: rebuild results.jsonl and results.md
                      from every point's record (all shards) and print the
                      summary (also: --collect)
  dry-run             build and check every point's config; write nothing
                      (also: --dry_run)

Every point trains in its own workdir ``DIR/<index>_<name>`` and writes
its record there (``record.json``: status, results, error, start and end
time, host, worker, device). The runner is resumable: a finished point is
skipped, an interrupted one resumes from its checkpoint. A failed point is
recorded with its error and the others still run. ``DIR/results.jsonl`` and
``DIR/results.md`` are rebuilt atomically from all the records after every
point, so several runners can share ``DIR``; a lock keeps two runners off
one point.

Where points run (:mod:`stn_jax.sweep.launchers`):

  --launcher=local                 one after another in this process
  --launcher=ray [--max_concurrent=K] [--ray_address=ADDR]
      [--resources=cpu=1,gpu=0.25] every point a Ray task, on a local Ray
                                   cluster started for the sweep or an
                                   existing one
  --launcher=population            the points that differ only in seed and
      (also: --population)         member hyperparameters (learning rate,
                                   localisation multiplier, clipping,
                                   weight decay) trained together, one
                                   population (one vmapped step) each, in
                                   this process (:mod:`stn_jax.sweep.
                                   population`); for accelerators, where
                                   one small run leaves the device idle
  --shard=i/n                      with any of them: this process runs
                                   every n-th point (job arrays, e.g.
                                   SLURM); collect rebuilds the table

``--archive=DIR`` keeps every finished point's small files (record, config,
results, metrics; no checkpoints) in ``DIR/<point>``, to commit: a later
run with the same ``--archive`` restores them into its workdir and trains
only the rest (:mod:`stn_jax.sweep.archive`).

Exit status (:data:`stn_jax.cli.EXIT_STATUS`, shared with
``stn_jax.main``): 0; 1 if a point failed or the input is bad; 2 for a
flag error; 130 / 143 when SIGINT / SIGTERM stopped the sweep (the same
command resumes it).
"""

from __future__ import annotations

import ast
import collections

from absl import flags

from stn_jax import cli
from stn_jax.config_args import split_config_spec
from stn_jax.sweep import launchers
from stn_jax.sweep.records import Record, Status
from stn_jax.sweep.runner import Mode, resolve_mode, run_sweep

# The positional mode words (dry-run also as dry_run).
MODES = {"run": Mode.RUN, "collect": Mode.COLLECT, "dry-run": Mode.DRY_RUN}
MODES["dry_run"] = Mode.DRY_RUN


def parse_overrides(items) -> dict:
  """``['k=v', ...]`` -> ``{k: v}``, values read as Python literals when
  they are (``1000``, ``1e-3``, ``True``), ``true``/``false`` in any case
  as booleans (as in config args and absl flags), else kept as strings."""
  overrides = {}
  for item in items or []:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set takes key=value; got {item!r}.")
    if text.lower() in ("true", "false"):
      overrides[key] = text.lower() == "true"
      continue
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


def _flags() -> flags.FlagValues:
  values = flags.FlagValues()
  flags.DEFINE_string(
    "config",
    None,
    "Config file with its sweeps, with an "
    "optional :ARG appended to every point's argument "
    "(e.g. configs/mnist.py:small=true).",
    flag_values=values,
  )
  flags.DEFINE_string(
    "sweep",
    None,
    "The sweep: sweep_<name> in the config file.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "One subdirectory per point, results.jsonl and results.md.",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "dry_run",
    False,
    "The dry-run mode: build and list every point; train nothing.",
    flag_values=values,
  )
  flags.DEFINE_multi_string(
    "set",
    [],
    "Override for every point, e.g. num_steps=1000 (repeatable).",
    flag_values=values,
  )
  flags.DEFINE_enum(
    "launcher",
    "local",
    list(launchers.LAUNCHERS),
    "local: one point after another in this process; ray: every point a "
    "Ray task (pip install -e '.[ray]'); population: compatible points "
    "trained together as populations in this process.",
    flag_values=values,
  )
  flags.DEFINE_integer(
    "max_concurrent",
    None,
    "ray: points running at once (default: as many as the resources allow).",
    flag_values=values,
  )
  flags.DEFINE_string(
    "ray_address",
    None,
    "ray: an existing cluster (host:6379, ray://host:10001 or auto); "
    "default: start a local one for the sweep.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "resources",
    None,
    "ray: each point's resources, e.g. cpu=1,gpu=0.25 (default cpu=1); "
    "other names are custom Ray resources.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "shard",
    None,
    "i/n: run only the kept points at positions i, i+n, ... (a job array "
    "of n processes, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).",
    flag_values=values,
  )
  flags.DEFINE_string(
    "archive",
    None,
    "Folder of the finished points' small files (record, config, results, "
    "metrics; no checkpoints) to commit: restored into --workdir first, "
    "added to as points finish (stn_jax.sweep.archive).",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "population",
    False,
    "--launcher=population: train the points that differ only in seed and "
    "member hyperparameters together, one population (one vmapped step) "
    "each, in this process; for accelerators (stn_jax.sweep.population).",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "collect",
    False,
    "The collect mode: train nothing; rebuild results.jsonl and results.md "
    "from every point's record (all shards) and print the summary.",
    flag_values=values,
  )
  for name in ("config", "sweep", "workdir"):
    flags.mark_flag_as_required(name, flag_values=values)
  return values


def launcher_name(launcher: str, population: bool) -> str:
  """``--launcher``'s name, with ``--population`` read as
  ``--launcher=population``."""
  if not population:
    return launcher
  if launcher not in ("local", "population"):
    raise ValueError(
      "--population trains its populations in this process; it does not "
      f"combine with --launcher={launcher} (use --shard to split a sweep "
      "over processes)."
    )
  return "population"


def exit_status(records: list[Record]) -> int:
  """The command's exit status for the records it returns: a signal's
  (:func:`stn_jax.cli.exit_status`) if one stopped the sweep, else
  :data:`stn_jax.cli.EXIT_FAILED` if a point failed, else
  :data:`stn_jax.cli.EXIT_OK`."""
  stopped = [r.signal for r in records if r.status == Status.INTERRUPTED]
  if stopped:
    return cli.exit_status(stopped[0])
  if any(r.status.is_failure for r in records):
    return cli.EXIT_FAILED
  return cli.EXIT_OK


def main(argv=None) -> int:
  """``python -m stn_jax.sweep``; returns the exit status (see the module
  docstring)."""
  from absl import logging

  values = _flags()

  def body(positional):
    if len(positional) > 1 or (positional and positional[0] not in MODES):
      raise ValueError(
        f"unexpected arguments {positional}; the mode is one of "
        f"{', '.join(MODES)} (default run)."
      )
    mode = resolve_mode(
      MODES[positional[0]] if positional else Mode.RUN,
      dry_run=values.dry_run,
      report_only=values.collect,
    )
    logging.set_verbosity(logging.WARNING)
    cli.quiet_orbax_errors()
    path, extra_arg = split_config_spec(values.config)
    if mode == Mode.COLLECT and values.shard:
      raise ValueError("--collect reads every shard; drop --shard.")
    launcher = launchers.make_launcher(
      launcher_name(values.launcher, values.population),
      max_concurrent=values.max_concurrent,
      address=values.ray_address,
      resources=values.resources,
      shard=values.shard,
    )
    records = run_sweep(
      path,
      values.sweep,
      values.workdir,
      mode=mode,
      overrides=parse_overrides(values.set),
      extra_arg=extra_arg,
      archive=values.archive,
      launcher=launcher,
    )
    failed = [r for r in records if r.status.is_failure]
    counts = collections.Counter(r.status for r in records)
    print(
      f"{len(records)} points, {len(failed)} failed"
      + (
        ""
        if mode == Mode.DRY_RUN
        else " ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"); results in {values.workdir}/results.md"
      )
    )
    return exit_status(records)

  return cli.run(
    body, values, argv, prog="python -m stn_jax.sweep", doc=__doc__
  )
