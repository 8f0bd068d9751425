"""``python -m stn_jax.main`` with a signal sent to itself after a step.

  python tests/train_with_signal.py --signal_at_step=6 --signal=SIGKILL \\
      --config=... --workdir=...

Crash and preemption tests inject :class:`stn_jax.hooks.SignalAtStep` this
way; production code reads no test switches.
"""

import signal
import sys

from absl import flags

from stn_jax import hooks, main

_STEP = flags.DEFINE_integer(
  "signal_at_step", 0, "Step after which the signal is sent (0: never)."
)
_SIGNAL = flags.DEFINE_enum(
  "signal", "SIGKILL", ["SIGKILL", "SIGTERM", "SIGINT"], "The signal."
)


class _Deferred(hooks.Hook):
  """The SignalAtStep of the parsed flags (flags are read after parsing)."""

  def next_step(self, step):  # a dispatch of several steps ends there
    return _STEP.value if step < _STEP.value else None

  def after_step(self, context):
    if _STEP.value and context.step == _STEP.value:
      hooks.SignalAtStep(_STEP.value, signal.Signals[_SIGNAL.value]).after_step(
        context
      )


if __name__ == "__main__":
  sys.exit(main.main(hooks=[_Deferred()]))
