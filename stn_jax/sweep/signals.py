"""SIGTERM and Ctrl-C (SIGINT) outside a run's training loop: noted, acted
on at the next safe place, and never swallowed.

While a point trains, its loop's :class:`stn_jax.hooks.Preemption` hook
owns the signals (it saves a checkpoint and stops). Around that, a sweep
holds a :class:`StopOnSignal`: a signal between points (or during a
point's final evaluation) stops the sweep before its next point. A signal
that nothing acted on, because it came after the sweep's last point, is
delivered again to the handler that was there before, when the sweep ends.
So a program that runs several sweeps in a row holds its own
:class:`StopOnSignal` around them and asks :func:`pending` before each
(the table scripts do, through ``experiments/_tables.py``); with Python's
default handlers the process stops as it would have without the sweep.

A second signal while the first is still pending is not held: it goes to
the previous handler at once (Ctrl-C twice stops a program that is busy
between points, e.g. evaluating).
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
  """Context manager: SIGTERM and SIGINT set :attr:`signal` (the name,
  e.g. ``'SIGTERM'``) instead of acting.

  The holder checks :attr:`signal` where it can stop safely, and calls
  :meth:`acted` once it has stopped because of it. On exit, a signal that
  was not acted on goes to the previous handler (restored first), so an
  enclosing :class:`StopOnSignal`, or Python's default, sees it. Outside
  the main thread (where handlers cannot be set) it does nothing. Entered
  inside another one that holds a signal not yet acted on, it starts with
  that signal.
  """

  def __enter__(self) -> StopOnSignal:
    self.signal: str | None = None
    self._acted = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for number in SIGNALS:
        self._previous[number] = signal.signal(number, self._handler)
      self.signal = pending(self._previous[signal.SIGTERM])
    return self

  def _handler(self, number, frame) -> None:
    if self.signal and not self._acted:  # the second: not held
      previous = self._previous[number]
      signal.signal(number, previous)
      if callable(previous):
        previous(number, frame)
      else:
        signal.raise_signal(number)
      return
    self.signal = signal.Signals(number).name
    self._acted = False

  def acted(self) -> None:
    """Says that the holder stopped because of :attr:`signal` (it is then
    not delivered again on exit)."""
    self._acted = True

  def reinstall(self) -> None:
    """Takes the signals back from a library that set its own handlers
    (``ray.init`` does)."""
    for number in self._previous:
      signal.signal(number, self._handler)

  def __exit__(self, exc_type, *_) -> None:
    for number, previous in self._previous.items():
      signal.signal(number, previous)
    # (An enclosing StopOnSignal that holds it already knows.)
    held_outside = self._previous and pending(self._previous[signal.SIGTERM])
    if self.signal and not self._acted and not held_outside and not exc_type:
      signal.raise_signal(signal.Signals[self.signal])


def pending(handler=None) -> str | None:
  """The signal (``'SIGTERM'`` or ``'SIGINT'``) held and not yet acted on
  by the :class:`StopOnSignal` whose handler is ``handler`` (default: the
  one installed now for SIGTERM); None if there is none."""
  if handler is None:
    if threading.current_thread() is not threading.main_thread():
      return None
    handler = signal.getsignal(signal.SIGTERM)
  holder = getattr(handler, "__self__", None)
  if isinstance(holder, StopOnSignal) and not holder._acted:
    return holder.signal
  return None
