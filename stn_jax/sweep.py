"""Hyperparameter sweeps: plain functions in a config file.

  python -m stn_jax.sweep --config=configs/mnist.py[:ARG] --sweep=table1 \
      --workdir=DIR [--dry_run] [--set=num_steps=1000 ...]

``--config=file.py:ARG`` means what it means for ``stn_jax.main``: the
config file and its ``get_config`` argument; here ``ARG`` (e.g.
``small=true``) is appended to every point's own argument.

A sweep is a function ``sweep_<name>(add)`` beside ``get_config`` in the
config file; each ``add(arg, **overrides)`` adds one point: the config
arg string and config overrides (dotted keys such as ``'model_kwargs.width'``
go through a dict: ``add(arg, **{'model_kwargs.width': 0.5})``).

Every point trains in its own workdir ``DIR/<index>_<name>`` and writes
its record there (``record.json``: status, results, error, start and end
time, host, worker, device). The runner is resumable: a finished point is
skipped, an interrupted one resumes from its checkpoint. A failed point is
recorded with its error and the others still run. ``DIR/results.jsonl`` and
``DIR/results.md`` are rebuilt atomically from all the records after every
point, so several runners can share ``DIR``; a lock keeps two runners off
one point.

Where points run (:mod:`stn_jax.launchers`):

  --launcher=local                 one after another in this process
  --launcher=ray [--max_concurrent=K] [--ray_address=ADDR]
      [--resources=cpu=1,gpu=0.25] every point a Ray task, on a local Ray
                                   cluster started for the sweep or an
                                   existing one
  --shard=i/n                      this process runs every n-th point (job
                                   arrays); --collect rebuilds the table

``--archive=DIR`` keeps every finished point's small files (record, config,
results, metrics; no checkpoints) in ``DIR/<point>``, to commit: a later
run with the same ``--archive`` restores them into its workdir and trains
only the rest (:mod:`stn_jax.sweep_archive`).

``--population`` trains the points that differ only in seed and member
hyperparameters (learning rate, localisation multiplier, clipping, weight
decay) together, as one population each: one vmapped step for all, in this
process; each member keeps its point folder and record
(:mod:`stn_jax.sweep_population`). For accelerators, where one small run
leaves the device mostly idle.
"""

from __future__ import annotations

import ast
import collections
import os
import re
import signal
import threading
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import flags

from stn_jax import (
  cli,
  launchers,
  population,
  sweep_archive,
  sweep_population,
  sweep_records,
  train,
)
from stn_jax import workdir as workdir_lib
from stn_jax.config_args import load_config_module, split_config_spec


def sweep_names(module) -> list[str]:
  return sorted(
    n[len("sweep_") :]
    for n in dir(module)
    if n.startswith("sweep_") and callable(getattr(module, n))
  )


def expand(module, name: str) -> list[dict[str, Any]]:
  """The points of sweep ``name``: ``[{'arg': str, 'overrides': dict}]``."""
  function = getattr(module, f"sweep_{name}", None)
  if function is None:
    raise ValueError(
      f"sweep must be one of {', '.join(sweep_names(module))}; got {name!r}."
    )
  points = []

  def add(arg: str = "", **overrides):
    points.append({"arg": arg, "overrides": overrides})

  function(add)
  return points


def build_config(
  module, point, extra_overrides=None
) -> ml_collections.ConfigDict:
  """The config of one point: ``get_config(arg)`` plus its overrides."""
  config = module.get_config(point["arg"])
  overrides = {**point["overrides"], **(extra_overrides or {})}
  for key, value in overrides.items():
    *path, target = key.split(".")
    parent = config
    for part in path:
      is_dict = isinstance(parent, ml_collections.ConfigDict)
      parent = parent.get(part) if is_dict else None
    if (
      not isinstance(parent, ml_collections.ConfigDict) or target not in parent
    ):
      raise ValueError(f"override {key!r}: no such config field.")
    try:
      parent[target] = value
    except TypeError:
      old = parent[target]
      raise ValueError(
        f"override {key!r}: expected {type(old).__name__} (like the "
        f"default {old!r}), got {value!r} ({type(value).__name__})."
      ) from None
  return config


def point_name(index: int, point) -> str:
  text = ",".join(
    [point["arg"], *(f"{k}={v}" for k, v in sorted(point["overrides"].items()))]
  )
  slug = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text).strip(",_")[:80]
  return f"{index:03d}_{slug or 'default'}"


def plan(
  module,
  name: str,
  *,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
) -> list[dict]:
  """The kept points of sweep ``name``, in order: ``{'index', 'name',
  'arg', 'overrides'}`` with ``extra_arg`` appended to each arg and the
  folder name (:func:`point_name`) from its index in the full sweep."""
  planned = []
  for index, point in enumerate(expand(module, name)):
    if select is not None and not select(point):
      continue
    if extra_arg:
      point = {
        **point,
        "arg": ",".join(a for a in (point["arg"], extra_arg) if a),
      }
    planned.append({"index": index, "name": point_name(index, point), **point})
  return planned


