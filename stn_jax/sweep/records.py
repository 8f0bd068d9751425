"""A sweep's records: one file per point, and the tables rebuilt from them.

Every point of a sweep writes its own record, ``DIR/<point>/record.json``,
as it starts and as it ends (atomically: a temporary file and
``os.replace``). ``DIR/results.jsonl`` and ``DIR/results.md`` are never
appended to: :func:`write_results` rebuilds them from all the records on
disk, under a lock, and replaces them atomically. Any number of runners
(shards of a job array, Ray workers, a ``--collect``) can therefore share a
sweep directory without overwriting each other's results.

A record is a :class:`Record`: ``name``, ``arg``, ``overrides``,
``status`` (a :class:`Status`), ``results``, ``error``, ``start_time`` and
``end_time`` (Unix seconds), ``host``, ``worker`` and ``device`` (and
``signal``, ``population`` where they apply). It reads and writes like the
dict that records were before it (``record['status']``), and every ``record.json``
written since records exist loads into one (:meth:`Record.from_dict`).
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from stn_jax import workdir as workdir_lib

RECORD = "record.json"
POINT_LOCK = ".sweep_point.lock"


class Status(enum.StrEnum):
  """A point's status (a ``str``: ``Status.FINISHED == 'finished'``).

  Written in ``record.json``: ``RUNNING`` (training, or its runner died),
  ``FINISHED``, ``FAILED`` (the error says why), ``INTERRUPTED`` (a signal
  stopped it; its checkpoint is saved). Read from disk: ``DAMAGED`` (a
  ``record.json`` that is not a record). Reported by the runner only:
  ``SKIPPED`` (finished by an earlier run), ``OK`` (dry run: its config
  builds), ``PENDING`` (no record yet).
  """

  RUNNING = "running"
  FINISHED = "finished"
  FAILED = "failed"
  INTERRUPTED = "interrupted"
  DAMAGED = "damaged"
  SKIPPED = "skipped"
  OK = "ok"
  PENDING = "pending"

  @property
  def is_failure(self) -> bool:
    """Whether it counts as a failed point (``FAILED`` or ``DAMAGED``)."""
    return self in (Status.FAILED, Status.DAMAGED)

  @property
  def is_done(self) -> bool:
    """Whether the point has its results (``FINISHED`` or ``SKIPPED``)."""
    return self in (Status.FINISHED, Status.SKIPPED)


# A record's keys in the order record.json lists them.
_KEYS = (
  "name",
  "arg",
  "overrides",
  "results",
  "error",
  "status",
  "start_time",
  "end_time",
  "host",
  "worker",
  "device",
  "signal",
  "population",
)


@dataclasses.dataclass(eq=False)
class Record(Mapping):
  """One point's record (see the module docstring for the fields).

  A field that is None is absent: ``record['end_time']`` raises
  ``KeyError`` while the point runs, ``record.get('end_time')`` is None,
  and :meth:`to_dict` leaves it out. Keys a record on disk has beyond
  these fields are kept in ``extra`` and written back. As a ``Mapping``
  (with ``record[key] = value`` and :meth:`update`, as on the dicts records
  were) it compares equal to the dict of its keys, and ``{**record,
  'status': 'skipped'}`` is a dict that :meth:`from_dict` reads back.
  """

  status: Status = Status.PENDING
  name: str | None = None
  arg: str | None = None
  overrides: dict | None = None
  results: dict = dataclasses.field(default_factory=dict)
  error: str = ""
  start_time: float | None = None
  end_time: float | None = None
  host: str | None = None
  worker: str | None = None
  device: str | None = None
  signal: str | None = None
  population: dict | None = None
  extra: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.status = _status(self.status)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Record:
    """The record a ``record.json`` object (of any version of stn_jax) or
    a dict holds; keys that are no field go to ``extra``.

    Raises:
      ValueError: ``data`` has no ``status``, or one :class:`Status` does
        not name.
    """
    if "status" not in data:
      raise ValueError("a record without a status")
    fields = {k: v for k, v in data.items() if k in _KEYS}
    extra = {k: v for k, v in data.items() if k not in _KEYS}
    fields["results"] = fields.get("results") or {}
    fields["error"] = fields.get("error") or ""
    return cls(**fields, extra=extra)

  def to_dict(self) -> dict[str, Any]:
    """The record as ``record.json`` holds it: plain JSON types, the
    status as its string, absent (None) fields left out."""
    return {k: (str(v) if k == "status" else v) for k, v in self.items()}

  def update(self, other: Mapping[str, Any] = (), /, **fields) -> None:
    """Sets fields by name, as ``dict.update`` does (a status may be given
    as its string); other names go to ``extra``."""
    for key, value in {**dict(other), **fields}.items():
      if key in _KEYS:
        setattr(self, key, _status(value) if key == "status" else value)
      else:
        self.extra[key] = value

  def __setitem__(self, key: str, value: Any) -> None:
    """``record[key] = value``, as on the dict records were: sets the field
    (or an ``extra`` key)."""
    self.update({key: value})

  def __getitem__(self, key: str) -> Any:
    if key in _KEYS:
      value = getattr(self, key)
      if value is not None:
        return value
    elif key in self.extra:
      return self.extra[key]
    raise KeyError(key)

  def __iter__(self) -> Iterator[str]:
    yield from (k for k in _KEYS if getattr(self, k) is not None)
    yield from self.extra

  def __len__(self) -> int:
    return sum(1 for _ in self)


def _status(value) -> Status:
  try:
    return Status(value)
  except ValueError:
    raise ValueError(
      f"status must be one of {', '.join(Status)}; got {value!r}."
    ) from None


def write_json_atomically(path: str, payload: str) -> None:
  """Writes ``payload`` to ``path`` through a temporary file in the same
  folder and ``os.replace``: readers see the old file or the new one. The
  file is readable by all (0644), as the other files of a run."""
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=".tmp_", dir=folder)
  try:
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from others
    with os.fdopen(handle, "w") as f:
      f.write(payload)
    os.replace(temporary, path)
  except BaseException as error:
    if os.path.exists(temporary):
      os.remove(temporary)
    if isinstance(error, OSError) and error.errno and not error.filename:
      # a failed write names no file (a full disk): name the one it was
      raise type(error)(error.errno, error.strerror, path) from error
    raise


def write_record(point_dir: str, record: Record | Mapping) -> None:
  """Saves a point's record (a :class:`Record`, or a dict as records were)
  as ``point_dir/record.json``."""
  payload = record.to_dict() if isinstance(record, Record) else dict(record)
  write_json_atomically(
    os.path.join(point_dir, RECORD), json.dumps(payload, indent=1) + "\n"
  )


def read_record(point_dir: str) -> Record | None:
  """The point's saved :class:`Record`, or None (never started, or written
  by a version of stn_jax before records: then a finished point's
  ``results.json`` stands in).

  A file that is not a record (not JSON, not an object, no known status:
  truncated, overwritten) is read as a record of status ``'damaged'``
  whose error names the file: the point is
  not finished (a runner that owns it trains it again, resuming from its
  checkpoint, and its new record replaces the damaged one), and the other
  points and runners are not held up by it."""
  for name in (RECORD, "results.json"):
    path = os.path.join(point_dir, name)
    if not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        saved = json.load(f)
      if not isinstance(saved, dict):
        raise ValueError(f"a JSON {type(saved).__name__}, not an object")
      if name == RECORD:
        return Record.from_dict(saved)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
      return Record(
        status=Status.DAMAGED,
        error=f"{path} is damaged ({error}); the point is trained again "
        "(resuming from its checkpoint) by the next run that owns it, or "
        "delete that file.",
      )
    return Record(status=Status.FINISHED, results=saved)
  return None


def where() -> dict:
  """The ``host``, ``worker`` and ``device`` fields of a record, for the
  calling process (a Ray worker also names its Ray worker and node)."""
  worker = f"pid {os.getpid()}"
  try:
    import ray

    if ray.is_initialized():
      context = ray.get_runtime_context()
      worker += (
        f", ray worker {context.get_worker_id()[:8]}"
        f" on node {context.get_node_id()[:8]}"
      )
      gpus = ray.get_gpu_ids()
      if gpus:
        worker += f", gpus {gpus}"
  except ImportError:
    pass
  import jax

  devices = jax.local_devices()
  return {
    "host": socket.gethostname(),
    "worker": worker,
    "device": f"{len(devices)} x {devices[0].device_kind} "
    f"({devices[0].platform})",
  }


class PointLock:
  """``with PointLock(point_dir) as lock:`` keeps other sweep runners off
  the point; ``lock.acquired`` is False (and nothing is held) when another
  live process has it. The system releases the lock of a killed runner."""

  def __init__(self, point_dir: str):
    self.path = os.path.join(point_dir, POINT_LOCK)
    self.acquired = False
    self.owner = ""
    self._file = None

  def __enter__(self) -> PointLock:
    handle, text = workdir_lib.try_lock(
      self.path, f"pid {os.getpid()} on {socket.gethostname()}"
    )
    if handle is None:
      self.owner = text or "another runner"
    else:
      self._file, self.acquired = handle, True
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file, self.acquired = None, False


def is_locked(point_dir: str) -> bool:
  """Whether a live runner holds the point (see :class:`PointLock`)."""
  if not os.path.isfile(os.path.join(point_dir, POINT_LOCK)):
    return False
  with PointLock(point_dir) as lock:
    return not lock.acquired


def collect(workdir: str, planned: list[Mapping], check=None) -> list[Record]:
  """The :class:`Record` of each ``planned`` point (a mapping with
  ``name``, ``arg``, ``overrides``) as it is on disk: a point without a record is
  'pending'; a 'running' record whose runner is gone (killed, or stopped
  before it could write) is 'interrupted'.

  ``check(point, point_dir)`` says why a finished record is not the result
  of this plan's point ('' if it is; e.g. it ran before a change of
  ``--set``): such a record is listed as 'failed' with that reason, never
  as finished, and without its results."""
  records = []
  for point in planned:
    point_dir = os.path.join(workdir, point["name"])
    saved = read_record(point_dir)
    record = Record(
      name=point["name"],
      arg=point["arg"],
      overrides=point["overrides"],
      status=Status.PENDING,
    )
    if saved is not None:
      record = Record.from_dict({**record, **saved, "name": point["name"]})
    if record.status == Status.RUNNING and not is_locked(point_dir):
      record.status = Status.INTERRUPTED
    if record.status == Status.FINISHED and check is not None:
      reason = check(point, point_dir)
      if reason:
        record.update(status=Status.FAILED, error=reason, results={})
    records.append(record)
  return records


def write_results(
  workdir: str, planned: list[Mapping], check=None
) -> list[Record]:
  """Rebuilds ``workdir/results.jsonl`` and ``results.md`` from the records
  of every ``planned`` point (all shards, all runners), under
  ``workdir/.results.lock``; returns the records (``check``: see
  :func:`collect`)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, ".results.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      records = collect(workdir, planned, check)
      write_json_atomically(
        os.path.join(workdir, "results.jsonl"),
        "".join(json.dumps(r.to_dict()) + "\n" for r in records),
      )
      write_json_atomically(
        os.path.join(workdir, "results.md"), markdown_table(records)
      )
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return records


