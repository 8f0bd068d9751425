"""A sweep's records: one file per point, and the tables rebuilt from them.

Every point of a sweep writes its own record, ``DIR/<point>/record.json``,
as it starts and as it ends (atomically: a temporary file and
``os.replace``). ``DIR/results.jsonl`` and ``DIR/results.md`` are never
appended to: :func:`write_results` rebuilds them from all the records on
disk, under a lock, and replaces them atomically. Any number of runners
(shards of a job array, Ray workers, a ``--collect``) can therefore share a
sweep directory without overwriting each other's results.

A record is a dict with ``name``, ``arg``, ``overrides``, ``status``
(``'running'``, ``'finished'``, ``'failed'``, ``'interrupted'``; in tables
also ``'pending'``: no record yet), ``results``, ``error``, ``start_time``
and ``end_time`` (Unix seconds), ``host``, ``worker`` and ``device``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile

from stn_jax import workdir as workdir_lib

RECORD = "record.json"
POINT_LOCK = ".sweep_point.lock"


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
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_record(point_dir: str, record: dict) -> None:
  """Saves a point's record as ``point_dir/record.json``."""
  write_json_atomically(
    os.path.join(point_dir, RECORD), json.dumps(record, indent=1) + "\n"
  )


def read_record(point_dir: str) -> dict | None:
  """The point's saved record, or None (never started, or written by a
  version of stn_jax before records: then a finished point's
  ``results.json`` stands in).

  A file that is not a JSON object (truncated, overwritten) is read as a
  record of status ``'damaged'`` whose error names the file: the point is
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
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
      return {
        "status": "damaged",
        "results": {},
        "error": f"{path} is damaged ({error}); the point is trained again "
        "(resuming from its checkpoint) by the next run that owns it, or "
        "delete that file.",
      }
    if name == RECORD:
      return saved
    return {"status": "finished", "results": saved, "error": ""}
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


def collect(workdir: str, planned: list[dict], check=None) -> list[dict]:
  """The records of the ``planned`` points (dicts with ``name``, ``arg``,
  ``overrides``) as they are on disk: a point without a record is
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
    record = {
      "name": point["name"],
      "arg": point["arg"],
      "overrides": point["overrides"],
      "status": "pending",
      "results": {},
      "error": "",
    }
    if saved is not None:
      record.update(saved)
      record["name"] = point["name"]
    if record["status"] == "running" and not is_locked(point_dir):
      record["status"] = "interrupted"
    if record["status"] == "finished" and check is not None:
      reason = check(point, point_dir)
      if reason:
        record.update(status="failed", error=reason, results={})
    records.append(record)
  return records


def write_results(workdir: str, planned: list[dict], check=None) -> list[dict]:
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
        "".join(json.dumps(r) + "\n" for r in records),
      )
      write_json_atomically(
        os.path.join(workdir, "results.md"), markdown_table(records)
      )
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return records


def markdown_table(records: list[dict]) -> str:
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
    if status in ("failed", "damaged") and r.get("error"):
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
