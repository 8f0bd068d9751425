"""Where a sweep's points run: a :class:`Launcher`, chosen by name.

A launcher decides which of the planned points this process runs
(:meth:`Launcher.select`), how they are grouped (:meth:`Launcher.units`)
and where and how many at once (:meth:`Launcher.run`); every point is
trained by :func:`stn_jax.sweep.tasks.run_point` wherever it runs. The
runner (:func:`stn_jax.sweep.run_sweep`) sees only this protocol.

:data:`LAUNCHERS` names them (``--launcher=NAME``); a new launcher is one
entry there:

- ``local`` (:class:`LocalLauncher`): one point after another in this
  process.
- ``ray`` (:class:`stn_jax.sweep.ray_launcher.RayLauncher`): every point a
  Ray task, on a local Ray cluster started for the sweep or an existing one.
- ``population`` (:class:`stn_jax.sweep.population.PopulationLauncher`):
  compatible points trained together as populations, in this process.

A job array (``--shard=i/n``, e.g. a SLURM array) is orthogonal to those:
:class:`JobArrayLauncher` wraps any of them and keeps this process's share
of the points, so ``make_launcher(name, shard=...)`` builds it the same way.

On SIGTERM or SIGINT a launcher stops starting points and stops the
running ones: a local point's training loop saves and returns; Ray points
are cancelled, which delivers SIGINT to each worker, whose training loop
saves a checkpoint and returns the same way. A rerun resumes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from stn_jax import population as population_training
from stn_jax.sweep.population import PopulationLauncher
from stn_jax.sweep.ray_launcher import RayLauncher, parse_resources
from stn_jax.sweep.records import Status
from stn_jax.sweep.tasks import PointTask, run_point, settle

__all__ = [
  "LAUNCHERS",
  "JobArrayLauncher",
  "LaunchOptions",
  "Launcher",
  "LocalLauncher",
  "PointTask",
  "PopulationLauncher",
  "RayLauncher",
  "make_launcher",
  "parse_resources",
  "parse_shard",
  "run_point",
  "settle",
]


class Launcher(Protocol):
  """What the sweep runner asks of a launcher."""

  def select(self, planned: list) -> list:
    """The planned points (dicts, in sweep order) that this process runs:
    all of them, or a job array's share."""

  def units(self, tasks: list[PointTask], workdir: str) -> list:
    """The tasks grouped as :meth:`run` takes them: the tasks themselves,
    or populations of them (:class:`stn_jax.sweep.population.
    PopulationTask`); the runner checks them against saved checkpoints
    (:func:`stn_jax.sweep.population.check_resumes`) before any trains."""

  def run(
    self,
    units: list,
    train_fn: Callable,
    on_done: Callable,
    stop,
    on_start: Callable | None = None,
    log: Callable = print,
  ) -> None:
    """Trains ``units``: calls ``on_start(task)`` before and
    ``on_done(task, record)`` after each point (``record`` a
    :class:`~stn_jax.sweep.records.Record`). ``stop.signal`` set (SIGTERM,
    SIGINT) ends the run: points not started get ``on_done(task,
    None)``."""


class LocalLauncher:
  """Runs the points one after another in this process."""

  def select(self, planned: list) -> list:
    """Every planned point."""
    return list(planned)

  def units(self, tasks: list[PointTask], workdir: str) -> list:
    """The point tasks as they are."""
    return list(tasks)

  def run(
    self, units, train_fn, on_done, stop, on_start=None, log=print
  ) -> None:
    """See :meth:`Launcher.run`. A point interrupted by a signal ends the
    run; a signal between points ends it before the next, which gets
    ``on_done(task, None)``."""
    for task in units:
      if stop.signal:
        on_done(task, None)
        return
      if on_start:
        on_start(task)
      record = run_point(task, train_fn)
      on_done(task, record)
      if record.status == Status.INTERRUPTED:
        return


