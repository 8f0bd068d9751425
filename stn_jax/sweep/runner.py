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

import os
import re
import signal
import threading
import traceback
from collections.abc import Callable

from stn_jax import population, train
from stn_jax import workdir as workdir_lib
from stn_jax.config_args import load_config_module
from stn_jax.sweep import archive as sweep_archive
from stn_jax.sweep import launchers
from stn_jax.sweep import population as sweep_population
from stn_jax.sweep import records as sweep_records
from stn_jax.sweep.plan import build_config, plan
from stn_jax.sweep.records import Record, Status


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
      if archive and record.status == Status.SKIPPED:
        sweep_archive.save(os.path.join(workdir, record.name), archive)
    return records
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
        f"point {task.name} was stopped by {record.get('signal')} at step "
        f"{record['results'].get('interrupted_at_step')} (checkpoint saved)"
        "; rerun the same command to resume."
      )
    if stop.signal and record.status == Status.INTERRUPTED:
      # the sweep's signal, for the exit status
      record = Record.from_dict({**record, "signal": stop.signal})
    if archive and record.status == Status.FINISHED:
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
  config that fails), else (None, its :class:`launchers.PointTask`)."""
  point_dir = os.path.join(workdir, point["name"])
  record = _base_record(point)
  saved = None
  try:
    config = build_config(module, point, overrides)
    train.validate_config(config)
    saved = sweep_records.read_record(point_dir)
    if saved is not None and saved.status == Status.FINISHED:
      _check_same_config(point_dir, config)
      return Record.from_dict({**record, **saved, "status": "skipped"}), None
  except Exception:  # noqa: BLE001 - report it, run the other points
    record.update(status=Status.FAILED, error=traceback.format_exc())
    if saved is None or saved.status != Status.FINISHED:
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
    if record.status == Status.FINISHED:
      record = Record.from_dict({**record, "status": "skipped"})
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
