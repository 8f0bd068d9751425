"""Load a trained model from its workdir: ``stn_jax.restore(workdir)``.

Needs only the model code and the checkpoint (:mod:`stn_jax.checkpointing`):
no input pipeline, no TFDS/grain/array_record import, no optimiser.

:meth:`Restored.predict` and :meth:`Restored.transform` take NHWC images at
the dataset's size, uint8 in 0-255 or float in [0, 1] exactly (no
tolerance: clip first if your floats overshoot); NaN/inf or out-of-range
floats raise ``ValueError``. An empty batch returns an empty result without
running the model. Inputs are processed ``batch_size`` images at a time
(the last partial batch padded to that size, so one shape is compiled) and
normalised batch by batch, so memory beyond the input and the result stays
bounded by the batch.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stn_jax import checkpointing, config_schema, models, xla_cpu
from stn_jax.normalization import Normalization

DEFAULT_BATCH_SIZE = 256


class Restored:
  """A trained model with its config.

  Attributes:
    config: the run's ``ml_collections.ConfigDict``.
    step: the checkpoint's training step.
    model: the Flax NNX module.
    normalization: the run's input :class:`~stn_jax.normalization.Normalization`.
    transform_name: the first spatial transformer's family (``'affine'``,
      ...), None without one.
  """

  def __init__(self, config, model, in_shape, step):
    self.config = config
    self.step = step
    self.model = model
    self.normalization = Normalization.from_config(config)
    self._in_shape = tuple(in_shape)
    graphdef, state = nnx.split(model)
    self._state = state
    # Compiled with the XLA CPU kernels the run trained with.
    jit = functools.partial(
      jax.jit, compiler_options=xla_cpu.step_compiler_options(config)
    )
    self._logits = jit(lambda s, x: nnx.merge(graphdef, s)(x))
    example = jax.ShapeDtypeStruct((1, *self._in_shape), jnp.float32)
    # Output shapes and dtypes, from tracing alone: what an empty batch gets.
    self._logits_spec = jax.eval_shape(self._logits, state, example)
    if models.transformers(model):
      self._warp = jit(
        lambda s, x: models.warp_input(nnx.merge(graphdef, s), x)
      )
      self._warp_spec = jax.eval_shape(self._warp, state, example)
      self._params = jit(
        lambda s, x: models.first_transform_params(nnx.merge(graphdef, s), x)
      )
      self._params_spec = jax.eval_shape(self._params, state, example)
      self.transform_name = models.transformers(model)[0].transform
    else:
      self._warp = self._warp_spec = None
      self._params = self._params_spec = self.transform_name = None

  @property
  def in_shape(self) -> tuple[int, ...]:
    """``(H, W, C)``: the image shape the model takes."""
    return self._in_shape

  def _check(self, images) -> np.ndarray:
    """Checks shape, dtype and range of the whole input; returns NumPy."""
    images = np.asarray(images)
    if images.shape[1:] != self._in_shape:
      raise ValueError(
        f"images must have shape (N, "
        f"{', '.join(map(str, self._in_shape))}) (the "
        f"dataset's image size); got {images.shape}."
      )
    if images.dtype == np.uint8:
      return images
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(
        "images must be uint8 (0-255) or float in [0, 1]; got "
        f"dtype {images.dtype}."
      )
    if images.size == 0:
      return images
    # Two reductions, no temporaries of the input's size (NaN propagates).
    low, high = images.min(), images.max()
    if not (np.isfinite(low) and np.isfinite(high)):
      finite = images[np.isfinite(images)]
      found = (
        f"finite values in [{finite.min():.4g}, {finite.max():.4g}]"
        if finite.size
        else "no finite values"
      )
      raise ValueError(
        "images must be finite, uint8 (0-255) or float in [0, 1]; got "
        f"{int(np.isnan(images).sum())} nan and "
        f"{int(np.isinf(images).sum())} inf values ({found})."
      )
    if low < 0 or high > 1:
      hint = (
        " Float images in 0-255 must be divided by 255 (or cast to uint8)."
        if high > 1 and low >= 0 and high <= 255
        else " Clip them to [0, 1] if the excess is rounding."
      )
      raise ValueError(
        "images must be uint8 (0-255) or float in [0, 1]; got "
        f"{images.dtype} values in [{low:.4g}, {high:.4g}].{hint}"
      )
    return images

  def _normalize(self, images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
      return self.normalization(images)
    return self.normalization.from_unit(images)

  def _batched(self, function, spec, images, batch_size, post=None):
    """Runs ``function(state, x)`` over batches of checked ``images``."""
    if (
      isinstance(batch_size, (bool, np.bool_))
      or not isinstance(batch_size, (int, np.integer))
      or batch_size < 1
    ):
      raise ValueError(
        f"batch_size must be a positive int; got {batch_size!r}."
      )
    images = self._check(images)
    count = len(images)
    out = np.empty((count, *spec.shape[1:]), spec.dtype)
    if count == 0:
      return out  # The model is not run.
    size = min(int(batch_size), count)
    for start in range(0, count, size):
      chunk = self._normalize(images[start : start + size])
      used = len(chunk)
      if used < size:  # Pad: one compiled shape for every batch.
        padding = np.zeros((size - used, *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, padding])
      result = np.asarray(function(self._state, chunk))[:used]
      out[start : start + used] = result if post is None else post(result)
    return out

  def predict(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE):
    """Logits of the model.

    Args:
      images: ``(N, H, W, C)`` at the dataset's image size, uint8 in 0-255
        or float in [0, 1] (exactly; NaN/inf raise). NumPy or JAX.
      batch_size: images per model call; the last partial batch is padded
        to ``min(batch_size, N)``, so one shape is compiled.

    Returns:
      float32 NumPy ``(N, num_classes)``; ``(0, num_classes)`` for ``N = 0``
      (without running the model).

    Raises:
      ValueError: wrong shape or dtype, out-of-range or non-finite values,
        or a ``batch_size`` that is not a positive int.
    """
    return self._batched(self._logits, self._logits_spec, images, batch_size)

  def transform(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE):
    """The images as the (first) spatial transformer warps them: its
    sampling grid, computed from what it receives in the model, applied to
    the images (:func:`stn_jax.models.warp_input`). For a transformer on
    the raw input, as in the paper's models, this is its output; with the
    GTSRB CNN's input contrast normalisation it is the un-normalised image
    warped the same way.

    Args:
      images: as for :meth:`predict`.
      batch_size: as for :meth:`predict`.

    Returns:
      float32 NumPy ``(N, H_out, W_out, C)`` in the input's [0, 1] scale
      (not clipped); ``(0, H_out, W_out, C)`` for ``N = 0``.

    Raises:
      ValueError: as :meth:`predict`, or if the model has no spatial
        transformer.
    """
    if self._warp is None:
      raise ValueError(
        f"model {self.config.model!r} has no spatial transformer."
      )
    return self._batched(
      self._warp,
      self._warp_spec,
      images,
      batch_size,
      post=self.normalization.to_unit,
    )

  def transform_params(self, images, *, batch_size: int = DEFAULT_BATCH_SIZE):
    """The flat parameters the first spatial transformer regresses
    (:func:`stn_jax.models.first_transform_params`; family
    :attr:`transform_name`, layout :mod:`stn_jax.ops.transforms`; for an
    IC-STN the composed warp).

    Args:
      images: as for :meth:`predict`.
      batch_size: as for :meth:`predict`.

    Returns:
      float32 NumPy ``(N, P)``.

    Raises:
      ValueError: as :meth:`transform`.
    """
    if self._params is None:
      raise ValueError(
        f"model {self.config.model!r} has no spatial transformer."
      )
    return self._batched(self._params, self._params_spec, images, batch_size)


def _population_of_point(workdir: str) -> tuple[str, int] | None:
  """(the population folder, the member index) of a sweep point trained as
  a population member (``record.json`` names its population); None for
  other workdirs. Records before the index was kept: the member whose
  results in ``population.json`` are the point's own."""
  try:
    with open(os.path.join(workdir, "record.json")) as f:
      population = json.load(f).get("population") or {}
  except (OSError, ValueError, AttributeError):
    return None
  if not population.get("name"):
    return None
  folder = os.path.join(
    os.path.dirname(os.path.abspath(workdir)), "populations", population["name"]
  )
  if "index" in population:
    return folder, int(population["index"])
  try:
    with open(os.path.join(folder, "population.json")) as f:
      members = json.load(f)["members"]
    with open(os.path.join(workdir, "results.json")) as f:
      own = json.load(f)
  except (OSError, ValueError, KeyError):
    return folder, -1
  matches = [
    k
    for k, m in enumerate(members)
    if all(m.get(key) == value for key, value in own.items() if key != "step")
  ]
  return folder, matches[0] if len(matches) == 1 else -1


