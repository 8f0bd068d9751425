"""Sweep points as Ray tasks (``--launcher=ray``).

:class:`RayLauncher` runs every point as a Ray task with the given
resources (fractional GPUs pack several small runs on one GPU), at most
``max_concurrent`` at a time, on a local Ray cluster it starts or on an
existing one (``address``). Ray is an optional extra (``pip install -e
.[ray]``). On SIGTERM or SIGINT it stops starting points and cancels the
running ones, which delivers SIGINT to each worker, whose training loop
saves a checkpoint and returns; a rerun resumes them.
"""

from __future__ import annotations

import time

from stn_jax.sweep import records as sweep_records
from stn_jax.sweep.records import Record, Status
from stn_jax.sweep.tasks import PointTask, run_point


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

  def select(self, planned: list) -> list:
    """Every planned point (a :class:`~stn_jax.sweep.launchers.Launcher`
    method)."""
    return list(planned)

  def units(self, tasks: list, workdir: str) -> list:
    """The point tasks as they are: one Ray task each."""
    return list(tasks)

  def run(
    self, units, train_fn, on_done, stop, on_start=None, log=print
  ) -> None:
    """As :meth:`stn_jax.sweep.launchers.LocalLauncher.run`, with up to
    ``max_concurrent`` points running at once as Ray tasks."""
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
      self._run(ray, list(units), train_fn, on_done, stop, on_start)
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