def run_sweep(
  config_path: str,
  name: str,
  workdir: str,
  *,
  dry_run: bool = False,
  overrides: dict | None = None,
  train_fn: Callable = train.train_and_evaluate,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
  report_only: bool = False,
  archive: str | None = None,
  launcher=None,
  shard: tuple[int, int] | None = None,
  train_population: bool = False,
  population_fn: Callable = population.train_population,
  log=print,
) -> list[dict]:
  """Runs (or, with ``dry_run``, checks and lists) every point.

  ``select(point)`` keeps a subset of the points (their workdir names keep
  their index in the full sweep). ``extra_arg`` (e.g. ``'small=true'``) is
  appended to every point's ``get_config`` arg before it is named, so runs
  with and without it get different workdirs. ``shard=(i, n)`` runs the
  kept points at positions ``i, i + n, i + 2n, ...`` (one process of a job
  array of n). ``report_only`` collects the points' records and trains
  nothing (unfinished points are 'pending'). ``archive`` is a folder of
  finished points' small files (:mod:`stn_jax.sweep_archive`): restored
  into ``workdir`` first, added to as points finish. ``launcher`` is a
  :mod:`stn_jax.launchers` launcher (default: one point after another in
  this process). ``train_population`` groups the points to train into
  populations, trained in this process by ``population_fn``
  (:mod:`stn_jax.sweep_population`).

  Each point writes ``workdir/<point>/record.json``; ``results.jsonl`` and
  ``results.md`` are rebuilt from the records of every kept point (all
  shards) after each point (:mod:`stn_jax.sweep_records`).

  Returns:
    one record per point of this shard: name, arg, overrides, status
    ('finished', 'skipped' (finished earlier), 'failed', 'ok' (dry run),
    'pending' (report_only), 'running' (another runner holds it),
    'interrupted' (SIGTERM or SIGINT during a point, or before it started:
    the sweep stops; ``signal`` names it)), results, error, and where
    trained: start_time, end_time, host, worker, device.
  """
  if train_population and not isinstance(
    launcher or launchers.LocalLauncher(), launchers.LocalLauncher
  ):
    raise ValueError(
      "--population trains its populations in this process; it does not "
      "combine with --launcher=ray (use --shard to split a sweep over "
      "processes)."
    )
  if not str(workdir).strip():
    raise ValueError("--workdir is empty; give the sweep's folder.")
  for flag, folder in (("--workdir", workdir), ("--archive", archive)):
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(f"{flag} {folder} is a file, not a folder.")
  module = load_config_module(config_path)
  planned = plan(module, name, select=select, extra_arg=extra_arg)
  mine = planned if shard is None else planned[shard[0] :: shard[1]]
  if dry_run:
    records = [_dry_run(module, point, overrides) for point in mine]
    for r in records:
      log(
        f"{r['name']}: {r['status']}"
        + (f" {r['error'].splitlines()[-1]}" if r["error"] else "")
      )
    return records
  check = plan_check(module, overrides)
  if report_only:
    if overrides and planned:  # a bad --set is named before the folder
      build_config(module, planned[0], overrides)
    _check_collect_folder(workdir, name, planned, archive)
  os.makedirs(workdir, exist_ok=True)
  if archive:
    by_name = {p["name"]: p for p in planned}
    restored = sweep_archive.restore(
      archive,
      workdir,
      list(by_name),
      check=lambda name, folder: check(by_name[name], folder),
    )
    if restored:
      log(f"restored {len(restored)} finished point(s) from {archive}")
  if report_only:
    records = _report(planned, mine, workdir, check)
    for record in records:
      if archive and record["status"] == "skipped":
        sweep_archive.save(os.path.join(workdir, record["name"]), archive)
    return records
  records, tasks = {}, []
  for point in mine:
    record, task = _prepare(module, point, workdir, overrides)
    if task is None:
      records[point["name"]] = record
      if record["status"] == "failed":
        log(f"point {point['name']} failed: {record['error'].splitlines()[-1]}")
      if archive and record["status"] == "skipped":
        sweep_archive.save(os.path.join(workdir, point["name"]), archive)
    else:
      tasks.append(task)
  sweep_records.write_results(workdir, planned, check)
  total = len(mine)
  positions = {p["name"]: k for k, p in enumerate(mine)}

  def on_start(task):
    log(f"[{positions[task.name] + 1}/{total}] {task.name}")

  def on_done(task, record):
    if record is None:  # a signal came before it started
      record = task.record(status="interrupted", signal=stop.signal)
      log(
        f"{stop.signal}: the sweep stopped before {task.name}. Rerun the "
        "same command to continue."
      )
    elif record["status"] == "failed":
      log(f"point {task.name} failed:\n{record['error']}")
    elif record["status"] == "running":
      log(f"point {task.name} is running elsewhere ({record['error']}).")
    elif record["status"] == "interrupted":
      log(
        f"point {task.name} was stopped by {record.get('signal')} at step "
        f"{record['results'].get('interrupted_at_step')} (checkpoint saved)"
        "; rerun the same command to resume."
      )
    if stop.signal and record["status"] == "interrupted":
      record = {**record, "signal": stop.signal}  # the sweep's, for the exit
    if archive and record["status"] == "finished":
      sweep_archive.save(task.point_dir, archive)
    records[task.name] = record
    sweep_records.write_results(workdir, planned, check)

  units = sweep_population.group(tasks, workdir) if train_population else tasks
  sweep_population.check_resumes(units, workdir)
  launcher = launcher or launchers.LocalLauncher()
  with _StopBetweenPoints() as stop:
    if train_population:
      sweep_population.run_units(
        units,
        train_fn,
        population_fn,
        on_done,
        stop,
        on_start=on_start,
        log=log,
      )
    else:
      launcher.run(tasks, train_fn, on_done, stop, on_start=on_start)
  return [records[p["name"]] for p in mine if p["name"] in records]


