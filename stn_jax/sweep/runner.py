"""Running a sweep: every point trained in its own folder, resumably.

Every point trains in its own workdir ``DIR/<index>_<name>`` and writes
its record there (``record.json``: status, results, error, start and end
time, host, worker, device). The runner is resumable: a finished point is
skipped, an interrupted one resumes from its checkpoint. A failed point is
recorded with its error and the others still run. ``DIR/results.jsonl`` and
``DIR/results.md`` are rebuilt atomically from all the records after every
point, so several runners can share ``DIR``; a lock keeps two runners off
one point.
"""

from __future__ import annotations

import enum
import os
import traceback
from collections.abc import Callable

from stn_jax import population, train
from stn_jax.config_args import load_config_module
from stn_jax.sweep import archive as sweep_archive
from stn_jax.sweep import checks, launchers
from stn_jax.sweep import population as sweep_population
from stn_jax.sweep import records as sweep_records
from stn_jax.sweep.plan import build_config, plan
from stn_jax.sweep.records import Record, Status
from stn_jax.sweep.signals import StopOnSignal
from stn_jax.sweep.tasks import PointTask


class Mode(enum.StrEnum):
  """What a sweep command does, one meaning each.

  - ``RUN``: train this process's points (those its launcher selects)
    that are not finished, skip the finished ones, and keep every point's
    record and the tables (``results.jsonl``, ``results.md``) up to date.
  - ``COLLECT``: train nothing; rebuild the tables from the records of
    every point (all shards, all runners) and return them: a finished
    point reads ``skipped``, one without a record ``pending``.
  - ``DRY_RUN``: build and check every selected point's config; write
    nothing; each point reads ``ok`` or ``failed``.
  """

  RUN = "run"
  COLLECT = "collect"
  DRY_RUN = "dry_run"


def run_sweep(
  config_path: str,
  name: str,
  workdir: str,
  *,
  mode: Mode | str = Mode.RUN,
  overrides: dict | None = None,
  train_fn: Callable = train.train_and_evaluate,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
  archive: str | None = None,
  launcher: launchers.Launcher | None = None,
  log: Callable = print,
  dry_run: bool = False,
  report_only: bool = False,
  shard: tuple[int, int] | None = None,
  train_population: bool = False,
  population_fn: Callable = population.train_population,
) -> list[Record]:
  """Runs, collects or dry-runs (``mode``: :class:`Mode`) sweep ``name``
  of the config file ``config_path`` in ``workdir``.

  ``select(point)`` keeps a subset of the points (their workdir names keep
  their index in the full sweep). ``extra_arg`` (e.g. ``'small=true'``) is
  appended to every point's ``get_config`` arg before it is named, so runs
  with and without it get different workdirs. ``overrides`` are set on
  every point's config. ``archive`` is a folder of finished points' small
  files (:mod:`stn_jax.sweep.archive`): restored into ``workdir`` first,
  added to as points finish. ``launcher`` (:mod:`stn_jax.sweep.launchers`;
  default: one point after another in this process) selects this process's
  points and trains them with ``train_fn(config, point_dir)``.

  The older spellings stay: ``dry_run=True`` and ``report_only=True`` are
  ``mode='dry_run'`` and ``mode='collect'``; ``shard=(i, n)`` runs the
  points at positions ``i, i + n, ...`` (a
  :class:`~stn_jax.sweep.launchers.JobArrayLauncher`);
  ``train_population`` trains the points as populations with
  ``population_fn`` (a :class:`~stn_jax.sweep.population.
  PopulationLauncher`).

  Each point writes ``workdir/<point>/record.json``; ``results.jsonl`` and
  ``results.md`` are rebuilt from the records of every kept point (all
  shards) after each point (:mod:`stn_jax.sweep.records`).

  Returns:
    one :class:`~stn_jax.sweep.records.Record` per point this process
    selected: name, arg, overrides, status ('finished', 'skipped'
    (finished earlier), 'failed', 'ok' (dry run), 'pending' (collect),
    'running' (another runner holds it), 'interrupted' (SIGTERM or SIGINT
    during a point, or before it started: the sweep stops; ``signal``
    names it)), results, error, and where trained: start_time, end_time,
    host, worker, device.
  """
  mode = resolve_mode(mode, dry_run=dry_run, report_only=report_only)
  launcher = _launcher(launcher, shard, train_population, population_fn)
  if not str(workdir).strip():
    raise ValueError("--workdir is empty; give the sweep's folder.")
  for flag, folder in (("--workdir", workdir), ("--archive", archive)):
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(f"{flag} {folder} is a file, not a folder.")
  module = load_config_module(config_path)
  planned = plan(module, name, select=select, extra_arg=extra_arg)
  mine = launcher.select(planned)
  if mode == Mode.DRY_RUN:
    return _dry_run_mode(module, mine, overrides, log)
  if mode == Mode.COLLECT:
    return _collect_mode(
      module, name, planned, mine, workdir, overrides, archive, log
    )
  return _run_mode(
    module, planned, mine, workdir, overrides, archive, launcher, train_fn, log
  )


