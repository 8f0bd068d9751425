"""Where a sweep's points run: in this process, or as Ray tasks.

:func:`run_point` is what runs a point wherever it runs: it takes the
point's lock (another runner holding it means the point is reported
``'running'`` and left alone), writes the point's record as it starts and
ends (:mod:`stn_jax.sweep.records`), and trains. The launchers only decide
where and how many at once:

- :class:`LocalLauncher`: one point after another in this process.
- :class:`RayLauncher`: every point a Ray task with the given resources
  (fractional GPUs pack several small runs on one GPU), at most
  ``max_concurrent`` at a time, on a local Ray cluster it starts or on an
  existing one (``address``). Ray is an optional extra
  (``pip install -e .[ray]``).

On SIGTERM or SIGINT the launcher stops starting points and stops the
running ones: a local point's training loop saves and returns; Ray points
are cancelled, which delivers SIGINT to each worker, whose training loop
saves a checkpoint and returns the same way. A rerun resumes them.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from typing import Any

from stn_jax.sweep import records as sweep_records
from stn_jax.sweep.records import Record, Status


@dataclasses.dataclass
class PointTask:
  """One point to train: its record fields, its folder and its config."""

  name: str
  arg: str
  overrides: dict
  point_dir: str
  config: Any  # ml_collections.ConfigDict

  def record(self, **fields) -> Record:
    """This point's :class:`Record` with ``fields`` set (status
    'pending' unless given)."""
    return Record(
      name=self.name, arg=self.arg, overrides=self.overrides, **fields
    )


def settle(record: Record, results: dict) -> None:
  """Puts a training function's ``results`` into a point's ``record``, with
  status 'interrupted' (and the signal) when a signal stopped the run,
  'finished' otherwise."""
  record.results = results
  if "interrupted_at_step" in results:
    record.update(status=Status.INTERRUPTED, signal=results.get("signal"))
  else:
    record.status = Status.FINISHED


def run_point(task: PointTask, train_fn: Callable) -> Record:
  """Trains ``task`` under its point lock, writing its record as it starts
  and ends; returns the record.

  Status: 'finished', 'interrupted' (a signal stopped it after a checkpoint
  was saved), 'failed' (with the traceback in ``error``), 'skipped' (another
  runner finished it meanwhile) or 'running' (another runner holds it; the
  owner is in ``error``).
  """
  with sweep_records.PointLock(task.point_dir) as lock:
    if not lock.acquired:
      return task.record(status=Status.RUNNING, error=f"held by {lock.owner}")
    saved = sweep_records.read_record(task.point_dir)
    if saved is not None and saved.status == Status.FINISHED:
      return Record.from_dict({**task.record(), **saved, "status": "skipped"})
    record = task.record(
      status=Status.RUNNING,
      start_time=time.time(),
      end_time=None,
      **sweep_records.where(),
    )
    sweep_records.write_record(task.point_dir, record)
    try:
      settle(record, dict(train_fn(task.config, task.point_dir)))
    except Exception:  # noqa: BLE001 - recorded; the other points run
      record.update(status=Status.FAILED, error=traceback.format_exc())
    except BaseException:  # KeyboardInterrupt before the loop's handler
      record.update(status=Status.INTERRUPTED, signal="SIGINT")
      raise
    finally:
      record.end_time = time.time()
      record.results["wall_seconds"] = record.end_time - record.start_time
      sweep_records.write_record(task.point_dir, record)
  return record


class LocalLauncher:
  """Runs the points one after another in this process."""

  def run(self, tasks, train_fn, on_done, stop, on_start=None) -> None:
    """Calls ``on_start(task)`` before and ``on_done(task, record)`` after
    each point. A point interrupted by a signal ends the run; a signal
    between points ends it before the next, which gets ``on_done(task,
    None)``."""
    for task in tasks:
      if stop.signal:
        on_done(task, None)
        return
      if on_start:
        on_start(task)
      record = run_point(task, train_fn)
      on_done(task, record)
      if record.status == Status.INTERRUPTED:
        return


def parse_resources(text: str) -> dict[str, float]:
  """``'cpu=1,gpu=0.25[,name=amount]'`` -> ``{'cpu': 1.0, 'gpu': 0.25,
  ...}`` (other names are custom Ray resources)."""
  resources = {}
  for item in filter(None, (s.strip() for s in (text or "").split(","))):
    key, sep, value = item.partition("=")
    try:
      amount = float(value)
    except ValueError:
      amount = -1.0
    if not sep or not key or amount < 0:
      raise ValueError(
        "--resources takes name=amount pairs with amounts >= 0, e.g. "
        f"cpu=1,gpu=0.25; got {text!r}."
      )
    resources[key.strip()] = amount
  return resources


class RayLauncher:
  """Runs every point as a Ray task.

  Args:
    max_concurrent: points running at once (None: as many as the
      resources allow).
    address: an existing cluster (``ray://host:10001``, ``host:6379`` or
      ``'auto'``); None starts a local one on this machine for the sweep.
    resources: per point, ``{'cpu': 1, 'gpu': 0.25, ...}``. A fraction of a
      GPU also limits JAX's memory to that fraction of the GPU.
  """

  def __init__(
    self,
    *,
    max_concurrent: int | None = None,
    address: str | None = None,
    resources: dict[str, float] | None = None,
  ):
    # The arguments first: a bad one is named even where Ray is missing.
    if max_concurrent is not None and max_concurrent < 1:
      raise ValueError(
        f"max_concurrent must be a positive int; got {max_concurrent!r}."
      )
    try:
      import ray  # noqa: F401
    except ImportError:
      raise ValueError(
        "--launcher=ray needs Ray: pip install -e '.[ray]' (or pip "
        "install ray)."
      ) from None
    self.max_concurrent = max_concurrent
    self.address = address or None
    self.resources = {"cpu": 1.0, **(resources or {})}

  def _options(self) -> dict:
    resources = dict(self.resources)
    options = {
      "num_cpus": resources.pop("cpu"),
      "num_gpus": resources.pop("gpu", 0.0),
      "max_retries": 2,  # a lost worker: the rerun resumes its checkpoint
      "retry_exceptions": False,
    }
    if resources:
      options["resources"] = resources
    gpu = options["num_gpus"]
    if 0 < gpu < 1:
      options["runtime_env"] = {
        "env_vars": {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 * gpu:.3f}"}
      }
    return options

  def run(self, tasks, train_fn, on_done, stop, on_start=None) -> None:
    """As :meth:`LocalLauncher.run`, with up to ``max_concurrent`` points
    running at once as Ray tasks."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
      ray.init(
        address=self.address,
        include_dashboard=False,
        configure_logging=False,
      )
    stop.reinstall()  # ray.init installs its own SIGTERM handler
    try:
      self._run(ray, list(tasks), train_fn, on_done, stop, on_start)
    finally:
      if started_here:
        ray.shutdown()

  def _run(self, ray, tasks, train_fn, on_done, stop, on_start) -> None:
    remote = ray.remote(run_point).options(**self._options())
    limit = self.max_concurrent or len(tasks) or 1
    running, submitted = {}, {}
    cancelled = False
    while tasks or running:
      if stop.signal and not cancelled:
        for ref in running:
          ray.cancel(ref)  # SIGINT in the worker: it saves and returns
        if tasks and not running:
          on_done(tasks[0], None)
        tasks, cancelled = [], True
      while tasks and len(running) < limit and not stop.signal:
        task = tasks.pop(0)
        if on_start:
          on_start(task)
        ref = remote.remote(task, train_fn)
        running[ref], submitted[ref] = task, time.time()
      if not running:
        break
      done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
      for ref in done:
        task = running.pop(ref)
        try:
          record = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
          record = _after_cancel(task, submitted[ref])
        except ray.exceptions.RayError as error:  # the worker died
          record = task.record(
            status=Status.FAILED, error=f"{type(error).__name__}: {error}"
          )
          sweep_records.write_record(task.point_dir, record)
        on_done(task, record)