def _base_record(point) -> dict:
  return {
    "name": point["name"],
    "arg": point["arg"],
    "overrides": point["overrides"],
    "results": {},
    "error": "",
  }


def _dry_run(module, point, overrides) -> dict:
  record = _base_record(point)
  try:
    train.validate_config(build_config(module, point, overrides))
    record["status"] = "ok"
  except Exception:  # noqa: BLE001 - listed with the others
    record.update(status="failed", error=traceback.format_exc())
  return record


def _prepare(module, point, workdir, overrides):
  """(record, None) for a point that is not to be trained (finished, or a
  config that fails), else (None, its :class:`launchers.PointTask`)."""
  point_dir = os.path.join(workdir, point["name"])
  record = _base_record(point)
  saved = None
  try:
    config = build_config(module, point, overrides)
    train.validate_config(config)
    saved = sweep_records.read_record(point_dir)
    if saved is not None and saved["status"] == "finished":
      _check_same_config(point_dir, config)
      return {**record, **saved, "status": "skipped"}, None
  except Exception:  # noqa: BLE001 - report it, run the other points
    record.update(status="failed", error=traceback.format_exc())
    if saved is None or saved["status"] != "finished":
      # (a finished point's record stays: this config is not its run)
      sweep_records.write_record(point_dir, record)
    return record, None
  task = launchers.PointTask(
    name=point["name"],
    arg=point["arg"],
    overrides=point["overrides"],
    point_dir=point_dir,
    config=config,
  )
  return None, task


def _report(planned, mine, workdir, check) -> list[dict]:
  """report_only: the records on disk (finished ones checked against the
  config they would have now by ``check``: see
  :func:`sweep_records.collect`); a current finished point is 'skipped'."""
  on_disk = {
    r["name"]: r for r in sweep_records.write_results(workdir, planned, check)
  }
  records = []
  for point in mine:
    record = on_disk[point["name"]]
    if record["status"] == "finished":
      record = {**record, "status": "skipped"}
    records.append(record)
  return records


def _check_collect_folder(workdir, name, planned, archive) -> None:
  """``--collect`` reads a sweep folder: refuses one that does not exist
  (a misspelled path would be created) or that holds none of this sweep's
  points but other points (another ``--sweep``, ``--config`` argument or
  ``--set``), whose results.md it would overwrite with pending rows."""
  if archive and os.path.isdir(archive):
    return  # the points may come from the archive
  if not os.path.isdir(workdir):
    raise ValueError(
      f"--collect: {workdir} is not a folder; give the --workdir of a sweep "
      "that ran (nothing was created)."
    )
  names = {p["name"] for p in planned}
  present = sorted(
    entry
    for entry in os.listdir(workdir)
    if re.fullmatch(r"\d{3}_.+", entry)
    and os.path.isdir(os.path.join(workdir, entry))
  )
  if present and not names.intersection(present):
    raise ValueError(
      f"--collect: {workdir} holds none of the {len(planned)} points of "
      f"sweep {name!r} but {len(present)} other point folder(s) (e.g. "
      f"{present[0]}); check --sweep, the --config argument and --set "
      "(nothing was changed)."
    )


