"""What a run writes besides checkpoints: metric writers, the transformer's
snapshots for the viz GIF, the final ``transformer.png`` and
``results.json`` (one set per member folder).

Every process computes what is written (the transformer's outputs take
part in collectives across processes); only process 0 writes.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx

from stn_jax import distributed, files, models
from stn_jax import hooks as hooks_lib
from stn_jax.data import preview
from stn_jax.normalization import Normalization

SNAPSHOT_COUNT = 16


def transformer_outputs(
  graphdef, model_state, images, normalization: Normalization
):
  """uint8 ``images`` as the first transformer warps them
  (:func:`stn_jax.models.warp_input`; uint8 like ``images``), or None for a
  model without one."""
  model = nnx.merge(graphdef, model_state)
  if not models.transformers(model):
    return None
  return normalization.to_uint8(models.warp_input(model, normalization(images)))


def save_snapshot(
  graphdef, model_state, images, normalization, folder, step
) -> None:
  """The transformer's output on fixed test images, for the GIF of
  ``python -m stn_jax.viz`` (``folder/snapshots/<step>.npy``, uint8;
  ``folder`` None computes it without writing, as processes other than
  the first do: every process takes part in the computation)."""
  out = transformer_outputs(graphdef, model_state, images, normalization)
  if out is None or folder is None:  # None: another process writes it
    return
  os.makedirs(os.path.join(folder, "snapshots"), exist_ok=True)
  np.save(os.path.join(folder, "snapshots", f"{step:08d}.npy"), out)


def write_transformer_png(
  graphdef, model_state, arrays, path, normalization, count=16
) -> None:
  """Inputs next to the transformer's outputs, as a PNG."""
  images = arrays["image"][:count]
  out = transformer_outputs(graphdef, model_state, images, normalization)
  if out is None or path is None:  # None: another process writes it
    return
  preview.pairs_image(
    images, out, arrays["label"][:count], title="inputs and transformer outputs"
  ).save(path)


class RunOutputs:
  """A run's files outside the checkpoints, in each member's folder.

  Args:
    folders: one folder per member (the workdir for a single run).
    graphdef: the model's graph definition.
    normalization: the run's input normalisation.
    snapshot_images: uint8 (N, H, W, C) images whose warps are snapshotted.
    main: whether this process writes (process 0).
  """

  def __init__(self, folders, graphdef, normalization, snapshot_images, main):
    self.folders = list(folders)
    self.graphdef = graphdef
    self.normalization = normalization
    self.snapshot_images = snapshot_images
    self.main = main
    self.writers = [
      hooks_lib.MetricWriter(folder) if main else hooks_lib.NullWriter()
      for folder in self.folders
    ]

  @classmethod
  def for_run(cls, placement, graphdef, evals) -> RunOutputs:
    """The outputs of ``placement``'s run: in its folders, snapshots of
    the first :data:`SNAPSHOT_COUNT` images of the first eval split."""
    images = next(iter(evals.values()))["image"][:SNAPSHOT_COUNT]
    return cls(
      placement.folders,
      graphdef,
      Normalization.from_config(placement.configs[0]),
      images,
      distributed.is_main(),
    )

  def snapshot(self, context) -> None:
    """Every member's transformer output at ``context.step``."""
    for folder, model_state in zip(self.folders, context.member_models()):
      save_snapshot(
        self.graphdef,
        model_state,
        self.snapshot_images,
        self.normalization,
        folder if self.main else None,
        context.step,
      )

  def write_final(self, context, results, arrays) -> None:
    """``transformer.png`` (on ``arrays``, the first eval split) and
    ``results.json`` (``{'step', **results[k]}``) in every member's
    folder."""
    for folder, model_state, member_results in zip(
      self.folders, context.member_models(), results
    ):
      write_transformer_png(
        self.graphdef,
        model_state,
        arrays,
        os.path.join(folder, "transformer.png") if self.main else None,
        self.normalization,
      )
      if self.main:
        path = os.path.join(folder, "results.json")
        with files.written(path) as temporary, open(temporary, "w") as f:
          json.dump({"step": context.step, **member_results}, f, indent=2)

  def closers(self) -> list:
    """The writers' ``close`` functions."""
    return [w.close for w in self.writers]
