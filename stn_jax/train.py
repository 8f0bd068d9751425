"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

The run is the pure step of :mod:`stn_jax.steps` inside one loop
(:func:`run_loop`) driven by the hooks of :mod:`stn_jax.hooks`: logging,
checkpoints, evaluation, snapshots and preemption. Population mode
(:mod:`stn_jax.population`) runs the same loop and hooks over the step
vmapped across members.

A rerun of the same command resumes from the last good checkpoint (model,
optimiser, step and data-iterator position); SIGTERM saves and exits; a
NaN/inf loss stops the run at the next log step or save, and the last
checkpoint is always one from before it. Metrics accumulate on the device
and are fetched at log steps only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from stn_jax import checkpointing, distributed, models, steps
from stn_jax import hooks as hooks_lib
from stn_jax import workdir as workdir_lib
from stn_jax.data import (
  augment,
  datasets,
  device_augment,
  distortions,
  pipeline,
  preview,
)
from stn_jax.hooks import TrainingDiverged  # noqa: F401 - re-exported
from stn_jax.models import convolution
from stn_jax.normalization import Normalization

OPTIMIZERS = steps.OPTIMIZERS
SNAPSHOT_COUNT = 16
# Training splits whose undistorted digits on_the_fly distorts afresh.
ON_THE_FLY_SPLITS = ("train", "train_without_validation")


def train_split(config) -> str:
  """The split trained on: ``config.train_split``, default ``'train'``."""
  return config.get("train_split", "train")


