"""The shared shape of the command lines: absl flags on a private
``FlagValues``, clean errors (no traceback for bad input)."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from absl import flags

# The exit statuses of the command lines (python -m stn_jax.main and
# python -m stn_jax.sweep), one map: done; a user's error or a failed point;
# a flag error; stopped by a signal (128 + its number: its checkpoint is
# saved, the same command resumes).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STATUS = {"SIGINT": 128 + 2, "SIGTERM": 128 + 15}


def exit_status(signal_name: str | None) -> int:
  """The exit status of a command whose run the signal ``signal_name``
  (``'SIGINT'``, ``'SIGTERM'``) stopped: :data:`EXIT_STATUS`'s, or
  :data:`EXIT_FAILED` for a stop without one of those signals."""
  return EXIT_STATUS.get(signal_name, EXIT_FAILED)


# What to do about a filesystem error, by errno.
WAYS_OUT = {
  errno.ENOSPC: "free space there (or choose a folder on another disk) and "
  "rerun the same command",
  errno.EDQUOT: "free space there (or choose a folder on another disk) and "
  "rerun the same command",
  errno.EROFS: "that filesystem is read-only: choose a writable folder",
  errno.EACCES: "it is not writable by you: fix its permissions or choose "
  "another folder",
  errno.EPERM: "it is not writable by you: fix its permissions or choose "
  "another folder",
  errno.ENOTDIR: "a part of that path is a file, not a folder: choose "
  "another path",
  errno.EEXIST: "a file is in the way where a folder is needed: move it or "
  "choose another path",
  errno.EISDIR: "it is a folder where a file is needed: choose another path",
  errno.ENOENT: "check the path",
}


class _DropOrbaxErrors(logging.Filter):
  """Drops the ERROR records that orbax logs from its background save
  threads (with their tracebacks) before the failure reaches the caller,
  which reports it itself (:class:`stn_jax.checkpointing.CheckpointError`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (from_orbax and record.levelno >= logging.ERROR)


def _is_closed_loop_callback(unraisable) -> bool:
  """Whether an unraisable exception (:func:`sys.unraisablehook`'s
  argument) is a callback that reached orbax's background event loop after
  it closed: after a failed save, TensorStore's threads finish their
  writes and call back into a loop that is gone."""
  error = unraisable.exc_value
  return isinstance(error, RuntimeError) and str(error) == (
    "Event loop is closed"
  )


def _drop_closed_loop_callbacks(previous):
  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  hook.stn_jax_quiet = True
  return hook


def quiet_orbax_errors() -> None:
  """At the command line: orbax's own error log lines (a checkpoint save
  that met a full disk logs about 100 lines from its background thread)
  are not printed, nor the "Event loop is closed" tracebacks its threads
  can leave behind as they finish (``Exception ignored in: None``, printed
  by :func:`sys.unraisablehook`); the command's one-line error says what
  happened. Other libraries' records, other unraisable exceptions, and
  orbax's warnings pass."""
  for handler_owner in (logging.getLogger("absl"), logging.getLogger()):
    if not any(isinstance(f, _DropOrbaxErrors) for f in handler_owner.filters):
      handler_owner.addFilter(_DropOrbaxErrors())
  if not getattr(sys.unraisablehook, "stn_jax_quiet", False):
    sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def is_full_disk(error: BaseException) -> bool:
  """Whether ``error`` reports a full disk, including orbax's and
  TensorStore's ``ValueError``s that carry it as ``RESOURCE_EXHAUSTED``
  or in their text rather than as an ``OSError``."""
  if isinstance(error, OSError) and error.errno:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  text = str(error)
  return any(
    words in text
    for words in (
      "RESOURCE_EXHAUSTED",  # orbax, TensorStore
      "No space left on device",
      "Not enough disk space",  # TFDS's check before a build (no errno)
    )
  )


def error_line(error: BaseException) -> str:
  """The one line a command prints for a user's error: the message of our
  own errors as it is, and for a filesystem error (``OSError`` with an
  errno, a full disk however a library reports it, a damaged JSON file)
  the file, what is wrong, and the way out."""
  if isinstance(error, OSError) and error.errno in WAYS_OUT:
    where = error.filename or "a file"
    if error.filename2:
      where += f" -> {error.filename2}"
    return f"{where}: {error.strerror}; {WAYS_OUT[error.errno]}."
  if is_full_disk(error):
    return (
      f"no space left on device ({str(error).splitlines()[0][:200]}); "
      f"{WAYS_OUT[errno.ENOSPC]}."
    )
  if "Failed loading config file" in str(error):  # ml_collections, a bad path
    detail = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"--config: cannot load the config file: {detail[-1]}"
  if isinstance(error, json.JSONDecodeError):
    return (
      f"a JSON file is damaged ({error}); delete or restore it (see the "
      "command's --help for what it holds)."
    )
  return str(error)


def run(
  main: Callable[[list[str]], int | None],
  flag_values: flags.FlagValues,
  argv: Sequence[str] | None = None,
  *,
  prog: str,
  doc: str,
) -> int:
  """Parses ``argv`` (default ``sys.argv[1:]``) into ``flag_values`` and
  calls ``main(positional arguments)``; returns the exit status.

  A flag error prints the usage and returns :data:`EXIT_USAGE` (2); a ``ValueError``,
  ``OSError`` (a missing, unwritable or full place: :func:`error_line`)
  or data error (``stn_jax.data.SourceError``: a missing source, a failed
  download, a damaged dataset) from ``main`` prints one line and returns
  :data:`EXIT_FAILED` (1); Ctrl-C outside a training loop (whose own
  handler saves and stops) prints one line and returns 130.
  """
  from stn_jax.data.sources import SourceError  # light: numpy only

  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv:
    print(doc.strip() + "\n\nFlags:\n" + flag_values.main_module_help())
    return 0
  try:
    positional = flag_values([prog, *argv])[1:]
  except flags.Error as error:
    print(f"{prog}: error: {error}\n\n{doc.strip()}", file=sys.stderr)
    return EXIT_USAGE
  try:
    return int(main(positional) or EXIT_OK)
  except (ValueError, OSError, SourceError) as error:
    print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
    return EXIT_FAILED
  except KeyboardInterrupt:  # Ctrl-C outside a training loop
    print(
      f"{prog}: stopped by SIGINT (Ctrl-C); rerun the same command to "
      "continue.",
      file=sys.stderr,
    )
    return EXIT_STATUS["SIGINT"]
