"""A sweep's finished points, kept as small files that can be committed.

A sweep's workdir holds checkpoints and TensorBoard events: too big for
git, and lost with the machine (a cloud VM, a cluster's scratch space).
An archive folder keeps, for every finished point, only the files that say
what it ran and what it scored (:data:`ARCHIVED_FILES`: its record, config,
input shape, final results and metrics log; a few KB to a few tens of KB),
in the workdir's layout: ``ARCHIVE/<point>/``.

``run_sweep(..., archive=ARCHIVE)`` (``--archive`` on the command line and
in the paper-table scripts):

- before anything trains, :func:`restore` copies every archived point the
  workdir lacks into it, so those points are skipped (after the usual check
  that they ran the config the sweep builds now) and appear in the tables;
- as each point finishes, :func:`save` copies it into the archive (a point
  that finished before ``--archive`` was given is saved when it is skipped).

A long sweep therefore survives the loss of its workdir, or moves between
machines, by committing the archive: rerunning the same command with the
same ``--archive`` trains only what is not in it. The checkpoints are not
archived, so an archived point cannot be resumed or evaluated again; its
results are those recorded when it finished.

Nothing is overwritten silently: an archived point is never replaced, and a
point is not restored over a workdir folder that holds a different run (its
own ``config.json`` differs: :class:`~stn_jax.workdir.WorkdirError`) or
that a live runner holds.
"""

from __future__ import annotations

import json
import os

import ml_collections

from stn_jax import sweep_records
from stn_jax import workdir as workdir_lib

# What a finished point keeps; record.json is written last and read first,
# so a folder without it (a copy cut short) is not an archived point.
ARCHIVED_FILES = (
  "config.json",
  "in_shape.json",
  "results.json",
  "metrics.jsonl",
  sweep_records.RECORD,
)


def is_archived(folder: str) -> bool:
  """Whether ``folder`` holds a finished point's record."""
  if not os.path.isfile(os.path.join(folder, sweep_records.RECORD)):
    return False
  return sweep_records.read_record(folder)["status"] == "finished"


def _copy_files(source: str, target: str) -> list[str]:
  """Copies the :data:`ARCHIVED_FILES` that ``source`` has into ``target``
  (each through a temporary file and ``os.replace``), record last."""
  copied = []
  for name in ARCHIVED_FILES:
    path = os.path.join(source, name)
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      sweep_records.write_json_atomically(os.path.join(target, name), f.read())
    copied.append(name)
  return copied


def save(point_dir: str, archive: str) -> bool:
  """Copies a finished point's small files into ``archive/<point>``.

  Args:
    point_dir: the point's folder in the sweep workdir.
    archive: the sweep's archive folder (created if needed).

  Returns:
    True if it was saved now; False if the point is not finished (nothing
    to keep) or the archive already holds it (never replaced).
  """
  target = os.path.join(archive, os.path.basename(os.path.normpath(point_dir)))
  if not is_archived(point_dir) or is_archived(target):
    return False
  _copy_files(point_dir, target)
  return True


def _config_differences(saved: dict, other: dict) -> list[str]:
  return workdir_lib.config_differences(saved, ml_collections.ConfigDict(other))


def restore(
  archive: str, workdir: str, names: list[str], check=None
) -> list[str]:
  """Copies the archived points among ``names`` into ``workdir``.

  A point is restored when the archive holds it finished and the workdir's
  folder of that name has no finished record of its own. A workdir folder
  that a live runner holds is left alone.

  Args:
    archive: the sweep's archive folder (may not exist yet: nothing to do).
    workdir: the sweep workdir.
    names: the point folder names to consider (the sweep's planned points).
    check: ``check(name, archived_folder)`` says why an archived point is
      not the result of the sweep's point of that name now ('' when it
      is; e.g. it ran before a change of ``--set``): such a point is not
      restored, and trains afresh.

  Returns:
    the names restored.

  Raises:
    WorkdirError: the workdir folder holds a run of another config than
      the archived point (e.g. a partial run after the sweep changed).
  """
  restored = []
  for name in names:
    source = os.path.join(archive, name)
    target = os.path.join(workdir, name)
    if not is_archived(source) or is_archived(target):
      continue
    if sweep_records.is_locked(target):
      continue
    if check is not None and check(name, source):
      continue
    local_config = os.path.join(target, "config.json")
    archived_config = os.path.join(source, "config.json")
    if os.path.isfile(local_config) and os.path.isfile(archived_config):
      with open(local_config) as f, open(archived_config) as g:
        differences = _config_differences(json.load(f), json.load(g))
      if differences:
        raise workdir_lib.WorkdirError(
          f"{target} holds a run of another config than the archived point "
          f"{source} ({'; '.join(differences)}). Move one of them away, or "
          "use another --workdir or --archive."
        )
    os.makedirs(target, exist_ok=True)
    _copy_files(source, target)
    restored.append(name)
  return restored
