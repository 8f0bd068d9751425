"""A run's files: its config, input shape and orbax checkpoints.

Light on purpose: reading a model back (``stn_jax.restore``) needs this
module and :mod:`stn_jax.models`, never the data stack (TFDS, grain,
array_record) and never an optimiser.

Checkpoint layout (``workdir/checkpoints/<step>/``, format 2):

- ``model``: the model's ``nnx.State`` (parameters, by module path);
- ``opt_state``: the optax state (same structure as the optimiser's);
- ``meta``: JSON ``{'format': 2, 'step': int, 'data_state': ...}``, where
  ``data_state`` is the input pipeline's position (JSON).

Format 1 (before the structured state: one ``state`` item of flat leaf
lists) is still read: its leaves are put back into the current structure,
which is the same as long as the model and optimiser did not change.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

FORMAT = 2


def write_run_files(workdir: str, config, in_shape) -> None:
  """``config.json`` and ``in_shape.json`` (the model's input shape)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, "in_shape.json"), "w") as f:
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
  with open(paths[0]) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(paths[1]) as f:
    in_shape = tuple(json.load(f))
  return config, in_shape


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


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
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: Any) -> None:
    """Saves a :class:`stn_jax.steps.TrainState` (possibly stacked over
    population members) and the data position; returns when written."""
    meta = {"format": FORMAT, "step": int(step), "data_state": data_state}
    self.manager.save(
      step,
      args=ocp.args.Composite(
        model=ocp.args.StandardSave(state.model),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave(meta),
      ),
      force=True,
    )
    self.manager.wait_until_finished()

  def _read(self, step: int, model, opt_state):
    """Reads one checkpoint into the structures of ``model`` (and
    ``opt_state`` unless None); returns (model, opt_state, meta)."""
    folder = os.path.join(self.directory, str(step))
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
      return model, opt_state, restored["meta"]
    items = {
      "model": ocp.args.StandardRestore(_abstract(model)),
      "meta": ocp.args.JsonRestore(),
    }
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return (restored["model"], restored.get("opt_state"), restored["meta"])

  def restore_latest(self, model, opt_state=None):
    """The newest readable checkpoint, read into the structures (and
    shapes) of ``model`` and ``opt_state`` (skipped when None).

    Returns:
      ``(model, opt_state, meta)``, or None when there is no checkpoint.
      A checkpoint that cannot be read is skipped with a warning and the
      previous one is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self._read(step, model, opt_state)
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
        warnings.warn(
          f"checkpoint {step} could not be restored "
          f"({error!r:.300}); falling back to the previous one.",
          stacklevel=2,
        )
    return None

  def close(self) -> None:
    self.manager.close()
