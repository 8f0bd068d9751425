"""Downloading source files: verified, atomic, resumable.

Only used when a source is in none of the searched directories (see
:func:`stn_jax.data.sources.search_dirs`). Files go to the download cache:

- ``$STN_DATA_DIR`` when it is set (it is also the data directory), else
- ``$XDG_CACHE_HOME/stn_jax/data``, else ``~/.cache/stn_jax/data``,

in the data directory's layout (``mnist/<name>``, ``gtsrb/...``), so a
cache is also a valid data directory.

A file is fetched from ``<base>/<family>/<name>`` of a mirror
(``$STN_DATA_MIRROR`` or the ``data_mirror`` config value: a mirror holds
the canonical file names under ``mnist/`` and ``gtsrb/``; any URL urllib
opens, e.g. ``https://host/stn`` or ``file:///mnt/mirror``) or, without a
mirror, from the family's default base URL (:data:`DEFAULT_BASE_URLS`).

Every download goes to ``.<name>.part`` in the destination folder, is
verified, then renamed onto ``<name>`` with ``os.replace``: an interrupted
or corrupt download never appears under the real name. A ``.part`` left by
an interrupted download is resumed with an HTTP ``Range`` request on the
next attempt (or restarted from zero when the server ignores ``Range``); a
file that fails verification is deleted. ``$STN_DATA_OFFLINE=1`` disables
downloads altogether.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

CACHE_ENV = "STN_DATA_DIR"
MIRROR_ENV = "STN_DATA_MIRROR"
OFFLINE_ENV = "STN_DATA_OFFLINE"

# torchvision's MNIST mirror (torchvision/datasets/mnist.py, `mirrors`), and
# the official GTSRB archive (benchmark.ini.rub.de links to it; also
# torchvision/datasets/gtsrb.py).
DEFAULT_BASE_URLS = {
  "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
  "gtsrb": "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/",
}

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
  """A download failed: unreachable, HTTP error, cut short or corrupt."""


class CutShortError(DownloadError):
  """The connection dropped mid-file; the ``.part`` file is kept."""


def cache_dir() -> pathlib.Path:
  """Where downloads go: ``$STN_DATA_DIR``, else
  ``$XDG_CACHE_HOME/stn_jax/data``, else ``~/.cache/stn_jax/data``."""
  return cache_dir_from(os.environ)


def cache_dir_from(environ) -> pathlib.Path:
  """:func:`cache_dir` for the environment mapping ``environ``."""
  if environ.get(CACHE_ENV):
    return pathlib.Path(environ[CACHE_ENV]).expanduser()
  xdg = environ.get("XDG_CACHE_HOME")
  base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
  return base.expanduser() / "stn_jax" / "data"


def offline() -> bool:
  """Whether ``$STN_DATA_OFFLINE`` (any value but '', 0, false) disables
  downloads."""
  return os.environ.get(OFFLINE_ENV, "").lower() not in ("", "0", "false")


MIRROR_SCHEMES = ("http", "https", "file", "ftp")


def source_url(family: str, name: str, *, mirror: str | None = None) -> str:
  """The URL of ``name`` (a canonical file name) of ``family``
  (``'mnist'`` or ``'gtsrb'``): ``<mirror>/<family>/<name>`` with a mirror
  (argument, else ``$STN_DATA_MIRROR``), else the family's default."""
  mirror = mirror or os.environ.get(MIRROR_ENV)
  if mirror:
    if urllib.parse.urlsplit(mirror).scheme not in MIRROR_SCHEMES:
      raise ValueError(
        f"data mirror {mirror!r} (from --data_mirror, config.data_mirror or "
        f"${MIRROR_ENV}) must be a URL of one of the forms "
        "https://host/path, http://host/path or file:///folder, under "
        "which <family>/<file> is found."
      )
    return f"{mirror.rstrip('/')}/{family}/{name}"
  return DEFAULT_BASE_URLS[family] + name