@dataclasses.dataclass
class JobArrayLauncher:
  """One process of a job array of ``count`` (``--shard=index/count``):
  runs the points at positions ``index, index + count, ...`` of the plan
  with the ``inner`` launcher. Every process writes its points' records
  into the shared sweep folder; ``--collect`` tabulates them all."""

  inner: Launcher
  index: int
  count: int

  def select(self, planned: list) -> list:
    """This process's share of what ``inner`` would run."""
    return self.inner.select(planned)[self.index :: self.count]

  def units(self, tasks: list[PointTask], workdir: str) -> list:
    """As ``inner`` groups them."""
    return self.inner.units(tasks, workdir)

  def run(
    self, units, train_fn, on_done, stop, on_start=None, log=print
  ) -> None:
    """As ``inner`` runs them."""
    self.inner.run(units, train_fn, on_done, stop, on_start=on_start, log=log)


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
  """The command line's launch options, for :data:`LAUNCHERS`' factories
  (each refuses the ones it does not take)."""

  max_concurrent: int | None = None
  address: str | None = None
  resources: dict[str, float] | None = None
  population_fn: Callable = population_training.train_population

  def refuse_ray_options(self, name: str) -> None:
    """Raises ValueError if a Ray-only option is set (for launcher
    ``name``)."""
    if (self.max_concurrent or 1) > 1 or self.address or self.resources:
      raise ValueError(
        "--max_concurrent, --ray_address and --resources need "
        f"--launcher=ray (the {name} launcher runs in this process, one "
        "point or population at a time)."
      )


def _local(options: LaunchOptions) -> LocalLauncher:
  options.refuse_ray_options("local")
  return LocalLauncher()


def _ray(options: LaunchOptions) -> RayLauncher:
  return RayLauncher(
    max_concurrent=options.max_concurrent,
    address=options.address,
    resources=options.resources,
  )


def _population(options: LaunchOptions) -> PopulationLauncher:
  options.refuse_ray_options("population")
  return PopulationLauncher(population_fn=options.population_fn)


# name -> factory(LaunchOptions) -> Launcher: --launcher's choices.
LAUNCHERS: dict[str, Callable[[LaunchOptions], Launcher]] = {
  "local": _local,
  "ray": _ray,
  "population": _population,
}


def make_launcher(
  name: str,
  *,
  max_concurrent: int | None = None,
  address: str | None = None,
  resources: str | dict | None = None,
  shard: str | Sequence[int] | None = None,
  population_fn: Callable = population_training.train_population,
) -> Launcher:
  """The launcher called ``name`` (a key of :data:`LAUNCHERS`), as one
  process of a job array when ``shard`` is given (``'i/n'`` or ``(i,
  n)``: :class:`JobArrayLauncher`).

  Args:
    name: ``'local'``, ``'ray'`` or ``'population'``.
    max_concurrent, address, resources: Ray's options (``resources`` as
      ``'cpu=1,gpu=0.25'`` or a dict); refused by the other launchers.
    shard: this process's share of a job array, or None.
    population_fn: what trains a population (tests inject a fake).

  Raises:
    ValueError: an unknown name, or an option the launcher does not take.
  """
  if name not in LAUNCHERS:
    raise ValueError(
      f"launcher must be one of {', '.join(LAUNCHERS)}; got {name!r}."
    )
  if max_concurrent is not None and (
    isinstance(max_concurrent, bool)
    or not isinstance(max_concurrent, int)
    or max_concurrent < 1
  ):
    raise ValueError(
      "--max_concurrent must be a positive int (points running at once); "
      f"got {max_concurrent!r}."
    )
  if isinstance(resources, str):
    resources = parse_resources(resources)
  launcher = LAUNCHERS[name](
    LaunchOptions(
      max_concurrent=max_concurrent,
      address=address,
      resources=resources,
      population_fn=population_fn,
    )
  )
  if isinstance(shard, str):
    shard = parse_shard(shard)
  if shard is not None:
    launcher = JobArrayLauncher(launcher, *shard)
  return launcher


def parse_shard(text: str | None) -> tuple[int, int] | None:
  """``'i/n'`` -> ``(i, n)`` with ``0 <= i < n``; None or '' -> None."""
  if not text:
    return None
  index, sep, count = text.partition("/")
  try:
    i, n = int(index), int(count)
  except ValueError:
    i, n = -1, 0
  if not sep or n < 1 or not 0 <= i < n:
    raise ValueError(
      f"--shard takes i/n with 0 <= i < n (e.g. 0/4, or "
      f"$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); got {text!r}."
    )
  return i, n
