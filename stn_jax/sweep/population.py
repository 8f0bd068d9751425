"""Sweep points trained together as populations (``--population``).

Points of a sweep whose configs differ only in what population members may
differ in (``seed`` and the member hyperparameters,
:data:`stn_jax.population.MAY_DIFFER`) are grouped, and each group of two
or more trains as one population (:func:`stn_jax.population.train_population`):
one vmapped step for all of them. On an accelerator that is where small runs
pay (on an H200, 32 RTS ST-CNNs ran 2.08x faster than as separate steps:
``experiments/results/accelerator/``). On a CPU the members' steps are
unrolled into one (:func:`stn_jax.population.resolve_method`), about as
fast as separate points.

Each member still is a point: its folder ``DIR/<point>`` gets its config,
metrics, results, snapshots and ``record.json`` (marked with the
population's name), so tables, ``--collect``, ``--archive`` and reruns see
ordinary points. The population's stacked checkpoints live in
``DIR/populations/<name>``, where ``<name>`` is a hash of the members' point
names: a rerun with the same unfinished points forms the same groups and
resumes them. A rerun that would start a saved point from step 0 instead
(``--population`` dropped or added, or other points grouped with it) is
refused (:func:`check_resumes`). A member's ``wall_seconds`` is the
population's training time divided by its size, so a table's total time
stays the time spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence

from stn_jax import checkpointing, population
from stn_jax import workdir as workdir_lib
from stn_jax.sweep import records as sweep_records
from stn_jax.sweep.records import Record, Status
from stn_jax.sweep.tasks import run_point, settle


@dataclasses.dataclass
class PopulationTask:
  """Points to train as one population, and the population's folder."""

  name: str
  tasks: list  # stn_jax.sweep.tasks.PointTask, one per member
  workdir: str


def population_dir(workdir: str, name: str) -> str:
  """Where population ``name`` of the sweep in ``workdir`` keeps its
  stacked checkpoints."""
  return os.path.join(workdir, "populations", name)


def _shared_key(config) -> str:
  """What the members of one population must share: the config without
  ``population.MAY_DIFFER``."""
  shared = {
    k: v for k, v in config.to_dict().items() if k not in population.MAY_DIFFER
  }
  return json.dumps(shared, sort_keys=True, default=repr)


def group(tasks: Sequence, workdir: str) -> list:
  """Splits point tasks into populations (groups of 2 or more compatible
  points, in the order of their first point) and single points."""
  groups: dict[str, list] = {}
  for task in tasks:
    groups.setdefault(_shared_key(task.config), []).append(task)
  units = []
  for members in groups.values():
    if len(members) == 1:
      units.append(members[0])
      continue
    digest = hashlib.sha1(
      "\n".join(t.name for t in members).encode()
    ).hexdigest()[:12]
    name = f"population_{digest}"
    units.append(
      PopulationTask(
        name=name,
        tasks=members,
        workdir=population_dir(workdir, name),
      )
    )
  return units


def check_resumes(units: Sequence, workdir: str) -> None:
  """Refuses to train an unfinished point from step 0 while its checkpoint
  waits elsewhere: a point saved as a member of a population that this
  grouping does not form again (``--population`` dropped, or other points
  beside it, e.g. more seeds), or saved as a separate run that is now
  grouped into a population. ``units`` as :func:`group` returns them (or
  plain point tasks, without ``--population``).

  Raises:
    stn_jax.workdir.WorkdirError: naming the point, where its checkpoint is,
      and the two ways out (rerun as before, or delete that checkpoint).
  """
  for unit in units:
    is_population = isinstance(unit, PopulationTask)
    tasks, now = (unit.tasks, unit.name) if is_population else ([unit], None)
    for task in tasks:
      saved = sweep_records.read_record(task.point_dir) or {}
      before = (saved.get("population") or {}).get("name")
      if before == now:
        continue
      folder = population_dir(workdir, before) if before else task.point_dir
      steps = checkpointing.saved_steps(folder)
      if not steps:
        continue
      was = f"a member of {before}" if before else "a separate run"
      will = f"as a member of {now}" if now else "as a separate run"
      again = (
        "with --population and the same points beside it"
        if before
        else "without --population"
      )
      raise workdir_lib.WorkdirError(
        f"point {task.name} has a checkpoint at step {steps[-1]} from "
        f"training as {was} ({folder}/checkpoints), but this run would "
        f"train it {will} from step 0. Rerun {again} to resume it, or "
        f"delete {folder}/checkpoints to train it afresh."
      )


