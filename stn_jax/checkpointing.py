"""A run's files: its config, input shape and orbax checkpoints.

Light on purpose: reading a model back (``stn_jax.restore``) needs this
module and :mod:`stn_jax.models`, never the data stack (TFDS, grain,
array_record) and never an optimiser.

Checkpoint layout (``workdir/checkpoints/<step>/``, format 2):

- ``model``: the model's ``nnx.State`` (parameters, by module path);
- ``opt_state``: the optax state (same structure as the optimiser's);
- ``average``: only for a run with ``ema_decay`` > 0: the moving average
  of ``model`` (same structure), the model its evaluations and inference
  use;
- ``meta``: JSON ``{'format': 2, 'step': int, 'data_state': ...}``, where
  ``data_state`` is the input pipeline's position (JSON);
- ``stn_jax_sha256.json``: the sha256 of every file of the step, written
  after orbax finished it and checked before it is read, so a damaged (e.g.
  bit-flipped) checkpoint is unreadable rather than restored as garbage.

A training run moves an unreadable checkpoint aside, to
``workdir/checkpoints_unreadable/<step>``, and resumes from the one before.

Format 1 (before the structured state: one ``state`` item of flat leaf
lists) is still read: its leaves are put back into the current structure,
which is the same as long as the model and optimiser did not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from stn_jax import cli, distributed
from stn_jax.files import written

FORMAT = 2
MANIFEST = "stn_jax_sha256.json"


class Read(NamedTuple):
  """What :meth:`Checkpoints.restore_latest` read: the trained ``model``
  state, ``opt_state`` and ``average`` (each None where not asked for) and
  the checkpoint's ``meta``."""

  model: Any
  opt_state: Any
  meta: dict
  average: Any = None


class CheckpointError(OSError):
  """A checkpoint could not be written, or fails its checksums."""


class CheckpointMismatch(ValueError):
  """A checkpoint that reads fine holds parameters of other names or
  shapes than the model's (its model_kwargs or the model code changed):
  not damage, so nothing is moved; the run is refused."""


def _parameter_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{'path/to/kernel': shape}`` of an ``nnx.State`` or of the tree of
  orbax's array metadata for it (whose paths end in ``/value``)."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = [
      str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
      for k in path
    ]
    if parts and parts[-1] == "value":
      parts.pop()
    flat["/".join(parts)] = tuple(getattr(leaf, "shape", ()))
  return flat


def parameter_differences(saved_tree, model) -> list[str]:
  """``'name: saved shape -> model shape'`` (or ``(absent)``) for every
  parameter where the saved tree and ``model`` differ."""
  old, new = _parameter_shapes(saved_tree), _parameter_shapes(model)
  show = lambda shapes, key: str(shapes[key]) if key in shapes else "(absent)"
  return [
    f"{key}: {show(old, key)} -> {show(new, key)}"
    for key in sorted(set(old) | set(new))
    if old.get(key) != new.get(key)
  ]


def _file_hashes(folder: str) -> dict[str, str]:
  hashes = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, folder)
      if relative in (MANIFEST, MANIFEST + ".tmp"):
        continue
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)
      hashes[relative] = digest.hexdigest()
  return hashes


def write_manifest(folder: str) -> None:
  """Records the sha256 of every file under ``folder`` (atomically)."""
  hashes = _file_hashes(folder)
  path = os.path.join(folder, MANIFEST)
  with written(path) as temporary, open(temporary, "w") as f:
    json.dump(hashes, f, indent=0, sort_keys=True)


def verify_manifest(folder: str) -> None:
  """Raises :class:`CheckpointError` if a file of ``folder`` is missing or
  differs from its recorded sha256 (no manifest: nothing to check, as for
  checkpoints of older versions)."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return
  with open(path) as f:
    expected = json.load(f)
  actual = _file_hashes(folder)
  for name, digest in expected.items():
    if actual.get(name) != digest:
      raise CheckpointError(
        f"{os.path.join(folder, name)} "
        + ("is missing" if name not in actual else "fails its sha256 check")
      )


def write_run_files(workdir: str, config, in_shape) -> None:
  """``config.json`` and ``in_shape.json`` (the model's input shape)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with written(path) as temporary, open(temporary, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  path = os.path.join(workdir, "in_shape.json")
  with written(path) as temporary, open(temporary, "w") as f:
    json.dump(list(in_shape), f)


def read_run_files(
  workdir: str,
) -> tuple[ml_collections.ConfigDict, tuple[int, ...]]:
  """(config, input shape) of a workdir written by a training run."""
  paths = [
    os.path.join(workdir, name) for name in ("config.json", "in_shape.json")
  ]
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"{path} not found: is {workdir!r} a stn_jax workdir?"
      )
  config = _read_json(paths[0], workdir, dict)
  in_shape = _read_json(paths[1], workdir, list)
  return ml_collections.ConfigDict(config), tuple(in_shape)


