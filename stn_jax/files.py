"""Result files written whole or not at all.

A figure or report written straight to its path is left truncated when the
write fails (a full disk), and looks like a result afterwards.
:func:`written` writes to a temporary file beside it and renames it into
place only when the writing succeeded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def written(path: str) -> Iterator[str]:
  """Yields a temporary path beside ``path`` (its name ends like
  ``path``'s, so writers that pick a format by the extension still do)
  that replaces ``path`` when the block ends. If the block raises, the
  temporary file is removed, and an ``OSError`` that names no file (a
  failed ``write``) is raised again naming ``path``.

  Example::

    with written("out/figure.png") as temporary:
      image.save(temporary)
  """
  folder, name = os.path.split(path)
  temporary = os.path.join(folder, f".partial-{name}")
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException as error:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    if isinstance(error, OSError) and error.errno and not error.filename:
      raise type(error)(error.errno, error.strerror, path) from error
    raise