def run_population(
  unit: PopulationTask, population_fn: Callable, log=print
) -> list[Record]:
  """Trains ``unit``'s points as one population under all their point
  locks, writing each point's record as it starts and ends; returns the
  records (status as :func:`stn_jax.sweep.tasks.run_point`'s, the same for
  every member)."""
  tasks = unit.tasks
  with contextlib.ExitStack() as stack:
    locks = [
      stack.enter_context(sweep_records.PointLock(t.point_dir)) for t in tasks
    ]
    held = [lock.owner for lock in locks if not lock.acquired]
    if held:
      return [
        t.record(status=Status.RUNNING, error=f"a member is held by {held[0]}")
        for t in tasks
      ]
    saved = [sweep_records.read_record(t.point_dir) for t in tasks]
    if any(r is not None and r.status == Status.FINISHED for r in saved):
      # Another runner finished some members meanwhile: the group changed.
      return [
        t.record(
          status=Status.RUNNING,
          error="another runner finished some of this population's "
          "points; rerun to regroup the rest",
        )
        for t in tasks
      ]
    where = sweep_records.where()
    records = [
      t.record(status=Status.RUNNING, start_time=time.time(), **where)
      for t in tasks
    ]
    for index, (t, record) in enumerate(zip(tasks, records)):
      record.population = {
        "name": unit.name,
        "members": len(tasks),
        "index": index,  # its member in the stacked checkpoint
      }
      sweep_records.write_record(t.point_dir, record)
    try:
      results = population_fn(
        [t.config for t in tasks],
        unit.workdir,
        member_dirs=[t.point_dir for t in tasks],
        log=log,
      )
      for record, member in zip(records, results):
        settle(record, {k: v for k, v in member.items() if k != "params"})
    except Exception:  # noqa: BLE001 - recorded; the other points run
      error = traceback.format_exc()
      for record in records:
        record.update(status=Status.FAILED, error=error)
    except BaseException:  # KeyboardInterrupt before the loop's handler
      for record in records:
        record.update(status=Status.INTERRUPTED, signal="SIGINT")
      raise
    finally:
      end = time.time()
      for t, record in zip(tasks, records):
        wall = end - record.start_time
        record.end_time = end
        record.results["wall_seconds"] = wall / len(tasks)
        record.population["wall_seconds"] = wall
        sweep_records.write_record(t.point_dir, record)
  return records


def run_units(
  units: Sequence,
  train_fn: Callable,
  population_fn: Callable,
  on_done: Callable,
  stop,
  on_start: Callable | None = None,
  log=print,
) -> None:
  """Runs populations and single points one after another in this process,
  as :class:`stn_jax.sweep.launchers.LocalLauncher` runs points: ``on_start`` and
  ``on_done(task, record)`` per point; a signal ends the run."""
  for unit in units:
    tasks = unit.tasks if isinstance(unit, PopulationTask) else [unit]
    if stop.signal:
      for task in tasks:
        on_done(task, None)
      return
    if on_start:
      for task in tasks:
        on_start(task)
    if isinstance(unit, PopulationTask):
      log(f"training {len(tasks)} points as {unit.workdir}")
      records = run_population(unit, population_fn, log=log)
    else:
      records = [run_point(unit, train_fn)]
    for task, record in zip(tasks, records):
      on_done(task, record)
    if any(r.status == Status.INTERRUPTED for r in records):
      return


@dataclasses.dataclass
class PopulationLauncher:
  """``--launcher=population`` (or ``--population``): groups the points
  into populations (:func:`group`) and trains them, and the points left
  single, one after another in this process (a
  :class:`stn_jax.sweep.launchers.Launcher`).

  Attributes:
    population_fn: ``population_fn(configs, workdir, member_dirs=...,
      log=...)`` trains one population and returns each member's results
      (:func:`stn_jax.population.train_population`).
  """

  population_fn: Callable = population.train_population

  def select(self, planned: list) -> list:
    """Every planned point."""
    return list(planned)

  def units(self, tasks: list, workdir: str) -> list:
    """Populations of the compatible tasks, and the tasks left single
    (:func:`group`)."""
    return group(tasks, workdir)

  def run(
    self, units, train_fn, on_done, stop, on_start=None, log=print
  ) -> None:
    """See :func:`run_units`."""
    run_units(
      units,
      train_fn,
      self.population_fn,
      on_done,
      stop,
      on_start=on_start,
      log=log,
    )