def _population_hint(workdir: str) -> str:
  """Where the checkpoint of a sweep point trained as a population member
  is ('' for other workdirs)."""
  found = _population_of_point(workdir)
  if found is None:
    return ""
  folder = found[0]
  with open(os.path.join(workdir, "record.json")) as f:
    population = json.load(f)["population"]
  return (
    f" This sweep point was trained as one of the {population.get('members')}"
    f" members of {population['name']}: their checkpoint (all members "
    f"stacked) is in {folder}/checkpoints, and this folder keeps the "
    "point's config, metrics and results only."
  )


def _population_size(workdir: str) -> int:
  """The number of members of the population trained in ``workdir`` (0 if
  it is not a population's folder)."""
  path = os.path.join(workdir, "population.json")
  if not os.path.isfile(path):
    return 0
  with open(path) as f:
    return len(json.load(f)["members"])


def _read_checkpoint(workdir, initial, average: bool):
  """``(model state, meta)`` of ``workdir``'s latest readable checkpoint
  read into the structure of ``initial``, or None; with ``average`` the
  model state is the checkpoint's moving average of the parameters (a run
  with ``ema_decay`` > 0: what it evaluated). A run that saves
  meanwhile (max_checkpoints=1 deletes the step just listed) is read again
  from its new listing."""
  restored = None
  for _ in range(5):
    listed = checkpointing.saved_steps(workdir)
    try:
      checkpoints = checkpointing.Checkpoints(workdir)
      try:
        restored = checkpoints.restore_latest(
          None if average else initial, average=initial if average else None
        )
      finally:
        checkpoints.close()
    except (FileNotFoundError, NotADirectoryError):
      # A step folder went during the listing (orbax reads the metadata of
      # a deleted step as "Path is not a directory").
      restored = None
    if restored is not None or checkpointing.saved_steps(workdir) == listed:
      break
  if restored is None:
    return None
  return (restored.average if average else restored.model), restored.meta