def _after_cancel(task: PointTask, since: float, timeout: float = 600.0):
  """The record of a point cancelled after ``since`` (its submission), once
  its worker is done with it: Ray reports a cancellation at once, while the
  worker's training loop is still saving its checkpoint (it holds the
  point's lock until its record is written). None if it had not started."""
  deadline = time.time() + timeout
  while sweep_records.is_locked(task.point_dir) and time.time() < deadline:
    time.sleep(0.2)
  saved = sweep_records.read_record(task.point_dir)
  if saved is None or (saved.get("start_time") or 0) < since:
    return None  # what is on disk is an earlier invocation's
  record = Record.from_dict({**task.record(), **saved})
  if record.status == Status.RUNNING:  # stopped before it could write
    record.update(status=Status.INTERRUPTED, signal="SIGINT")
  return record


def make_launcher(
  name: str,
  *,
  max_concurrent: int | None = None,
  address: str | None = None,
  resources: str | dict | None = None,
):
  """The launcher called ``name`` ('local' or 'ray')."""
  if isinstance(resources, str):
    resources = parse_resources(resources)
  if name == "local":
    if (max_concurrent or 1) > 1 or address or resources:
      raise ValueError(
        "--max_concurrent, --ray_address and --resources need "
        "--launcher=ray (the local launcher runs one point at a time)."
      )
    return LocalLauncher()
  if name == "ray":
    return RayLauncher(
      max_concurrent=max_concurrent, address=address, resources=resources
    )
  raise ValueError(f"launcher must be 'local' or 'ray'; got {name!r}.")


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