def _read_json(path: str, workdir: str, kind: type):
  """The JSON ``kind`` (dict or list) in ``path``; a damaged file is a
  ``ValueError`` naming it and the way out."""
  try:
    with open(path) as f:
      value = json.load(f)
    if not isinstance(value, kind):
      raise ValueError(f"a JSON {type(value).__name__}, not a {kind.__name__}")
  except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(
      f"{path} is damaged ({error}); the run in {workdir} cannot be read "
      "without it: put back a copy (a sweep's --archive keeps one) or train "
      "the run again (--overwrite)."
    ) from None
  return value


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def saved_steps(workdir: str) -> list[int]:
  """The steps saved under ``workdir/checkpoints``, ascending, read from
  the folder names alone (no orbax manager, nothing created); [] when
  there are none."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(name) for name in os.listdir(path) if name.isdigit())


class Checkpoints:
  """The orbax checkpoints of one run (a single model or a population).

  Args:
    workdir: the run's directory; checkpoints go to ``workdir/checkpoints``.
    max_to_keep: how many of the newest checkpoints are kept.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True
      ),
    )

  def all_steps(self) -> list[int]:
    self.wait()
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: Any, *, wait=True) -> None:
    """Saves a :class:`stn_jax.steps.TrainState` (possibly stacked over
    population members; its ``average`` where it keeps one) and the data
    position.

    With ``wait`` it returns when the checkpoint is written. Without, it
    returns once the arrays are copied off the device and orbax writes the
    files in the background while training goes on; the checkpoint is
    finished (and its sha256 manifest written) by the next :meth:`save`,
    :meth:`wait` or :meth:`close`. Orbax commits a checkpoint by an atomic
    rename, so a run killed during the write resumes from the checkpoint
    before it.
    """
    self.wait()
    meta = {"format": FORMAT, "step": int(step), "data_state": data_state}
    self._pending = step
    items = {
      "model": ocp.args.StandardSave(state.model),
      "opt_state": ocp.args.StandardSave(state.opt_state),
      "meta": ocp.args.JsonSave(meta),
    }
    if getattr(state, "average", None) is not None:
      items["average"] = ocp.args.StandardSave(state.average)
    with self._errors(step):
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      self.wait()

  def wait(self) -> None:
    """Finishes a background save: waits for orbax, writes the manifest."""
    step = getattr(self, "_pending", None)
    if step is None:
      return
    self._pending = None
    with self._errors(step):
      self.manager.wait_until_finished()
      if distributed.is_main():  # the files are shared by every process
        write_manifest(os.path.join(self.directory, str(step)))

  @contextlib.contextmanager
  def _errors(self, step: int):
    try:
      yield
    except Exception as error:
      # Orbax reports a full disk as ValueError('RESOURCE_EXHAUSTED ...').
      if not isinstance(error, OSError) and not cli.is_full_disk(error):
        raise
      self._pending = None
      kept = [s for s in self.manager.all_steps() if s != step]
      reason = getattr(error, "strerror", None) or (
        "No space left on device" if cli.is_full_disk(error) else error
      )
      raise CheckpointError(
        f"could not write checkpoint {step} to {self.directory}: "
        f"{reason}. The earlier checkpoints "
        f"({', '.join(map(str, kept)) or 'none'}) are intact; free space "
        "and rerun the same command to resume."
      ) from error

  def _read(self, step: int, model, opt_state, average) -> Read:
    """Reads one checkpoint into the structures of ``model`` (and
    ``opt_state`` and ``average`` unless None)."""
    folder = os.path.join(self.directory, str(step))
    verify_manifest(folder)
    if os.path.isdir(os.path.join(folder, "state")):  # format 1: leaf lists
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
        ),
      )
      leaves = restored["state"]
      model = jax.tree.unflatten(jax.tree.structure(model), leaves["params"])
      if opt_state is not None:
        opt_state = jax.tree.unflatten(
          jax.tree.structure(opt_state), leaves["opt_state"]
        )
      return Read(model, opt_state, restored["meta"])
    items = {"meta": ocp.args.JsonRestore()}
    if model is not None:
      items["model"] = ocp.args.StandardRestore(_abstract(model))
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state))
    if average is not None:
      items["average"] = ocp.args.StandardRestore(_abstract(average))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return Read(
      restored.get("model"),
      restored.get("opt_state"),
      restored["meta"],
      restored.get("average"),
    )

  def restore_latest(
    self, model, opt_state=None, *, average=None, move_aside=False
  ) -> Read | None:
    """The newest readable checkpoint, read into the structures (and
    shapes) of ``model``, ``opt_state`` and ``average`` (each skipped when
    None; ``average`` is the model's structure again, for a run with
    ``ema_decay`` > 0; inference reads it alone).

    Args:
      model, opt_state, average: trees whose structure and shapes the
        checkpoint has.
      move_aside: move an unreadable checkpoint to
        ``workdir/checkpoints_unreadable/`` (training does, so that the
        run can save that step again); else it is left in place.

    Returns:
      a :class:`Read`, or None when there is no checkpoint.
      A checkpoint that cannot be read is skipped with a warning and the
      previous one is tried.
    """
    self.wait()
    for step in self._agreed_steps():
      self.check_fits(step, average if model is None else model)
      if average is not None:
        self._check_has_average(step)
      try:
        restored = self._read(step, model, opt_state, average)
        error = None
      except Exception as caught:  # noqa: BLE001 - any unreadable checkpoint
        restored, error = None, caught
      # Several processes: all resume from the same step or none does.
      if not distributed.any_process(error is not None):
        return restored
      where = ""
      if move_aside:
        distributed.barrier(f"read checkpoint {step}")
        if distributed.is_main():
          where = " It was moved to " + self._move_aside(step) + "."
        distributed.barrier(f"moved checkpoint {step}")
        self.manager.reload()
      warnings.warn(
        f"checkpoint {step} could not be restored "
        f"({error or 'another process could not read it'!r:.300}); "
        f"falling back to the previous one.{where}",
        stacklevel=2,
      )
    return None

  def check_fits(self, step: int, model) -> None:
    """Raises :class:`CheckpointMismatch` when checkpoint ``step`` holds
    parameters of other names or shapes than ``model`` (read from orbax's
    metadata, before anything is restored or moved). Metadata that cannot
    be read (a damaged or format-1 checkpoint) is left to the restore."""
    folder = os.path.join(self.directory, str(step), "model")
    try:
      saved = ocp.StandardCheckpointHandler().metadata(epath.Path(folder))
      saved = getattr(saved, "tree", saved)
    except Exception:  # noqa: BLE001 - unreadable: the restore reports it
      return
    if saved is None:
      return
    differences = parameter_differences(saved, model)
    if differences:
      shown = "; ".join(differences[:6])
      more = len(differences) - 6
      raise CheckpointMismatch(
        f"checkpoint {step} in {self.directory} holds a model of other "
        f"parameter shapes than this config builds (the model's code or "
        f"model_kwargs changed): {shown}"
        + (f"; and {more} more" if more > 0 else "")
        + ". Nothing was moved. Rerun with the code and config that wrote "
        "it, or use a new --workdir (or --overwrite) to train this model."
      )

  def _check_has_average(self, step: int) -> None:
    """Raises :class:`CheckpointMismatch` when checkpoint ``step`` keeps no
    moving average (its run had ``ema_decay`` = 0): not damage, so it is
    not moved aside."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "average")):
      raise CheckpointMismatch(
        f"checkpoint {step} in {self.directory} holds no moving average of "
        "the parameters: it was written with ema_decay = 0, and this config "
        "has ema_decay > 0. Nothing was moved. Rerun with the config that "
        "wrote it, or use a new --workdir."
      )

  def _agreed_steps(self) -> list[int]:
    """The saved steps, newest first, as process 0 lists them."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if distributed.process_count() == 1:
      return steps
    count = distributed.from_main(len(steps))
    return [
      distributed.from_main(steps[k] if k < len(steps) else -1)
      for k in range(count)
    ]

  def _move_aside(self, step: int) -> str:
    aside = os.path.join(
      os.path.dirname(self.directory),
      "checkpoints_unreadable",
      f"{step}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.move(os.path.join(self.directory, str(step)), aside)
    self.manager.reload()
    return aside

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