def restore(workdir: str, member: int | None = None) -> Restored:
  """The model of ``workdir`` at its latest readable checkpoint: for a run
  with ``ema_decay`` > 0, the moving average of its parameters (the model
  its evaluations report).

  Args:
    workdir: a run's folder; a sweep point trained as a population member
      (``--population``: its member is read from the population's stacked
      checkpoint); or a population's folder (give ``member``).
    member: which member of the population in ``workdir`` (0 to K - 1);
      only for a population's folder.

  Raises:
    FileNotFoundError: no checkpoint (the message says where a population
      member's is).
    ValueError: ``member`` missing for a population's folder, out of
      range, or given for a single run.
  """
  size = _population_size(workdir)
  checkpoint_dir, member_dir = workdir, workdir
  if size:
    if member is None or not 0 <= member < size:
      raise ValueError(
        f"member must be an int in [0, {size}) for the population of {size} "
        f"members in {workdir}; got {member!r}."
      )
    member_dir = os.path.join(workdir, f"member_{member}")
    if not os.path.isfile(os.path.join(member_dir, "config.json")):
      raise FileNotFoundError(
        f"{member_dir} has no config.json: the members of the population in "
        f"{workdir} keep their files in a sweep's point folders; restore "
        "the point's folder instead (it finds its member here)."
      )
  elif member is not None:
    raise ValueError(
      f"member is only for a population's folder; {workdir} is a single "
      f"run (got member={member!r})."
    )
  else:
    found = _population_of_point(workdir)
    if found is not None and not checkpointing.saved_steps(workdir):
      checkpoint_dir, member = found
      size = _population_size(checkpoint_dir)
      if member < 0 or not size:
        raise FileNotFoundError(
          f"no checkpoint in {workdir}/checkpoints, and its member of the "
          f"population in {checkpoint_dir} cannot be identified."
          + _population_hint(workdir)
        )
  config, in_shape = checkpointing.read_run_files(member_dir)
  model = models.from_config(config, in_shape)
  graphdef, initial = nnx.split(model)
  averaged = config_schema.get(config, "ema_decay") > 0
  if size:
    from stn_jax import steps

    stacked = steps.stack_members([initial] * size)
    restored = _read_checkpoint(checkpoint_dir, stacked, averaged)
    if restored is not None:
      state = jax.tree.map(lambda x: x[member], restored[0])
      restored = (state, restored[1])
  else:
    restored = _read_checkpoint(checkpoint_dir, initial, averaged)
  if restored is None:
    raise FileNotFoundError(
      f"no checkpoint in {checkpoint_dir}/checkpoints."
      + _population_hint(workdir)
    )
  model_state, meta = restored
  return Restored(
    config, nnx.merge(graphdef, model_state), in_shape, int(meta["step"])
  )