def resolve_mode(mode, *, dry_run: bool, report_only: bool) -> Mode:
  """The :class:`Mode` that ``mode`` (a Mode or its string) and the older
  flags ``dry_run`` and ``report_only`` ask for.

  Raises:
    ValueError: they ask for two different modes.
  """
  asked = {Mode(mode)} - {Mode.RUN}
  asked |= {Mode.DRY_RUN} if dry_run else set()
  asked |= {Mode.COLLECT} if report_only else set()
  if len(asked) > 1:
    raise ValueError(
      "choose one of run, collect (--collect) and dry_run (--dry_run); got "
      f"{' and '.join(sorted(asked))}."
    )
  return asked.pop() if asked else Mode.RUN


def _launcher(launcher, shard, train_population, population_fn):
  """The launcher that ``launcher`` and the older arguments ask for."""
  if train_population:
    if not isinstance(
      launcher or launchers.LocalLauncher(),
      (launchers.LocalLauncher, launchers.PopulationLauncher),
    ):
      raise ValueError(
        "--population trains its populations in this process; it does not "
        "combine with --launcher=ray (use --shard to split a sweep over "
        "processes)."
      )
    launcher = launchers.PopulationLauncher(population_fn=population_fn)
  launcher = launcher or launchers.LocalLauncher()
  if shard is not None:
    launcher = launchers.JobArrayLauncher(launcher, *shard)
  return launcher


def _dry_run_mode(module, mine, overrides, log) -> list[Record]:
  """Mode.DRY_RUN: every point's config built and checked, listed."""
  records = [_dry_run(module, point, overrides) for point in mine]
  for r in records:
    log(
      f"{r.name}: {r.status}"
      + (f" {r.error.splitlines()[-1]}" if r.error else "")
    )
  return records


def _restore_archive(archive, workdir, planned, check, log) -> None:
  """Copies the archive's finished points that ``workdir`` lacks into it."""
  by_name = {p["name"]: p for p in planned}
  restored = sweep_archive.restore(
    archive,
    workdir,
    list(by_name),
    check=lambda name, folder: check(by_name[name], folder),
  )
  if restored:
    log(f"restored {len(restored)} finished point(s) from {archive}")


def _collect_mode(
  module, name, planned, mine, workdir, overrides, archive, log
) -> list[Record]:
  """Mode.COLLECT: the tables rebuilt from the records; nothing trains."""
  check = checks.plan_check(module, overrides)
  if overrides and planned:  # a bad --set is named before the folder
    build_config(module, planned[0], overrides)
  checks.check_collect_folder(workdir, name, planned, archive)
  os.makedirs(workdir, exist_ok=True)
  if archive:
    _restore_archive(archive, workdir, planned, check, log)
  records = _report(planned, mine, workdir, check)
  for record in records:
    if archive and record.status == Status.SKIPPED:
      sweep_archive.save(os.path.join(workdir, record.name), archive)
    if record.status in (Status.FAILED, Status.DAMAGED) and record.error:
      log(
        f"point {record.name} {record.status}: "
        f"{record.error.strip().splitlines()[-1]}"
      )
  return records