@contextlib.contextmanager
def file_lock(path: os.PathLike) -> Iterator[None]:
  """An exclusive ``fcntl.flock`` on ``path`` (created if needed), held for
  the ``with`` block; other processes taking it wait."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class _Progress:
  """A progress bar on stderr (tqdm when installed, else a plain line)."""

  def __init__(self, name: str, total: int | None, initial: int):
    try:
      from tqdm import tqdm

      self._bar = tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        desc=name,
        file=sys.stderr,
        mininterval=0.5,
      )
    except ImportError:
      self._bar = None
      self._name, self._total, self._done = name, total, initial
      self._last = -1

  def update(self, count: int) -> None:
    if self._bar is not None:
      self._bar.update(count)
      return
    self._done += count
    percent = int(100 * self._done / self._total) if self._total else -1
    if percent != self._last:
      self._last = percent
      shown = f"{percent}%" if percent >= 0 else f"{self._done} B"
      print(f"\r{self._name}: {shown}", end="", file=sys.stderr)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    else:
      print(file=sys.stderr)


def _open(url: str, offset: int, timeout: float):
  request = urllib.request.Request(url)
  if offset:
    request.add_header("Range", f"bytes={offset}-")
  try:
    return urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as error:
    if error.code == 416 and offset:  # the .part is already whole (or bad)
      return None
    raise DownloadError(
      f"Download of {url} failed: HTTP {error.code} {error.reason}."
    ) from error
  except (urllib.error.URLError, OSError) as error:
    reason = getattr(error, "reason", error)
    raise DownloadError(f"Cannot reach {url}: {reason}.") from error


def _fetch_once(url: str, part: pathlib.Path, timeout: float, progress: bool):
  """Appends the rest of ``url`` to ``part`` (resuming from its size)."""
  offset = part.stat().st_size if part.exists() else 0
  response = _open(url, offset, timeout)
  if response is None:  # 416: start again from zero
    part.unlink()
    offset = 0
    response = _open(url, 0, timeout)
  with response:
    status = getattr(response, "status", None)
    if offset and status != 206:  # the server ignored Range: restart
      offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    bar = _Progress(part.name[1:-5], total, offset) if progress else None
    received = offset
    try:
      with open(part, "ab" if offset else "wb") as f:
        while True:
          try:
            block = response.read(_CHUNK)
          except (http.client.HTTPException, OSError) as error:
            raise CutShortError(
              f"Download of {url} was cut short after {received} of "
              f"{total if total is not None else '?'} bytes ({error!r}); "
              f"the partial file {part} is kept and the next attempt "
              "resumes it."
            ) from error
          if not block:
            break
          f.write(block)
          received += len(block)
          if bar:
            bar.update(len(block))
    finally:
      if bar:
        bar.close()
  if total is not None and received < total:
    raise CutShortError(
      f"Download of {url} was cut short after {received} of {total} "
      f"bytes; the partial file {part} is kept and the next attempt "
      "resumes it."
    )


def download(
  url: str,
  destination: os.PathLike,
  *,
  verify: Callable[[pathlib.Path], None] | None = None,
  attempts: int = 3,
  timeout: float = 60.0,
  progress: bool = True,
) -> pathlib.Path:
  """Downloads ``url`` to ``destination`` atomically.

  Args:
    url: what to fetch (http, https or file URL).
    destination: the final path; its folder is created. Nothing is ever
      written under this name until the whole file is verified.
    verify: called with the downloaded temporary file; raises (any
      exception, e.g. ``DownloadError``) when the content is wrong, after
      which the temporary file is deleted.
    attempts: tries when the connection drops mid-file; each resumes the
      partial file with an HTTP ``Range`` request.
    timeout: seconds of socket inactivity before an attempt fails.
    progress: show a progress bar on stderr.

  Returns:
    ``destination``.

  Raises:
    DownloadError: unreachable, an HTTP error (the message gives the URL and
      status), the connection dropped on every attempt (the ``.part`` file
      is kept for the next call), or ``verify`` failed.
  """
  if attempts < 1:
    raise ValueError(f"attempts must be >= 1; got {attempts}.")
  destination = pathlib.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  part = destination.parent / f".{destination.name}.part"
  lock = destination.parent / f".{destination.name}.lock"
  with file_lock(lock):
    if destination.exists():  # another process finished it meanwhile
      return destination
    for attempt in range(attempts):
      try:
        _fetch_once(url, part, timeout, progress)
        break
      except CutShortError:
        if attempt == attempts - 1:
          raise
    try:
      if verify is not None:
        verify(part)
    except BaseException:
      part.unlink(missing_ok=True)
      raise
    os.replace(part, destination)
  return destination
