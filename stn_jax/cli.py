"""The shared shape of the command lines: absl flags on a private
``FlagValues``, clean errors (no traceback for bad input)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import flags


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

  A flag error prints the usage and returns 2; a ``ValueError``,
  ``FileNotFoundError`` or data error (``stn_jax.data.SourceError``: a
  missing source, a failed download, a damaged dataset) from ``main``
  prints one line and returns 1.
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
    return 2
  try:
    return int(main(positional) or 0)
  except (ValueError, FileNotFoundError, SourceError) as error:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 1