def train_dataset(config) -> str:
  """The dataset trained on: ``config.train_dataset``, default
  ``config.dataset`` (on-the-fly distortion trains on undistorted digits and
  evaluates on the built distorted dataset)."""
  return config.get("train_dataset", "") or config.dataset


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before anything is built or compiled."""
  if config.model not in models.MODELS:
    raise ValueError(
      f"config.model must be one of "
      f"{', '.join(models.MODELS)}; got {config.model!r}."
    )
  recurrences = config.model_kwargs.get("recurrences", 1)
  if (
    isinstance(recurrences, bool)
    or not isinstance(recurrences, int)
    or recurrences < 1
  ):
    raise ValueError(
      "config.model_kwargs.recurrences (ic_st_cnn's updates) must be an "
      f"int >= 1; got {recurrences!r}."
    )
  datasets.get_builder(config.dataset)  # raises on unknown datasets
  datasets.get_builder(train_dataset(config))
  if config.on_the_fly:
    distortions.check_variant(config.on_the_fly)
    if any(_augmentation(config).values()):
      raise ValueError(
        "config.augment_* jitter and config.on_the_fly distortion cannot be "
        f"combined; got on_the_fly={config.on_the_fly!r} and "
        f"{_augmentation(config)}."
      )
  augment.RandomAffine(**_augmentation(config))  # checks the ranges
  # (name, lowest allowed, whether the lowest is allowed); all must be
  # finite numbers.
  for key, low, inclusive in (
    ("learning_rate", 0.0, False),
    ("localisation_lr_multiplier", 0.0, True),
    ("lr_decay_factor", 0.0, False),
    ("grad_clip_norm", 0.0, True),
    ("weight_decay", 0.0, True),
    ("std", 0.0, False),
    ("mean", -math.inf, True),
  ):
    value = config.get(key, 1.0 if key == "std" else 0.0)
    values = value if isinstance(value, (list, tuple)) else [value]
    ok = all(
      isinstance(v, (int, float))
      and not isinstance(v, bool)
      and math.isfinite(v)
      and (v >= low if inclusive else v > low)
      for v in values
    )
    if not ok:
      bound = f">= {low}" if inclusive else f"> {low}"
      raise ValueError(
        f"config.{key} must be a finite number {bound}; got {value!r}."
      )
  seed = config.get("seed", 0)
  if not (isinstance(seed, int) and not isinstance(seed, bool)) or not (
    0 <= seed < 2**31
  ):
    raise ValueError(f"config.seed must be an int in [0, 2**31); got {seed!r}.")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
      f"config.optimizer must be one of {', '.join(OPTIMIZERS)}"
      f"; got {config.optimizer!r}."
    )
  for key in (
    "batch_size",
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "eval_batch_size",
    "lr_decay_every",
    "max_checkpoints",
    "steps_per_dispatch",
  ):
    if key == "steps_per_dispatch" and key not in config:
      continue  # configs written before it: 1
    if not isinstance(config[key], int) or config[key] <= 0:
      raise ValueError(
        f"config.{key} must be a positive int; got {config[key]!r}."
      )
  convolution.check_weight_gradient(config.get("conv_weight_gradient", "xla"))
  steps.check_recipe(config)
  snapshot_every = config.get("snapshot_every", 0)
  if not isinstance(snapshot_every, int) or snapshot_every < 0:
    raise ValueError(
      "config.snapshot_every must be an int >= 0 (0: only at "
      f"evaluations); got {snapshot_every!r}."
    )
  if (
    train_dataset(config) == config.dataset
    and train_split(config) in config.eval_splits
  ):
    raise ValueError(
      f"config.train_split {train_split(config)!r} is also in "
      f"config.eval_splits {tuple(config.eval_splits)}: "
      "evaluating on the training split is not a result."
    )
  if config.on_the_fly and train_split(config) not in ON_THE_FLY_SPLITS:
    raise ValueError(
      "config.train_split must be 'train' or 'train_without_validation' "
      "with on_the_fly "
      f"(the undistorted training digits); got "
      f"{train_split(config)!r}."
    )
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ValueError(
        f"config.{key} must be divisible by the number of "
        f"devices ({devices}); got {config[key]}."
      )


def _augmentation(config) -> dict[str, float]:
  return {
    name: float(config.get(f"augment_{name}", 0.0))
    for name in ("rotation", "scale", "translate")
  }


def preprocessing(config, *, on_device: bool = False):
  """The training batches' preprocessing step the config chooses: None,
  on-the-fly distortion for ``config.on_the_fly``, or random affine jitter
  for ``config.augment_*``; with ``on_device`` their twins that run inside
  the step (:mod:`stn_jax.data.device_augment`)."""
  distort, jitter_step = (
    (device_augment.OnTheFly, device_augment.RandomAffine)
    if on_device
    else (distortions.OnTheFly, augment.RandomAffine)
  )
  if config.on_the_fly:
    return distort(config.on_the_fly)
  jitter = _augmentation(config)
  return jitter_step(**jitter) if any(jitter.values()) else None


def device_preprocessing(config):
  """:func:`preprocessing` ``(config, on_device=True)``."""
  return preprocessing(config, on_device=True)


def batches_on_device(config) -> bool:
  """Whether training batches are gathered (and augmented) on the device:
  ``data_on_device``, and any preprocessing runs there
  (``augment_on_device``); else the host pipeline makes them."""
  if not config.get("data_on_device", False):
    return False
  return preprocessing(config) is None or config.get("augment_on_device", False)


def load_data(config):
  """(train arrays, {split: eval arrays}, model input shape)."""
  kwargs = dict(
    tfds_dir=config.tfds_dir or None,
    source_dir=config.source_dir or None,
    data_mirror=config.get("data_mirror", "") or None,
  )
  train = datasets.load_arrays(
    train_dataset(config), train_split(config), **kwargs
  )
  in_shape = tuple(train["image"].shape[1:])
  preprocess = preprocessing(config)
  if preprocess is not None:
    in_shape = preprocess.output_shape(in_shape)
  evals = {
    split: datasets.load_arrays(config.dataset, split, **kwargs)
    for split in config.eval_splits
  }
  return train, evals, tuple(in_shape)


# ---------------------------------------------------------------------------
# Evaluation and transformer outputs.


def evaluate(
  eval_step,
  model_state,
  arrays,
  normalization: Normalization,
  batch_size: int,
  sharding=None,
) -> list[dict[str, float]]:
  """Loss and error over a whole split (the last batch padded and masked).

  ``eval_step`` is :func:`stn_jax.steps.make_eval_step`'s; for a population
  (``model_state`` stacked over members) it returns per-member sums.
  Returns one ``{'loss', 'error'}`` per member (one for a single model).
  """
  outputs = []
  n = len(arrays["label"])
  # No batch larger than the split (rounded up to whole shards): a huge
  # eval_batch_size would only pad, and allocate, rows that are masked out.
  shards = len(sharding.device_set) if sharding is not None else 1
  batch_size = min(batch_size, -(-n // shards) * shards)
  put = (lambda x: jax.device_put(x, sharding)) if sharding else jnp.asarray
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)
    mask = (index < n).astype(np.float32)
    index = np.minimum(index, n - 1)
    outputs.append(
      eval_step(
        model_state,
        {
          "image": put(normalization(arrays["image"][index])),
          "label": put(arrays["label"][index].astype(np.int32)),
          "mask": put(mask),
        },
      )
    )
  totals = {
    k: np.sum(
      np.stack([np.atleast_1d(o[k]) for o in jax.device_get(outputs)]),
      0,
      dtype=np.float64,
    )
    for k in outputs[0]
  }
  return [
    {"loss": float(loss / count), "error": float(wrong / count)}
    for loss, wrong, count in zip(
      totals["loss_sum"], totals["wrong"], totals["count"]
    )
  ]


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
  tiles, labels = [], []
  for i in range(len(images)):
    tiles += [images[i], out[i]]
    labels += [f"in {int(arrays['label'][i])}", "ST out"]
  preview.grid_image(
    np.stack(tiles), labels, columns=8, title="inputs and transformer outputs"
  ).save(path)


# ---------------------------------------------------------------------------
# The loop.


def dispatch_length(
  step: int, num_steps: int, steps_per_dispatch: int, hooks
) -> int:
  """How many steps the next dispatch from ``step`` runs: up to the next
  multiple of ``steps_per_dispatch`` (a grid fixed in absolute steps, so a
  resumed run dispatches the same chunks as an uninterrupted one), cut at
  the next step any hook acts at and at ``num_steps``."""
  end = min(num_steps, (step // steps_per_dispatch + 1) * steps_per_dispatch)
  for hook in hooks:
    at = hook.next_step(step)
    if at is not None and step < at < end:
      end = at
  return end - step


def run_loop(
  context: hooks_lib.LoopContext,
  step_fn: Callable,
  next_batch: Callable[[int], Any],
  hooks: Sequence[hooks_lib.Hook],
  steps_per_dispatch: int = 1,
) -> None:
  """Steps ``context.state`` to ``context.num_steps``, calling every hook
  after every dispatch, until a hook or a signal handler sets
  ``context.stop_requested``: then every hook's ``stop`` runs (the
  checkpoint hook saves) and ``context.stopping`` is True.

  ``next_batch(n)`` gives the input of ``n`` steps and ``step_fn(state,
  accumulator, input)`` runs them; with ``steps_per_dispatch`` 1 every
  dispatch is one step, else its length comes from
  :func:`dispatch_length`.
  """
  for hook in hooks:
    hook.begin(context)
  try:
    while context.step < context.num_steps:
      n = dispatch_length(
        context.step, context.num_steps, steps_per_dispatch, hooks
      )
      context.state, context.accumulator = step_fn(
        context.state, context.accumulator, next_batch(n)
      )
      context.step += n
      for hook in hooks:
        hook.after_step(context)
      if context.stop_requested:
        context.stopping = True
        for hook in hooks:
          hook.stop(context)
        break
  finally:
    for hook in reversed(hooks):
      hook.close(context)


@dataclasses.dataclass
class _Members:
  """What differs between a single run and a population of K members."""

  configs: list
  population_method: str | None  # None: one unstacked run
  member_dirs: list[str] | None = None  # None: workdir/member_<k>

  @property
  def population(self) -> bool:
    return self.population_method is not None

  def folders(self, workdir) -> list[str]:
    if not self.population:
      return [workdir]
    if self.member_dirs is not None:
      return list(self.member_dirs)
    return [
      os.path.join(workdir, f"member_{k}") for k in range(len(self.configs))
    ]


def population_mesh(num_members: int) -> jax.sharding.Mesh:
  """A 1-D ``('members',)`` mesh over as many local devices as evenly
  divide ``num_members`` (all of them when K is a multiple of their
  number; one when K is prime to it)."""
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
  return jax.sharding.Mesh(np.array(devices[:count]), ("members",))


def fit(
  configs,
  workdir: str,
  *,
  population_method: str | None = None,
  member_dirs: Sequence[str] | None = None,
  hooks: Sequence[hooks_lib.Hook] = (),
  overwrite: bool = False,
  log=print,
) -> list[dict]:
  """Trains one config (``population_method=None``) or a population of K
  compatible configs in one loop; returns one results dict per member.

  The workdir is locked for the run, and refused if it holds a run of
  another config unless ``overwrite`` (see :mod:`stn_jax.workdir`); so is
  each member's folder (``member_dirs``, default ``workdir/member_<k>``).
  Use :func:`train_and_evaluate` or
  :func:`stn_jax.population.train_population` rather than this.
  """
  if member_dirs is not None:
    member_dirs = [str(d) for d in member_dirs]
    if population_method is None or len(member_dirs) != len(configs):
      raise ValueError(
        "member_dirs needs a population and one folder per config; got "
        f"{len(member_dirs)} folder(s) for {len(configs)} config(s)."
      )
    if len(set(map(os.path.abspath, member_dirs))) != len(member_dirs):
      raise ValueError(f"member_dirs must differ; got {member_dirs}.")
  members = _Members(list(configs), population_method, member_dirs)
  for config in members.configs:
    validate_config(config)
  if members.population and distributed.process_count() > 1:
    raise ValueError(
      "population mode runs in one process (its members are split over "
      f"that process's devices); got {distributed.process_count()} "
      "processes."
    )
  if not distributed.is_main():  # process 0 prints for the run
    log = lambda *_: None
  with contextlib.ExitStack() as stack:
    # Only process 0 locks, checks and (with overwrite) clears the
    # workdir; a refusal there stops every process.
    def check():
      lock = stack.enter_context(workdir_lib.WorkdirLock(workdir))
      if lock.stale_owner:
        log(f"took over the lock of a run that is gone ({lock.stale_owner})")
      for config, folder in zip(members.configs, members.folders(workdir)):
        workdir_lib.check_config(folder, config, overwrite=overwrite)

    distributed.check_on_main("the workdir check", check)
    return _fit(members, workdir, hooks, log)


def close_all(closers) -> None:
  """Calls every ``closer``; the first error is raised after all ran,
  unless an exception is already on its way out (e.g. a full disk's
  :class:`~stn_jax.checkpointing.CheckpointError`): then the closers'
  errors, usually the same cause again, are dropped so as not to hide it."""
  failing = sys.exc_info()[1] is not None
  first = None
  for close in closers:
    try:
      close()
    except Exception as error:  # noqa: BLE001 - raised below
      first = first or error
  if first is not None and not failing:
    raise first


def use_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at ``path`` (created if
  needed), caching every compilation that takes at least a second; ""
  leaves JAX's setting (e.g. ``JAX_COMPILATION_CACHE_DIR``) alone."""
  if not path:
    return
  path = os.path.expanduser(path)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _fit(members, workdir, hooks, log) -> list[dict]:
  first = members.configs[0]
  use_compilation_cache(first.get("compilation_cache_dir", ""))
  main = distributed.is_main()
  with distributed.main_first("building the datasets"):
    train_arrays, evals, in_shape = load_data(first)
  normalization = Normalization.from_config(first)

  # Model(s), optimiser and the step-0 state.
  states = []
  for config in members.configs:
    if members.population:  # each member's own settings act in the step
      config = steps.member_optimizer_config(config)
    model = models.from_config(config, in_shape)
    optimizer = steps.make_optimizer(config, nnx.state(model))
    graphdef, state = steps.init_state(model, optimizer)
    states.append(state)
  num_params = models.count_params(model)
  multi_step = first.get("steps_per_dispatch", 1) > 1
  on_device = batches_on_device(first)
  if members.population:
    # The member axis is split over the local devices (each holds whole
    # members); data and evaluation batches are replicated.
    mesh = population_mesh(len(members.configs))
    placement = NamedSharding(mesh, PartitionSpec("members"))
    replicated = NamedSharding(mesh, PartitionSpec())
    data_placement = None
    state = jax.device_put(steps.stack_members(states), placement)
    put = lambda x: jax.device_put(x, placement)
  else:
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    placement = replicated = NamedSharding(mesh, PartitionSpec())
    data_placement = NamedSharding(mesh, PartitionSpec("data"))
    # A dispatch of n steps stacks n batches: the batch axis is the second.
    batch_axis = 1 if multi_step else 0
    input_placement = (
      NamedSharding(mesh, PartitionSpec(None, "data"))
      if multi_step
      else data_placement
    )
    state = jax.device_put(states[0], placement)
    # This process's rows of every global batch (all of them in one
    # process): only those are made and sent.
    rows = distributed.local_rows(data_placement, (first.batch_size,))

    def put(x):
      def one(v):
        shape = list(v.shape)
        shape[batch_axis] = first.batch_size
        return jax.make_array_from_process_local_data(
          input_placement, v, tuple(shape)
        )

      return jax.tree.map(one, x)

  if on_device:
    streams = [
      pipeline.DeviceInput(
        train_arrays,
        batch_size=c.batch_size,
        seed=c.seed,
        normalization=normalization,
        augment=device_preprocessing(c),
      )
      for c in members.configs
    ]
    device_data = pipeline.DeviceInput.device_arrays(train_arrays, replicated)
    gather = streams[0].gather

    def member_input(stream, n):
      inputs = stream.indices(n if multi_step else None)
      if members.population:
        return inputs
      return {k: v[..., rows] for k, v in inputs.items()}  # batch axis last
  else:
    streams = [
      pipeline.InputPipeline(
        train_arrays,
        batch_size=c.batch_size,
        seed=c.seed,
        preprocess=preprocessing(c),
        normalization=normalization,
        sharding=False,
        rows=None if members.population else rows,
      )
      for c in members.configs
    ]
    device_data, gather = None, None

    def member_input(stream, n):  # only what the step reads
      batches = [next(stream) for _ in range(n)]
      if not multi_step:
        return {k: batches[0][k] for k in ("image", "label")}
      return {k: np.stack([b[k] for b in batches]) for k in ("image", "label")}

  # Written once the data, the models and the input pipelines accepted the
  # config (a batch larger than the split, a seed out of range): a refused
  # config leaves no config.json to refuse its corrected rerun.
  if main:
    for config, folder in zip(members.configs, members.folders(workdir)):
      checkpointing.write_run_files(folder, config, in_shape)

  def next_batch(n):
    if not members.population:
      return put(member_input(streams[0], n))
    inputs = [member_input(s, n) for s in streams]
    return put(jax.tree.map(lambda *xs: np.stack(xs), *inputs))

  train_step = steps.make_train_step(
    graphdef,
    optimizer,
    population=members.population_method,
    multi_step=multi_step,
    gather=gather,
    schedule=steps.learning_rate_schedule(steps.member_optimizer_config(first))
    if members.population
    else None,
    label_smoothing=float(first.get("label_smoothing", 0.0)),
  )
  hyper = [steps.member_hyperparameters(c) for c in members.configs]
  if members.population:
    member_values = jax.device_put(
      {k: np.asarray([h[k] for h in hyper], np.float32) for k in hyper[0]},
      placement,
    )
    step_fn = lambda s, a, x: train_step(s, a, x, member_values, device_data)
  else:
    step_fn = lambda s, a, x: train_step(s, a, x, device_data)
  eval_step = steps.make_eval_step(
    graphdef, population=members.population_method or False
  )
  identity = [{"seed": c.seed, **h} for c, h in zip(members.configs, hyper)]

  def data_state():
    if not members.population:
      return streams[0].get_state()
    return {"members": identity, "streams": [s.get_state() for s in streams]}

  # Resume.
  checkpoints = checkpointing.Checkpoints(workdir, first.max_checkpoints)
  restored = checkpoints.restore_latest(
    state.model, state.opt_state, move_aside=True
  )
  step = 0
  if restored is not None:
    model_state, opt_state, meta = restored
    step = int(meta["step"])
    if members.population:
      # Populations saved before members had more keys recorded only seed
      # and learning rate; the rest was shared and came from the config,
      # which the workdir check has already compared with the saved one.
      saved_members = [
        {**now, **saved}
        for now, saved in zip(identity, meta["data_state"]["members"])
      ]
      if len(saved_members) != len(meta["data_state"]["members"]):
        saved_members = meta["data_state"]["members"]
      if saved_members != identity:
        raise ValueError(
          f"workdir {workdir} holds a population of "
          f"{meta['data_state']['members']}; these configs are "
          f"{identity}. Use a new workdir."
        )
      for stream, saved in zip(streams, meta["data_state"]["streams"]):
        stream.set_state(saved)
    else:
      streams[0].set_state(meta["data_state"])
    state = jax.device_put(
      steps.TrainState(
        step=jnp.full(state.step.shape, step, jnp.int32),
        model=model_state,
        opt_state=opt_state,
      ),
      placement,
    )
    log(f"resumed from step {step}")
  log(
    f"{first.model} on {first.dataset}: {num_params:,} parameters"
    + (
      f" x {len(members.configs)} members ({members.population_method})"
      if members.population
      else ""
    )
    + f", {jax.device_count()} device(s)"
    + (
      f" in {distributed.process_count()} processes"
      if distributed.process_count() > 1
      else ""
    )
    + (
      f" (members split over {mesh.size})"
      if members.population and mesh.size > 1
      else ""
    )
    + f", workdir {workdir}"
    + (", training split on the device" if on_device else "")
    + (f", {first.steps_per_dispatch} steps per dispatch" if multi_step else "")
    + ", conv gradients "
    + convolution.resolve_weight_gradient(
      first.get("conv_weight_gradient", "xla")
    )
  )

  batch_shape = {
    "image": jax.ShapeDtypeStruct((first.batch_size, *in_shape), jnp.float32),
    "label": jax.ShapeDtypeStruct((first.batch_size,), jnp.int32),
  }
  metric_shapes = jax.eval_shape(
    lambda s, b: steps.train_step(s, b, graphdef=graphdef, optimizer=optimizer)[
      1
    ],
    states[0],
    batch_shape,
  )
  accumulator = steps.empty_accumulator(metric_shapes)
  if members.population:
    accumulator = steps.stack_members([accumulator] * len(members.configs))
  context = hooks_lib.LoopContext(
    workdir=workdir,
    num_steps=first.num_steps,
    step=step,
    state=state,
    accumulator=jax.device_put(accumulator, placement),
    population=members.population,
    data_state=data_state,
  )

  snapshot_images = next(iter(evals.values()))["image"][:SNAPSHOT_COUNT]
  folders = members.folders(workdir)
  writers = [
    hooks_lib.MetricWriter(folder) if main else hooks_lib.NullWriter()
    for folder in folders
  ]
  schedule = steps.learning_rate_schedule(first)

  def snapshot(context):
    for folder, model_state in zip(folders, context.member_models()):
      save_snapshot(
        graphdef,
        model_state,
        snapshot_images,
        normalization,
        folder if main else None,
        context.step,
      )

  def evaluation(context):
    snapshot(context)
    results = [{} for _ in folders]
    for split, arrays in evals.items():
      for k, metrics in enumerate(
        evaluate(
          eval_step,
          context.state.model,
          arrays,
          normalization,
          first.eval_batch_size,
          data_placement,
        )
      ):
        results[k].update({f"{split}_{n}": v for n, v in metrics.items()})
    for k, (writer, member_results) in enumerate(zip(writers, results)):
      writer.write(context.step, member_results)
      prefix = f"member {k} " if members.population else ""
      log(
        f"{prefix}step {context.step}: "
        + ", ".join(
          f"{n} {v:.2%}" if n.endswith("error") else f"{n} {v:.4f}"
          for n, v in member_results.items()
        )
      )
    return results

  def learning_rates(at_step):
    scale = float(schedule(at_step)) / first.learning_rate
    return [c.learning_rate * scale for c in members.configs]

  checkpoint_hook = hooks_lib.Checkpoint(
    first.checkpoint_every,
    checkpoints,
    background=first.get("async_checkpoints", False),
  )
  loop_hooks = [
    *hooks,
    hooks_lib.LogMetrics(
      first.log_every, writers, learning_rates, first.batch_size, log=log
    ),
    checkpoint_hook,
    hooks_lib.Preemption(
      signals=(signal.SIGTERM, signal.SIGINT),
      agree_every=first.log_every if distributed.process_count() > 1 else 0,
    ),
    hooks_lib.Periodic(first.eval_every, evaluation),
  ]
  snapshot_every = first.get("snapshot_every", 0)
  if snapshot_every:
    loop_hooks.append(
      hooks_lib.Periodic(
        snapshot_every,
        lambda c: None if (c.step % first.eval_every == 0) else snapshot(c),
      )
    )
  try:
    if step == 0:  # the initial (identity) transformer: the GIF's frame 0
      snapshot(context)
    start = time.perf_counter()
    run_loop(
      context,
      step_fn,
      next_batch,
      loop_hooks,
      steps_per_dispatch=first.get("steps_per_dispatch", 1),
    )
    if context.stopping:
      log(
        f"{context.stop_signal}: saved a checkpoint at step "
        f"{context.step} and stopped."
      )
      stopped = {
        "interrupted_at_step": context.step,
        "signal": context.stop_signal,
      }
      return [dict(stopped) for _ in folders]
    jax.block_until_ready(context.state)
    train_seconds = time.perf_counter() - start
    if context.step not in checkpoints.all_steps():
      checkpoint_hook.save(context)
    results = evaluation(context)
  finally:
    close_all([*(w.close for w in writers), checkpoints.close])

  first_split = first.eval_splits[0]
  for folder, model_state, member_results in zip(
    folders, context.member_models(), results
  ):
    write_transformer_png(
      graphdef,
      model_state,
      evals[first_split],
      os.path.join(folder, "transformer.png") if main else None,
      normalization,
    )
    if main:
      with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"step": context.step, **member_results}, f, indent=2)
  for k, member_results in enumerate(results):
    member_results["train_seconds"] = train_seconds
    if members.population:
      member_results["params"] = context.member_models()[k]
  return results


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  hooks: Sequence[hooks_lib.Hook] = (),
  overwrite: bool = False,
) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

  Args:
    config: the run config (see ``configs/``).
    workdir: where checkpoints, metrics, TensorBoard events and results go.
      It is locked while the run lasts.
    hooks: extra :class:`stn_jax.hooks.Hook` objects, called after every
      step before the built-in ones (tests use them to crash a run).
    overwrite: if ``workdir`` holds a run of another config, delete it and
      start this one (without it, that is a
      :class:`stn_jax.workdir.WorkdirError`).

  Returns:
    the final evaluation metrics, e.g. ``{'test_error': 0.012, ...}``; or,
    when SIGTERM or SIGINT stopped the run (after saving a checkpoint),
    ``{'interrupted_at_step': step, 'signal': 'SIGTERM'}``.
  """
  results = fit(
    [config],
    workdir,
    hooks=hooks,
    overwrite=overwrite,
    log=lambda text: print(text, flush=True),
  )[0]
  if "interrupted_at_step" not in results and distributed.is_main():
    first_split = config.eval_splits[0]
    print(
      f"final {first_split} error: "
      f"{results[f'{first_split}_error']:.2%} (workdir {workdir})",
      flush=True,
    )
  results.pop("train_seconds", None)
  return results
