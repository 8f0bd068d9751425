"""The training loop: :func:`fit` (one config, or a population) and
:func:`run_loop`, the step-and-hooks loop it drives.

:func:`train` reads like the flax examples' ``train_and_evaluate``: data,
models, the placed state and input, resume, hooks, the loop, the final
evaluation. Everything that differs between one run and a population is
asked of the placement (:mod:`stn_jax.train.placement`); the training
input comes from the config through :mod:`stn_jax.data.inputs`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from stn_jax import (
  checkpointing,
  config_schema,
  distributed,
  models,
  recipe,
  steps,
  xla_cpu,
)
from stn_jax import hooks as hooks_lib
from stn_jax import workdir as workdir_lib
from stn_jax.data import inputs
from stn_jax.models import convolution
from stn_jax.normalization import Normalization
from stn_jax.train import evaluation, hook_registry, outputs
from stn_jax.train import placement as placement_lib
from stn_jax.train.validation import validate_config


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
  configs = list(configs)
  for config in configs:
    validate_config(config)
  if not distributed.is_main():  # process 0 prints for the run
    log = lambda *_: None
  placement = placement_lib.make_placement(
    configs, workdir, population_method, member_dirs
  )
  with contextlib.ExitStack() as stack:
    # Only process 0 locks, checks and (with overwrite) clears the
    # workdir; a refusal there stops every process.
    def check():
      lock = stack.enter_context(workdir_lib.WorkdirLock(workdir))
      if lock.stale_owner:
        log(f"took over the lock of a run that is gone ({lock.stale_owner})")
      for config, folder in zip(configs, placement.folders):
        workdir_lib.check_config(folder, config, overwrite=overwrite)

    distributed.check_on_main("the workdir check", check)
    return train(placement, hooks, log)


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


def train(placement, hooks, log) -> list[dict]:
  """Trains ``placement``'s configs in its workdir (locked and checked by
  :func:`fit`); returns one results dict per member: the final metrics
  and ``train_seconds`` (a population's also its ``params``), or
  ``{'interrupted_at_step', 'signal'}`` after a stopping signal."""
  first = placement.configs[0]
  use_compilation_cache(config_schema.get(first, "compilation_cache_dir"))
  with distributed.main_first("building the datasets"):
    train_arrays, evals, in_shape = inputs.load_data(first)
  normalization = Normalization.from_config(first)
  graphdef, optimizer, states, num_params = _initial_states(placement, in_shape)
  multi_step = config_schema.get(first, "steps_per_dispatch") > 1
  on_device = inputs.batches_on_device(first)
  state = placement.place_state(states)
  gather = placement.make_input(
    train_arrays, normalization, on_device=on_device, multi_step=multi_step
  )
  # Written once the data, the models and the input pipelines accepted the
  # config (a batch larger than the split, a seed out of range): a refused
  # config leaves no config.json to refuse its corrected rerun.
  placement.write_run_files(in_shape)
  train_step = steps.make_train_step(
    graphdef,
    optimizer,
    population=placement.method,
    multi_step=multi_step,
    gather=gather,
    schedule=placement.learning_rate_schedule(),
    label_smoothing=float(config_schema.get(first, "label_smoothing")),
    ema_decay=float(config_schema.get(first, "ema_decay")),
    compiler_options=xla_cpu.step_compiler_options(first),
  )
  checkpoints = checkpointing.Checkpoints(
    placement.workdir, first.max_checkpoints
  )
  state, step = _resume(placement, checkpoints, state, log)
  log(_first_line(placement, num_params, on_device, multi_step))
  metrics = _empty_accumulator(graphdef, optimizer, states[0], in_shape, first)
  context = hooks_lib.LoopContext(
    workdir=placement.workdir,
    num_steps=first.num_steps,
    step=step,
    state=state,
    accumulator=placement.place_accumulator(metrics),
    population=placement.population,
    data_state=placement.data_state,
  )
  run_outputs = outputs.RunOutputs.for_run(placement, graphdef, evals)
  evaluator = evaluation.Evaluator.for_run(
    placement, graphdef, evals, run_outputs, log
  )
  built = hook_registry.build_hooks(
    hook_registry.RunParts.for_run(placement, checkpoints, evaluator, log)
  )
  try:
    if step == 0:  # the initial (identity) transformer: the GIF's frame 0
      run_outputs.snapshot(context)
    start = time.perf_counter()
    run_loop(
      context,
      placement.step_fn(train_step),
      placement.next_batch,
      [*hooks, *built.values()],
      steps_per_dispatch=config_schema.get(first, "steps_per_dispatch"),
    )
    if context.stopping:
      return _stopped(context, placement, log)
    jax.block_until_ready(context.state)
    train_seconds = time.perf_counter() - start
    if context.step not in checkpoints.all_steps():
      built["checkpoint"].save(context)
    results = evaluator(context)
  finally:
    close_all([*run_outputs.closers(), checkpoints.close])
  run_outputs.write_final(context, results, evals[first.eval_splits[0]])
  for member_results in results:
    member_results["train_seconds"] = train_seconds
  placement.add_params(results, context)
  return results


def _stopped(context, placement, log) -> list[dict]:
  """The results of a run a signal stopped (after its checkpoint)."""
  log(
    f"{context.stop_signal}: saved a checkpoint at step "
    f"{context.step} and stopped."
  )
  stopped = {"interrupted_at_step": context.step, "signal": context.stop_signal}
  return [dict(stopped) for _ in placement.folders]


def _initial_states(placement, in_shape):
  """(graphdef, optimizer, each member's step-0 state, parameter count):
  each member's model from its config and seed, and the optimiser the
  placement builds from it."""
  states = []
  for config in placement.configs:
    config = placement.optimizer_config(config)
    model = models.from_config(config, in_shape)
    optimizer = recipe.make_optimizer(config, nnx.state(model))
    graphdef, state = steps.init_state(
      model, optimizer, ema_decay=config_schema.get(config, "ema_decay")
    )
    states.append(state)
  return graphdef, optimizer, states, models.count_params(model)


def _resume(placement, checkpoints, state, log):
  """(state, step): the latest readable checkpoint's, placed, with the
  input streams moved to its position; else ``state`` at step 0."""
  restored = checkpoints.restore_latest(
    state.model, state.opt_state, average=state.average, move_aside=True
  )
  if restored is None:
    return state, 0
  step = int(restored.meta["step"])
  placement.restore_data(restored.meta["data_state"])
  state = jax.device_put(
    steps.TrainState(
      step=jnp.full(state.step.shape, step, jnp.int32),
      model=restored.model,
      opt_state=restored.opt_state,
      average=restored.average,
    ),
    placement.state_sharding,
  )
  log(f"resumed from step {step}")
  return state, step


def _first_line(placement, num_params, on_device, multi_step) -> str:
  """The run's first log line: model, data, parameters, devices, how the
  steps run."""
  first = placement.configs[0]
  members, split = placement.describe()
  processes = distributed.process_count()
  method = config_schema.get(first, "conv_weight_gradient")
  library = xla_cpu.step_library(first)
  ema_decay = config_schema.get(first, "ema_decay")
  return (
    f"{first.model} on {first.dataset}: {num_params:,} parameters{members}"
    f", {jax.device_count()} device(s)"
    + (f" in {processes} processes" if processes > 1 else "")
    + f"{split}, workdir {placement.workdir}"
    + (", training split on the device" if on_device else "")
    + (f", {first.steps_per_dispatch} steps per dispatch" if multi_step else "")
    + ", conv gradients "
    + convolution.resolve_weight_gradient(method)
    + (f", XLA CPU library {library}" if library else "")
    + (
      f", evaluating the parameters' moving average ({ema_decay})"
      if ema_decay
      else ""
    )
  )


def _empty_accumulator(graphdef, optimizer, state, in_shape, config) -> dict:
  """Zeroed sums of the step's metrics (their shapes from tracing a step
  on a batch of ``config.batch_size`` images of ``in_shape``)."""
  image_shape = (config.batch_size, *in_shape)
  batch_shape = {
    "image": jax.ShapeDtypeStruct(image_shape, jnp.float32),
    "label": jax.ShapeDtypeStruct(image_shape[:1], jnp.int32),
  }
  ema_decay = float(config_schema.get(config, "ema_decay"))
  metric_shapes = jax.eval_shape(
    lambda s, b: steps.train_step(
      s, b, graphdef=graphdef, optimizer=optimizer, ema_decay=ema_decay
    )[1],
    state,
    batch_shape,
  )
  return steps.empty_accumulator(metric_shapes)


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