def _run_mode(
  module, planned, mine, workdir, overrides, archive, launcher, train_fn, log
) -> list[Record]:
  """Mode.RUN: the selected points trained by ``launcher``. A signal from
  here on (outside a point's training loop, which saves and stops on its
  own) stops the sweep before its next point; one after the last point is
  delivered again when the sweep returns (:mod:`stn_jax.sweep.signals`)."""
  with StopOnSignal() as stop:
    check = checks.plan_check(module, overrides)
    os.makedirs(workdir, exist_ok=True)
    if archive:
      _restore_archive(archive, workdir, planned, check, log)
    records, tasks = {}, []
    for point in mine:
      record, task = _prepare(module, point, workdir, overrides)
      if task is None:
        records[point["name"]] = record
        if record.status == Status.FAILED:
          log(f"point {point['name']} failed: {record.error.splitlines()[-1]}")
        if archive and record.status == Status.SKIPPED:
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
        record = task.record(status=Status.INTERRUPTED, signal=stop.signal)
        log(
          f"{stop.signal}: the sweep stopped before {task.name}. Rerun the "
          "same command to continue."
        )
      elif record.status == Status.FAILED:
        log(f"point {task.name} failed:\n{record.error}")
      elif record.status == Status.RUNNING:
        log(f"point {task.name} is running elsewhere ({record.error}).")
      elif record.status == Status.INTERRUPTED:
        log(
          f"point {task.name} was stopped by {record.signal} at step "
          f"{record.results.get('interrupted_at_step')} (checkpoint saved)"
          "; rerun the same command to resume."
        )
      if stop.signal and record.status == Status.INTERRUPTED:
        # the sweep's signal, for the exit status
        record = Record.from_dict({**record, "signal": stop.signal})
        stop.acted()
      if archive and record.status == Status.FINISHED:
        sweep_archive.save(task.point_dir, archive)
      records[task.name] = record
      sweep_records.write_results(workdir, planned, check)

    units = launcher.units(tasks, workdir)
    sweep_population.check_resumes(units, workdir)
    launcher.run(units, train_fn, on_done, stop, on_start=on_start, log=log)
    return [records[p["name"]] for p in mine if p["name"] in records]


def _base_record(point) -> Record:
  return Record(
    name=point["name"], arg=point["arg"], overrides=point["overrides"]
  )


def _dry_run(module, point, overrides) -> Record:
  record = _base_record(point)
  try:
    train.validate_config(build_config(module, point, overrides))
    record.status = Status.OK
  except Exception:  # noqa: BLE001 - listed with the others
    record.update(status=Status.FAILED, error=traceback.format_exc())
  return record


def _prepare(module, point, workdir, overrides):
  """(record, None) for a point that is not to be trained (finished, or a
  config that fails), else (None, its :class:`~stn_jax.sweep.tasks.PointTask`)."""
  point_dir = os.path.join(workdir, point["name"])
  record = _base_record(point)
  saved = None
  try:
    config = build_config(module, point, overrides)
    train.validate_config(config)
    saved = sweep_records.read_record(point_dir)
    if saved is not None and saved.status == Status.FINISHED:
      checks.check_same_config(point_dir, config)
      return Record.from_dict({**record, **saved, "status": "skipped"}), None
  except Exception:  # noqa: BLE001 - report it, run the other points
    record.update(status=Status.FAILED, error=traceback.format_exc())
    if saved is None or saved.status != Status.FINISHED:
      # (a finished point's record stays: this config is not its run)
      sweep_records.write_record(point_dir, record)
    return record, None
  task = PointTask(
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
    if record.status == Status.FINISHED:
      record = Record.from_dict({**record, "status": "skipped"})
    records.append(record)
  return records