class _StopBetweenPoints:
  """SIGTERM/SIGINT between points stop the sweep before the next point
  (during a point, the training loop handles them and saves)."""

  def __enter__(self):
    self.signal = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for number in (signal.SIGTERM, signal.SIGINT):
        self._previous[number] = signal.signal(number, self._handler)
    return self

  def reinstall(self) -> None:
    """Takes the signals back from a library that set its own handlers
    (``ray.init`` does)."""
    for number in self._previous:
      signal.signal(number, self._handler)

  def _handler(self, number, _):
    self.signal = signal.Signals(number).name

  def __exit__(self, *exc):
    for number, previous in self._previous.items():
      signal.signal(number, previous)


def _config_change(point_dir: str, config) -> str:
  """Why the finished point in ``point_dir`` is not the result of
  ``config`` ('' when it is, or when it has no config.json to tell). A
  point is reported as current only if it ran this config (e.g. not before
  a change of ``--set``). Its step budget counts too: a workdir may extend
  a run (``num_steps`` is safe to change there), but a point finished at
  another budget did not produce this point's results."""
  try:
    saved = sweep_archive.saved_config(point_dir)
  except ValueError as error:
    return (
      f"its config.json is damaged ({error}); delete {point_dir} to rerun it"
    )
  if saved is None:
    return ""
  differences = workdir_lib.config_differences(saved, config)
  if saved.get("num_steps", config.num_steps) != config.num_steps:
    differences.append(
      f"num_steps: {saved['num_steps']!r} -> {config.num_steps!r}"
    )
  if not differences:
    return ""
  return (
    f"finished with another config ({'; '.join(differences)}); its results "
    "are not this point's. Use a new --workdir for the changed sweep, or "
    "delete that point's folder to rerun it."
  )


def _check_same_config(point_dir: str, config) -> None:
  """Raises :class:`WorkdirError` when :func:`_config_change` finds one."""
  reason = _config_change(point_dir, config)
  if reason:
    raise workdir_lib.WorkdirError(f"{point_dir} {reason}")


def plan_check(module, overrides) -> Callable[[dict, str], str]:
  """``check(point, point_dir)`` for :func:`sweep_records.collect`: why a
  finished point's record is not the result of the config the sweep
  builds for it now ('' if it is)."""
  configs = {}

  def check(point, point_dir):
    if point["name"] not in configs:
      try:
        configs[point["name"]] = build_config(module, point, overrides)
      except Exception as error:  # noqa: BLE001 - the point's config fails
        configs[point["name"]] = error
    config = configs[point["name"]]
    if isinstance(config, Exception):
      return f"its config cannot be built now: {config}"
    return _config_change(point_dir, config)

  return check


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
    "Build and list every point; train nothing.",
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
    ["local", "ray"],
    "local: one point after another in this process; ray: every point a "
    "Ray task (pip install -e '.[ray]').",
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
    "added to as points finish (stn_jax.sweep_archive).",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "population",
    False,
    "Train the points that differ only in seed and member hyperparameters "
    "together, one population (one vmapped step) each, in this process; "
    "for accelerators (stn_jax.sweep_population).",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "collect",
    False,
    "Train nothing: rebuild results.jsonl and results.md from every "
    "point's record (all shards) and print the summary.",
    flag_values=values,
  )
  for name in ("config", "sweep", "workdir"):
    flags.mark_flag_as_required(name, flag_values=values)
  return values


def main(argv=None) -> int:
  """``python -m stn_jax.sweep``; returns the exit status (1 if a point
  failed)."""
  from absl import logging

  values = _flags()

  def body(positional):
    if positional:
      raise ValueError(f"unexpected arguments {positional}.")
    logging.set_verbosity(logging.WARNING)
    cli.quiet_orbax_errors()
    path, extra_arg = split_config_spec(values.config)
    if values.collect and values.shard:
      raise ValueError("--collect reads every shard; drop --shard.")
    records = run_sweep(
      path,
      values.sweep,
      values.workdir,
      dry_run=values.dry_run,
      overrides=parse_overrides(values.set),
      extra_arg=extra_arg,
      report_only=values.collect,
      archive=values.archive,
      shard=launchers.parse_shard(values.shard),
      train_population=values.population,
      launcher=launchers.make_launcher(
        values.launcher,
        max_concurrent=values.max_concurrent,
        address=values.ray_address,
        resources=values.resources,
      ),
    )
    failed = [r for r in records if r["status"] in ("failed", "damaged")]
    counts = collections.Counter(r["status"] for r in records)
    print(
      f"{len(records)} points, {len(failed)} failed"
      + (
        ""
        if values.dry_run
        else " ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"); results in {values.workdir}/results.md"
      )
    )
    stopped = [r["signal"] for r in records if r["status"] == "interrupted"]
    if stopped:
      return {"SIGINT": 130, "SIGTERM": 143}.get(stopped[0], 1)
    return 1 if failed else 0

  return cli.run(
    body, values, argv, prog="python -m stn_jax.sweep", doc=__doc__
  )


if __name__ == "__main__":
  raise SystemExit(main())
