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

Modules:

- :mod:`stn_jax.train.loop`: :func:`train_and_evaluate`, :func:`fit` and
  :func:`run_loop`;
- :mod:`stn_jax.train.placement`: :class:`SingleRun` / :class:`Population`,
  everything that differs between one run and K members (mesh, placement,
  input, member folders);
- :mod:`stn_jax.train.evaluation`: :func:`evaluate` over whole splits;
- :mod:`stn_jax.train.outputs`: snapshots, ``transformer.png``,
  ``results.json``;
- :mod:`stn_jax.train.hook_registry`: the hooks by name (defaults and
  ``config.extra_hooks``);
- :mod:`stn_jax.train.validation`: :func:`validate_config`.

The training input (datasets, preprocessing) comes from the config through
:mod:`stn_jax.data.inputs`; the names below that come from there are
re-exported for the code that used them from here.
"""

from stn_jax.data.inputs import (
  batches_on_device,
  device_preprocessing,
  load_data,
  preprocessing,
  train_dataset,
  train_split,
)
from stn_jax.hooks import TrainingDiverged
from stn_jax.recipe import OPTIMIZERS
from stn_jax.train.evaluation import evaluate
from stn_jax.train.hook_registry import DEFAULT_HOOKS, HOOKS, register_hook
from stn_jax.train.loop import (
  close_all,
  dispatch_length,
  fit,
  run_loop,
  train_and_evaluate,
  use_compilation_cache,
)
from stn_jax.train.outputs import (
  SNAPSHOT_COUNT,
  save_snapshot,
  transformer_outputs,
  write_transformer_png,
)
from stn_jax.train.placement import Population, SingleRun, population_mesh
from stn_jax.train.validation import validate_config

__all__ = [
  "DEFAULT_HOOKS",
  "HOOKS",
  "OPTIMIZERS",
  "SNAPSHOT_COUNT",
  "Population",
  "SingleRun",
  "TrainingDiverged",
  "batches_on_device",
  "close_all",
  "device_preprocessing",
  "dispatch_length",
  "evaluate",
  "fit",
  "load_data",
  "population_mesh",
  "preprocessing",
  "register_hook",
  "run_loop",
  "save_snapshot",
  "train_and_evaluate",
  "train_dataset",
  "train_split",
  "transformer_outputs",
  "use_compilation_cache",
  "validate_config",
  "write_transformer_png",
]