def markdown_table(records: list[Mapping]) -> str:
  """One row per record: name, arg, overrides, status, where it ran, its
  wall time and every ``*error`` metric in %."""
  metric_keys = sorted(
    {k for r in records for k in r.get("results", {}) if k.endswith("error")}
  )
  lines = [
    "| point | arg | overrides | status | where | minutes |"
    + "".join(f" {k} |" for k in metric_keys),
    "|---|---|---|---|---|---|" + "---|" * len(metric_keys),
  ]
  for r in records:
    cells = [
      f"{100 * r['results'][k]:.2f}%" if k in r.get("results", {}) else ""
      for k in metric_keys
    ]
    status = r["status"]
    if Status(status).is_failure and r.get("error"):
      status = f"{status}: " + r["error"].splitlines()[-1][:80].replace(
        "|", "/"
      )
    minutes = ""
    if r.get("start_time") and r.get("end_time"):
      minutes = f"{(r['end_time'] - r['start_time']) / 60:.1f}"
    place = f"{r.get('host', '')} {r.get('device', '')}".strip()
    lines.append(
      f"| {r['name']} | `{r['arg']}` | "
      f"{json.dumps(r['overrides']) if r['overrides'] else ''} | "
      f"{status} | {place} | {minutes} |" + "".join(f" {c} |" for c in cells)
    )
  return "\n".join(lines) + "\n"
