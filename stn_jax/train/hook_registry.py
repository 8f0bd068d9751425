"""The loop's hooks by name: one registry, the defaults every run gets, and
those a config switches on.

A hook kind is one entry: ``@register_hook('name')`` on a factory
``factory(run: RunParts) -> Hook | None`` (None: not needed by this
config). :data:`DEFAULT_HOOKS` names the hooks every run gets, in the order
the loop calls them; ``config.extra_hooks`` lists more registered names
(after the defaults). Hooks that need Python objects (tests' crash hooks)
are still passed as ``train_and_evaluate(..., hooks=[...])`` and run first.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

from stn_jax import config_schema, distributed, recipe
from stn_jax import hooks as hooks_lib


@dataclasses.dataclass
class RunParts:
  """What hook factories may use.

  Attributes:
    config: the run's config (a population's first member's: the keys the
      hooks read are shared).
    configs: every member's config.
    checkpoints: the run's :class:`stn_jax.checkpointing.Checkpoints`.
    writers: one metric writer per member.
    evaluate: ``evaluate(context)``: the run's evaluation (with snapshot).
    snapshot: ``snapshot(context)``: the transformers' outputs for the GIF.
    log: prints a line (process 0's).
  """

  config: Any
  configs: list
  checkpoints: Any
  writers: list
  evaluate: Callable[[hooks_lib.LoopContext], Any]
  snapshot: Callable[[hooks_lib.LoopContext], None]
  log: Callable[[str], None]

  @classmethod
  def for_run(cls, placement, checkpoints, evaluator, log) -> RunParts:
    """The parts of ``placement``'s run; the writers and snapshots are
    ``evaluator.outputs``'."""
    return cls(
      placement.configs[0],
      placement.configs,
      checkpoints,
      evaluator.outputs.writers,
      evaluator,
      evaluator.outputs.snapshot,
      log,
    )


HOOKS: dict[str, Callable[[RunParts], hooks_lib.Hook | None]] = {}
"""Every registered hook factory by name."""


def register_hook(name: str):
  """Decorator: registers ``factory(run: RunParts) -> Hook | None`` as
  ``name`` (for :data:`DEFAULT_HOOKS` and ``config.extra_hooks``).

  Raises:
    ValueError: ``name`` is registered already.
  """

  def register(factory):
    if name in HOOKS:
      raise ValueError(f"hook {name!r} is registered already.")
    HOOKS[name] = factory
    return factory

  return register


@register_hook("log_metrics")
def _log_metrics(run: RunParts):
  first = run.config
  schedule = recipe.learning_rate_schedule(first)

  def learning_rates(at_step):
    scale = float(schedule(at_step)) / first.learning_rate
    return [c.learning_rate * scale for c in run.configs]

  return hooks_lib.LogMetrics(
    first.log_every, run.writers, learning_rates, first.batch_size, log=run.log
  )


@register_hook("checkpoint")
def _checkpoint(run: RunParts):
  return hooks_lib.Checkpoint(
    run.config.checkpoint_every,
    run.checkpoints,
    background=config_schema.get(run.config, "async_checkpoints"),
  )


@register_hook("preemption")
def _preemption(run: RunParts):
  multi_process = distributed.process_count() > 1
  return hooks_lib.Preemption(
    signals=(signal.SIGTERM, signal.SIGINT),
    agree_every=run.config.log_every if multi_process else 0,
  )


@register_hook("evaluation")
def _evaluation(run: RunParts):
  return hooks_lib.Periodic(run.config.eval_every, run.evaluate)


@register_hook("snapshots")
def _snapshots(run: RunParts):
  every = config_schema.get(run.config, "snapshot_every")
  if not every:
    return None  # only at evaluations
  eval_every = run.config.eval_every
  return hooks_lib.Periodic(
    every, lambda c: None if c.step % eval_every == 0 else run.snapshot(c)
  )


DEFAULT_HOOKS = (
  "log_metrics",
  "checkpoint",
  "preemption",
  "evaluation",
  "snapshots",
)
"""The hooks every run gets, in the order the loop calls them."""


def build_hooks(run: RunParts, names=None) -> dict[str, hooks_lib.Hook]:
  """``{name: hook}`` for :data:`DEFAULT_HOOKS` and then ``names`` (default
  ``config.extra_hooks``), in that order; factories that return None are
  left out.

  Raises:
    ValueError: a name that is not registered, or one listed twice.
  """
  if names is None:
    names = tuple(config_schema.get(run.config, "extra_hooks"))
  check_names(names)
  built = {}
  for name in (*DEFAULT_HOOKS, *names):
    hook = HOOKS[name](run)
    if hook is not None:
      built[name] = hook
  return built


def check_names(names) -> None:
  """Refuses ``config.extra_hooks`` names that are not registered, are
  defaults, or repeat.

  Raises:
    ValueError: naming the key, the bad name and the registered ones.
  """
  extra = sorted(set(HOOKS) - set(DEFAULT_HOOKS))
  for k, name in enumerate(names):
    if name not in HOOKS or name in DEFAULT_HOOKS or name in names[:k]:
      raise ValueError(
        "config.extra_hooks must list registered hooks beyond the defaults "
        f"({', '.join(DEFAULT_HOOKS)}), each once; registered: "
        f"{', '.join(extra) or 'none'}; got {tuple(names)!r}."
      )
