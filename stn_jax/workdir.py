"""A workdir belongs to one run: its config is checked on every rerun, and a
lock keeps two processes out of it.

- :func:`config_differences` / :func:`check_config`: rerunning a workdir with
  a different config is refused with the differing fields listed, except for
  fields that are safe to change (:data:`SAFE_TO_CHANGE`: the step budget to
  extend a run, cadences, where data lives: the keys of the execution role
  in :mod:`stn_jax.config_schema`). ``overwrite=True`` clears the
  old run's files instead (:func:`clear_run`).
- :class:`WorkdirLock`: an exclusive ``fcntl`` lock on ``workdir/.lock``
  for the whole run. The kernel releases it when its process dies, so a lock
  file left by a killed run is stale and simply taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from typing import Any

from stn_jax import config_schema

# Derived from the config schema (stn_jax.config_schema): the keys a rerun
# may change (execution role), those of them that are part of what is
# trained when another key says so (a cosine schedule decays over
# num_steps: a longer run is another schedule, not the same run extended),
# the values of keys older versions did not record, and the keys that act
# only together with another.
SAFE_TO_CHANGE = config_schema.SAFE_TO_CHANGE
IDENTITY_WHEN = config_schema.IDENTITY_WHEN
IMPLICIT_DEFAULTS = config_schema.IMPLICIT_DEFAULTS
ONLY_WITH = config_schema.ONLY_WITH
# What a run writes into its workdir (removed by clear_run).
RUN_FILES = (
  "checkpoints",
  "checkpoints_unreadable",
  "tensorboard",
  "snapshots",
  "figures",
  "metrics.jsonl",
  "results.json",
  "population.json",
  "transformer.png",
  "evaluation",  # python -m stn_jax.evaluate's default --out
  "config.json",
  "in_shape.json",
)


class WorkdirError(ValueError):
  """The workdir holds another run, or another process is using it."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_json(config) -> dict:
  """A ConfigDict as its JSON form (tuples become lists, as when saved)."""
  return json.loads(config.to_json_best_effort())


def config_differences(saved: dict, config) -> list[str]:
  """``'key: old -> new'`` for every field (dotted for nested ones) where
  ``config`` differs from the ``saved`` config.json contents, ignoring
  :data:`SAFE_TO_CHANGE` (unless :data:`IDENTITY_WHEN` says otherwise)."""
  old = _flatten(saved)
  new = _flatten(_as_json(config))
  missing = object()
  lines = []
  for key in sorted(set(old) | set(new)):
    identity = key in IDENTITY_WHEN and (
      IDENTITY_WHEN[key](old) or IDENTITY_WHEN[key](new)
    )
    if key in SAFE_TO_CHANGE and not identity:
      continue
    before = old.get(key, IMPLICIT_DEFAULTS.get(key, missing))
    after = new.get(key, missing)
    if key in ONLY_WITH and not (ONLY_WITH[key](old) or ONLY_WITH[key](new)):
      continue  # it has no effect on either run
    if before != after:
      show = lambda v: "(absent)" if v is missing else repr(v)
      lines.append(f"{key}: {show(before)} -> {show(after)}")
  return lines


def clear_run(folder: str) -> None:
  """Removes the files a run wrote into ``folder`` (see :data:`RUN_FILES`)
  and its population members' folders."""
  if not os.path.isdir(folder):
    return
  # config.json last: a clear cut short leaves the remaining files claimed.
  for name in sorted(os.listdir(folder), key=lambda n: n == "config.json"):
    path = os.path.join(folder, name)
    if name in RUN_FILES or name.startswith("member_"):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.remove(path)


def _run_traces(folder: str) -> list[str]:
  """The files of a run in ``folder`` that config.json would speak for:
  saved checkpoints and a metrics log."""
  traces = []
  checkpoints = os.path.join(folder, "checkpoints")
  if os.path.isdir(checkpoints) and any(
    name.isdigit() for name in os.listdir(checkpoints)
  ):
    traces.append(checkpoints)
  if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
    traces.append(os.path.join(folder, "metrics.jsonl"))
  return traces


def check_config(folder: str, config, *, overwrite: bool = False) -> None:
  """Refuses ``folder`` if it holds a run of another config (see
  :func:`config_differences`), a run whose config.json is damaged, or a
  run's checkpoints without a config.json (an interrupted ``--overwrite``,
  a copied folder: nothing says which config they belong to); with
  ``overwrite`` clears that run instead.

  Raises:
    WorkdirError: naming the differing fields (or the file) and the two
      ways out.
  """
  path = os.path.join(folder, "config.json")
  ways_out = (
    "Use a new --workdir, or --overwrite to delete that run and start this one."
  )
  if not os.path.isfile(path):
    traces = _run_traces(folder)
    if not traces:
      return
    if overwrite:
      clear_run(folder)
      return
    raise WorkdirError(
      f"workdir {folder} holds {' and '.join(traces)} but no config.json, so "
      "nothing says which config they belong to (an interrupted "
      f"--overwrite, or a copied folder); refusing to resume them. {ways_out}"
    )
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError(f"a JSON {type(saved).__name__}, not an object")
  except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
    if overwrite:
      clear_run(folder)
      return
    raise WorkdirError(
      f"{path} is damaged ({error}); the run in {folder} cannot be checked "
      f"against this config. {ways_out}"
    ) from None
  differences = config_differences(saved, config)
  if not differences:
    return
  if overwrite:
    clear_run(folder)
    return
  raise WorkdirError(
    f"workdir {folder} holds a run with another config; refusing to mix "
    f"them. Differing fields: {'; '.join(differences)}. {ways_out}"
  )


def try_lock(path: str, owner: str):
  """Takes an exclusive ``fcntl`` lock on the file ``path`` (created with
  its folder) without waiting.

  Returns:
    ``(handle, previous)``: the open file holding the lock, with ``owner``
    written into it, and the text it held before (a killed owner's line);
    or ``(None, text)`` when another live process holds it, ``text``
    naming that process. The system releases a lock when its process dies.
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  handle = open(path, "a+")  # noqa: SIM115 - the caller holds it
  handle.seek(0)
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    text = handle.read().strip()
    handle.close()
    return None, text
  previous = handle.read().strip()
  handle.seek(0)
  handle.truncate()
  try:
    handle.write(owner + "\n")
    handle.flush()
  except OSError as error:  # a full disk: a failed write names no file
    with contextlib.suppress(OSError):  # closing flushes, and fails again
      handle.close()
    raise type(error)(error.errno, error.strerror, path) from error
  return handle, previous


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds ``workdir/.lock`` exclusively.

  Raises:
    WorkdirError: another live process holds it (its pid, host and start
      time are in the message).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._file = None
    self.stale_owner: str | None = None

  def __enter__(self) -> WorkdirLock:
    handle, previous = try_lock(
      self.path,
      f"pid {os.getpid()} on {socket.gethostname()} since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S')}",
    )
    if handle is None:
      raise WorkdirError(
        f"workdir {os.path.dirname(self.path)} is in use by "
        f"{previous or 'another process'}; wait for it to finish or stop it "
        "(a killed run's lock is released by the system and taken over "
        "automatically)."
      )
    self.stale_owner = previous or None
    self._file = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
