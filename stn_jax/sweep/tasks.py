"""One sweep point's training, wherever it runs.

:func:`run_point` takes the point's lock (another runner holding it means
the point is reported ``'running'`` and left alone), writes the point's
record as it starts and ends (:mod:`stn_jax.sweep.records`), and trains.
Every launcher (:mod:`stn_jax.sweep.launchers`) runs points through it.
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
