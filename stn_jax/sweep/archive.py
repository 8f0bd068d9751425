"""A sweep's finished points, kept as small files that can be committed.

A sweep's workdir holds checkpoints and TensorBoard events: too big for
git, and lost with the machine (a cloud VM, a cluster's scratch space).
An archive folder keeps, for every finished point, one small file that
says what it ran and what it scored, in the workdir's layout:
``ARCHIVE/<point>/manifest.json`` (:data:`MANIFEST`: its record, config,
input shape, final results, every evaluation it logged, the training
steps' own time and the commit that archived it; 2-4 KB). The per-step
training log stays in the workdir. Archives written before manifests
(the run's files themselves, :data:`ARCHIVED_FILES`) are still read, and
``python -m stn_jax.sweep_archive compact ARCHIVE`` turns them into
manifests.

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

from stn_jax import provenance
from stn_jax import workdir as workdir_lib
from stn_jax.sweep import records as sweep_records

# A finished point's archive file (written atomically: a folder without it
# is not an archived point).
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# What archives before manifests kept: the run's own files, record.json
# written last and read first.
ARCHIVED_FILES = (
  "config.json",
  "in_shape.json",
  "results.json",
  "metrics.jsonl",
  sweep_records.RECORD,
)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def read_manifest(folder: str) -> dict | None:
  """The manifest in ``folder``, or None if it has none (or one that is not
  a JSON object: a damaged archive file is not an archived point)."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return None
  try:
    manifest = _read_json(path)
  except ValueError:
    return None
  return manifest if isinstance(manifest, dict) else None


def is_archived(folder: str) -> bool:
  """Whether ``folder`` holds a finished point: a manifest, or (archives
  before manifests, and sweep workdirs) a finished record."""
  manifest = read_manifest(folder)
  if manifest is not None:
    return manifest.get("record", {}).get("status") == "finished"
  if not os.path.isfile(os.path.join(folder, sweep_records.RECORD)):
    return False
  return sweep_records.read_record(folder)["status"] == "finished"


def saved_config(folder: str) -> dict | None:
  """The config a point in ``folder`` ran (its config.json, else its
  manifest's), as saved; None if neither is there."""
  path = os.path.join(folder, "config.json")
  if os.path.isfile(path):
    return _read_json(path)
  manifest = read_manifest(folder)
  return None if manifest is None else manifest.get("config")


def _metrics_rows(point_dir: str) -> list[dict]:
  """The rows of ``metrics.jsonl`` (a partial last line skipped)."""
  path = os.path.join(point_dir, "metrics.jsonl")
  rows = []
  if not os.path.isfile(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def _is_evaluation(row: dict) -> bool:
  return any(k.endswith("_error") and not k.startswith("train_") for k in row)


def step_seconds(rows: list[dict], batch_size: int) -> float:
  """The training steps' own time from a metrics log: each log interval's
  examples over its measured examples/s, the last entry of a step winning
  (a resumed run repeats steps); evaluation and checkpoint time excluded."""
  rates = {
    row["step"]: row["examples_per_second"]
    for row in rows
    if row.get("examples_per_second")
  }
  seconds, previous = 0.0, 0
  for step in sorted(rates):
    seconds += (step - previous) * batch_size / rates[step]
    previous = step
  return seconds


def manifest_of(point_dir: str) -> dict:
  """The manifest of a finished point's folder (see the module docstring);
  its evaluations are the metrics log's rows with an evaluation error."""
  rows = _metrics_rows(point_dir)
  optional = {}
  for name, key in (
    ("config.json", "config"),
    ("in_shape.json", "in_shape"),
    ("results.json", "results"),
  ):
    path = os.path.join(point_dir, name)
    if os.path.isfile(path):
      optional[key] = _read_json(path)
  record = sweep_records.read_record(point_dir)
  return {
    "format": MANIFEST_FORMAT,
    "record": None if record is None else record.to_dict(),
    **optional,
    "evaluations": [row for row in rows if _is_evaluation(row)],
    "step_seconds": step_seconds(
      rows, optional.get("config", {}).get("batch_size", 0)
    ),
    "commit": provenance.commit_description(),
  }


def _write_manifest(folder: str, manifest: dict) -> None:
  sweep_records.write_json_atomically(
    os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1) + "\n"
  )


def _materialize(source: str, target: str) -> None:
  """Writes an archived point's run files into ``target`` (record last):
  from its manifest (the metrics log then holds its evaluations only, and
  the manifest is kept beside them), or copied from an archive before
  manifests."""
  manifest = read_manifest(source)
  if manifest is None:
    for name in ARCHIVED_FILES:
      path = os.path.join(source, name)
      if os.path.isfile(path):
        with open(path) as f:
          payload = f.read()
        sweep_records.write_json_atomically(os.path.join(target, name), payload)
    return
  files = {
    "metrics.jsonl": "".join(
      json.dumps(row) + "\n" for row in manifest.get("evaluations", [])
    ),
  }
  for name, key in (
    ("config.json", "config"),
    ("in_shape.json", "in_shape"),
    ("results.json", "results"),
  ):
    if key in manifest:
      files[name] = json.dumps(manifest[key], indent=1) + "\n"
  for name, payload in files.items():
    sweep_records.write_json_atomically(os.path.join(target, name), payload)
  _write_manifest(target, manifest)
  sweep_records.write_json_atomically(
    os.path.join(target, sweep_records.RECORD),
    json.dumps(manifest["record"], indent=1) + "\n",
  )


def save(point_dir: str, archive: str) -> bool:
  """Writes a finished point's manifest into ``archive/<point>``.

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
  if read_manifest(point_dir) is not None:  # itself restored from one
    _write_manifest(target, read_manifest(point_dir))
  else:
    _write_manifest(target, manifest_of(point_dir))
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
    archived_config = saved_config(source)
    if os.path.isfile(local_config) and archived_config is not None:
      differences = _config_differences(
        _read_json(local_config), archived_config
      )
      if differences:
        raise workdir_lib.WorkdirError(
          f"{target} holds a run of another config than the archived point "
          f"{source} ({'; '.join(differences)}). Move one of them away, or "
          "use another --workdir or --archive."
        )
    os.makedirs(target, exist_ok=True)
    _materialize(source, target)
    restored.append(name)
  return restored


def compact(archive: str) -> list[str]:
  """Turns every point of ``archive`` kept as run files (archives before
  manifests) into a manifest, then removes those files; points that already
  have a manifest are left alone. Walks nested folders (an archive of
  several sweeps). Returns the folders compacted."""
  done = []
  for folder, _, files in sorted(os.walk(archive)):
    if MANIFEST in files or sweep_records.RECORD not in files:
      continue
    if not is_archived(folder):
      continue
    manifest = manifest_of(folder)
    manifest["commit"] = "unknown (compacted from run files)"
    _write_manifest(folder, manifest)
    for name in ARCHIVED_FILES:
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        os.remove(path)
    done.append(folder)
  return done


def main(argv=None) -> int:
  """``python -m stn_jax.sweep_archive compact ARCHIVE``."""
  import sys

  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2 or argv[0] != "compact" or not os.path.isdir(argv[1]):
    print(
      "usage: python -m stn_jax.sweep_archive compact ARCHIVE (an existing "
      f"archive folder); got {' '.join(argv) or 'no arguments'}.",
      file=sys.stderr,
    )
    return 2
  done = compact(argv[1])
  print(f"compacted {len(done)} archived points into {MANIFEST} files")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
