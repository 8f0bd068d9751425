"""Periodic actions of the training loop: logging, checkpoints, evaluation,
snapshots, preemption.

The loop (:func:`stn_jax.train.loop.run_loop`) calls every hook after every step
with a :class:`LoopContext`; a hook does its work on its own steps (as clu's
``periodic_actions``) and costs nothing in between: in particular nothing is
fetched from the device between log steps. Single runs and populations use
the same hooks; a population's arrays carry a leading member axis, and
per-member outputs go to per-member writers.

Tests inject their own hooks (e.g. :class:`SignalAtStep`) through
``train_and_evaluate(..., hooks=...)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass
class LoopContext:
  """What the loop and its hooks share.

  Attributes:
    workdir: the run's directory.
    num_steps: the last step.
    step: steps taken (a host int: reading it never syncs the device).
    state: the :class:`stn_jax.steps.TrainState` (stacked for populations).
    accumulator: on-device metric sums since the last log step.
    population: True when arrays have a leading member axis.
    data_state: returns the input position to checkpoint (JSON).
    stop_requested: set (e.g. by a signal handler) to stop after the step.
    stopping: set by the loop when it acts on ``stop_requested``.
    stop_signal: the name of the signal that asked to stop, if any.
  """

  workdir: str
  num_steps: int
  step: int
  state: Any
  accumulator: dict
  population: bool
  data_state: Callable[[], Any]
  stop_requested: bool = False
  stopping: bool = False
  stop_signal: str = ""

  def member_models(self) -> list:
    """Each member's evaluated model state (one for a single run): its
    moving average where the run keeps one, else its parameters
    (:func:`stn_jax.steps.evaluated_model`)."""
    from stn_jax import steps  # the step machinery; hooks stay light

    model = steps.evaluated_model(self.state)
    if not self.population:
      return [model]
    count = jax.tree.leaves(model)[0].shape[0]
    return [jax.tree.map(lambda x, k=k: x[k], model) for k in range(count)]

  def check_finite(self) -> None:
    """Raises :class:`TrainingDiverged` if a loss since the last log step
    was not finite (one small device-to-host fetch)."""
    first = np.atleast_1d(
      np.asarray(jax.device_get(self.accumulator["first_nonfinite_step"]))
    )
    _raise_if_diverged(first, self.workdir)


def _raise_if_diverged(first_nonfinite_step: np.ndarray, workdir: str):
  bad = np.flatnonzero(first_nonfinite_step)
  if bad.size:
    which = (
      ""
      if first_nonfinite_step.size == 1
      else f" of member(s) {', '.join(map(str, bad))}"
    )
    saved = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      name.isdigit()
      for name in os.listdir(os.path.join(workdir, "checkpoints"))
    )
    kept = (
      f"The last good checkpoint in {workdir}/checkpoints is kept"
      if saved
      else "No checkpoint was saved before it (the rerun starts from step 0)"
    )
    raise TrainingDiverged(
      f"loss{which} is nan or inf at step "
      f"{int(first_nonfinite_step[bad[0]])}; stopped. {kept} (try a lower "
      "learning rate, a smaller localisation_lr_multiplier or "
      "grad_clip_norm)."
    )


class Hook:
  """Called by the loop: ``begin`` once, ``after_step`` after every
  dispatch of steps (every step when ``steps_per_dispatch`` is 1), ``stop``
  once when a stop was requested (after that dispatch's ``after_step``),
  ``close`` once at the end (also on errors).

  A hook that acts at given steps says which with :meth:`next_step`; the
  loop ends a dispatch there, so ``after_step`` sees ``context.step`` equal
  to it whatever ``steps_per_dispatch`` is.
  """

  def next_step(self, step: int) -> int | None:
    """The first step after ``step`` at which this hook acts (None: it has
    no fixed steps)."""
    every = getattr(self, "every_steps", 0)
    return (step // every + 1) * every if every else None

  def begin(self, context: LoopContext) -> None:
    pass

  def after_step(self, context: LoopContext) -> None:
    pass

  def stop(self, context: LoopContext) -> None:
    pass

  def close(self, context: LoopContext) -> None:
    pass


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch when it is installed (about 3 s) only to
  recognise torch tensors, which we never write (our scalars are floats).
  A ``None`` in ``sys.modules`` makes that ``import torch`` fail, which
  tensorboardX handles; torch itself stays importable afterwards.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def repair_jsonl(path: str) -> int:
  """Cuts a partial last line (a run killed mid-write, a full disk) off the
  append-only JSON-lines file ``path``, so that the next record starts on
  a line of its own; returns the bytes removed (0: nothing to repair)."""
  if not os.path.isfile(path):
    return 0
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return 0
    f.seek(max(0, size - (1 << 20)))
    tail = f.read()
    keep = size - len(tail) + tail.rfind(b"\n") + 1
    f.truncate(keep)
  warnings.warn(
    f"{path}: removed a partial last line ({size - keep} bytes, a record "
    "cut short when the run was stopped) before appending.",
    stacklevel=2,
  )
  return size - keep


class MetricWriter:
  """``metrics.jsonl`` and TensorBoard events (tensorboardX) in a folder."""

  def __init__(self, folder: str):
    SummaryWriter = _summary_writer_class()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "metrics.jsonl")
    repair_jsonl(path)
    # Open for the whole run (appended to on resume); closed by close().
    self._jsonl_path = path
    self._jsonl = open(path, "a")  # noqa: SIM115
    self._tensorboard = SummaryWriter(os.path.join(folder, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    try:
      self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self._jsonl.flush()
    except OSError as error:  # a failed write names no file: name it
      raise type(error)(
        error.errno, error.strerror, self._jsonl_path
      ) from error
    for key, value in metrics.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


class NullWriter:
  """A :class:`MetricWriter` that writes nothing (processes other than the
  first of a multi-process run)."""

  def write(self, step: int, metrics: dict[str, float]) -> None:
    pass

  def close(self) -> None:
    pass


def format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


class LogMetrics(Hook):
  """Every ``every_steps`` (and at the last step): fetches the accumulated
  metrics, stops on a non-finite loss, writes each member's means to its
  writer and prints a line with the ETA.

  Args:
    every_steps: the cadence.
    writers: one :class:`MetricWriter` per member.
    learning_rates: ``step -> [rate per member]``.
    batch_size: examples per step and member (for examples/s).
    log: where the console line goes.
  """

  def __init__(
    self,
    every_steps: int,
    writers: list[MetricWriter],
    learning_rates: Callable[[int], list[float]],
    batch_size: int,
    log: Callable[[str], None] = print,
  ):
    self.every_steps = every_steps
    self.writers = writers
    self.learning_rates = learning_rates
    self.batch_size = batch_size
    self.log = log

  def begin(self, context):
    self._start_step = context.step
    self._start = self._interval_start = time.perf_counter()

  def after_step(self, context):
    step = context.step
    if step % self.every_steps and step != context.num_steps:
      return
    fetched = jax.device_get(context.accumulator)
    context.accumulator = jax.tree.map(
      lambda host, old: jax.device_put(np.zeros_like(host), old.sharding),
      fetched,
      context.accumulator,
    )
    _raise_if_diverged(
      np.atleast_1d(fetched["first_nonfinite_step"]), context.workdir
    )
    count = int(np.max(fetched["count"]))
    now = time.perf_counter()
    rate = count * self.batch_size / (now - self._interval_start)
    self._interval_start = now
    rates = self.learning_rates(step - 1)
    means = {k: np.atleast_1d(v) / count for k, v in fetched["sums"].items()}
    for k, writer in enumerate(self.writers):
      metrics = {
        f"train_{name}": float(value[k]) for name, value in means.items()
      }
      metrics["learning_rate"] = rates[k]
      metrics["examples_per_second"] = rate
      writer.write(step, metrics)
    steps_per_second = (step - self._start_step) / (now - self._start)
    eta = format_eta((context.num_steps - step) / steps_per_second)
    loss = " ".join(f"{x:.4f}" for x in means["loss"])
    error = " ".join(f"{x:.2%}" for x in means["error"])
    self.log(
      f"step {step}/{context.num_steps} loss {loss} error {error} "
      f"lr {rates[0]:.2e} {rate:.0f} ex/s ETA {eta}"
    )


class Checkpoint(Hook):
  """Saves every ``every_steps`` and when the run stops early; never saves
  a state that followed a non-finite loss.

  Args:
    every_steps: the cadence.
    checkpoints: a :class:`stn_jax.checkpointing.Checkpoints`.
    background: periodic saves return once the arrays are off the device
      and are written while training goes on (a stop waits for its save).
  """

  def __init__(self, every_steps: int, checkpoints, *, background=True):
    self.every_steps = every_steps
    self.checkpoints = checkpoints
    self.background = background

  def save(self, context: LoopContext, *, wait: bool = True) -> None:
    context.check_finite()
    self.checkpoints.save(
      context.step, context.state, context.data_state(), wait=wait
    )
    self._saved_step = context.step

  def after_step(self, context):
    if context.step % self.every_steps == 0:
      # Periodic saves are written in the background (finished by the
      # next save or at the end of the run).
      self.save(context, wait=not self.background)

  def stop(self, context):
    if getattr(self, "_saved_step", None) != context.step:
      self.save(context)
    self.checkpoints.wait()


class Preemption(Hook):
  """Turns ``signals`` (default SIGTERM) into a stop after the current step
  (the :class:`Checkpoint` hook saves it). A signal that arrives after the
  last step is delivered again to the previous handler when the loop ends,
  not swallowed. One that came before the loop began (while the run built
  its data or compiled) and is held by a sweep's
  :class:`stn_jax.sweep.StopOnSignal` stops the run after its first step:
  it does not wait for the run's end.

  With ``agree_every`` > 0 (multi-process runs) a signal is acted on only
  at multiples of ``agree_every``, where all processes compare notes
  (:func:`stn_jax.distributed.max_over_processes`): a signal to any one of
  them stops all of them after the same step, and none is left waiting in
  a collective. Every process must run the hook with the same cadence;
  the last step is agreed too, and a signal after it lets the run finish.
  """

  def __init__(self, signals=(signal.SIGTERM,), agree_every: int = 0):
    self.signals = tuple(signals)
    self.agree_every = agree_every

  def next_step(self, step):
    every = self.agree_every
    return (step // every + 1) * every if every else None

  def _agreeing(self, context) -> bool:
    return bool(self.agree_every) and (
      context.step % self.agree_every == 0 or context.step == context.num_steps
    )

  def begin(self, context):
    self._previous = {}
    self._received = 0

    def handler(number, _):
      if self.agree_every:
        self._received = number  # acted on at the next agreed step
        return
      context.stop_requested = True
      context.stop_signal = signal.Signals(number).name

    from stn_jax.sweep import signals as held

    for number in self.signals:
      self._previous[number] = signal.getsignal(number)
      signal.signal(number, handler)
    for number in self.signals:  # came during the run's start
      name = held.pending(self._previous[number])
      if name and signal.Signals[name] in self.signals:
        handler(signal.Signals[name], None)
        break

  def after_step(self, context):
    if not self._agreeing(context):
      return
    from stn_jax import distributed

    number = distributed.max_over_processes(self._received)
    if number:
      context.stop_requested = True
      context.stop_signal = signal.Signals(number).name

  def close(self, context):
    for number, previous in self._previous.items():
      signal.signal(number, previous)
    # (With agree_every, a signal after the last step's agreement is not
    # delivered again: every process finishes the run and exits normally,
    # rather than one dying while the others evaluate.)
    if context.stop_requested and not context.stopping:
      signal.raise_signal(signal.Signals[context.stop_signal])


class Periodic(Hook):
  """Calls ``action(context)`` every ``every_steps`` steps before the last
  (the loop's caller handles the last step itself)."""

  def __init__(self, every_steps: int, action: Callable[[LoopContext], Any]):
    self.every_steps = every_steps
    self.action = action

  def after_step(self, context):
    step = context.step
    if (
      self.every_steps
      and step % self.every_steps == 0
      and step < context.num_steps
    ):
      self.action(context)


class SignalAtStep(Hook):
  """Sends ``signal_number`` to this process right after ``step`` (for
  crash and preemption tests: SIGKILL acts as ``kill -9``)."""

  def __init__(self, step: int, signal_number: int):
    self.step = step
    self.signal_number = signal_number

  def next_step(self, step):
    return self.step if step < self.step else None

  def after_step(self, context):
    if context.step == self.step:
      os.kill(os.getpid(), self.signal_number)
