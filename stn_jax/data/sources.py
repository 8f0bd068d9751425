"""Source files: where they are, reading them, verifying them.

A source file is looked for in the data directory (:func:`resolve_data_dir`:
the argument, ``$STN_DATA_DIR``, then ``../shared/data`` next to the
repository root), then in the download cache (see
:mod:`stn_jax.data.download`); only when it is in neither is it downloaded
(into the cache) and verified before use.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pathlib
import sys
import zlib
from collections.abc import Mapping

import numpy as np

from stn_jax.data import download

ENV_VAR = "STN_DATA_DIR"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# sha256 of the DECOMPRESSED IDX files (the gzip wrappers may differ).
MNIST_SHA256 = {
  "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
  "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
  "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
  "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_MNIST_SPLITS = {"train": "train", "test": "t10k"}
MNIST_FILES = tuple(MNIST_SHA256)
HOW_TO_GET_MNIST = (
  "Provide MNIST in one of three ways: (1) download: let stn_jax fetch "
  "the four IDX .gz files (network access to "
  f"{download.DEFAULT_BASE_URLS['mnist']}; they go to the download cache, "
  f"${download.CACHE_ENV} or ~/.cache/stn_jax/data); (2) mirror: set "
  f"${download.MIRROR_ENV} (or the data_mirror config value, --data_mirror) "
  "to a URL whose mnist/ folder holds train-images-idx3-ubyte.gz, "
  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
  "t10k-labels-idx1-ubyte.gz; (3) data directory: put those files "
  "(gzipped or not) in <data_dir>/mnist/ and point the source_dir config "
  f"value (--source_dir) or ${ENV_VAR} at <data_dir>."
)


class SourceError(RuntimeError):
  """A source file is missing, unreadable or does not match its checksum
  (the project's data error: command lines print it as one line)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The data directory: ``data_dir``, else ``$STN_DATA_DIR``, else
  ``<repo>/../shared/data`` if it exists.

  Raises:
    SourceError: none of them is set or exists; the message lists where it
      looked.
  """
  if data_dir:
    return pathlib.Path(data_dir).expanduser()
  if os.environ.get(ENV_VAR):
    return pathlib.Path(os.environ[ENV_VAR]).expanduser()
  shared = REPO_ROOT.parent / "shared" / "data"
  if shared.is_dir():
    return shared
  raise SourceError(
    "No data directory: pass data_dir (config value or flag), set "
    f"${ENV_VAR}, or create {shared}."
  )


def search_dirs(
  data_dir: str | os.PathLike | None = None,
) -> list[pathlib.Path]:
  """The directories searched for sources, in order: the data directory
  (:func:`resolve_data_dir`, when one is given, set or exists), then the
  download cache (:func:`stn_jax.data.download.cache_dir`)."""
  dirs = []
  with contextlib.suppress(SourceError):  # no data directory: cache only
    dirs.append(resolve_data_dir(data_dir))
  cache = download.cache_dir()
  if cache not in dirs:
    dirs.append(cache)
  return dirs


def fetch_or_explain(
  family: str,
  name: str,
  destination: pathlib.Path,
  *,
  missing: str,
  how_to: str,
  mirror: str | None,
  verify,
) -> pathlib.Path:
  """Downloads ``name`` of ``family`` to ``destination`` (see
  :func:`stn_jax.data.download.download`), or raises one ``SourceError``
  that says what is missing (``missing``), why it could not be downloaded
  and the ways to provide it (``how_to``)."""
  url = download.source_url(family, name, mirror=mirror)
  if download.offline():
    raise SourceError(
      f"{missing}; downloading {url} is disabled "
      f"(${download.OFFLINE_ENV} is set). {how_to}"
    )
  print(f"Downloading {url} to {destination}", file=sys.stderr)
  try:
    return download.download(url, destination, verify=verify)
  except download.DownloadError as error:
    raise SourceError(f"{missing}, and {error} {how_to}") from error


def _find(directory: pathlib.Path, name: str) -> pathlib.Path | None:
  for candidate in (directory / name, directory / (name + ".gz")):
    if candidate.is_file():
      return candidate
  return None


def _read_bytes(path: pathlib.Path) -> bytes:
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as error:
    raise SourceError(f"Cannot read {path}: {error}.") from error


def read_idx(data: bytes, *, name: str = "IDX data") -> np.ndarray:
  """Parses the bytes of an IDX file (the MNIST format) into an array.

  Returns:
    uint8 array whose shape is the file's dimensions.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise SourceError(
      f"{name} is not an unsigned-byte IDX file (bad magic "
      f"{data[:4].hex() if data else 'empty'})."
    )
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise SourceError(f"{name}: truncated IDX header.")
  shape = tuple(
    int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  size = int(np.prod(shape)) if shape else 0
  if len(data) != header + size:
    raise SourceError(
      f"{name}: expected {header + size} bytes for shape "
      f"{shape}, got {len(data)}."
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _verify_mnist(name: str, checksums, origin: str):
  """A ``verify`` callback: the file decompresses to a valid IDX file whose
  sha256 is ``checksums[name]`` (when given)."""

  def verify(path: pathlib.Path) -> None:
    try:
      with gzip.open(path, "rb") as f:
        data = f.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib: damaged data
      raise SourceError(
        f"The download of {name}.gz from {origin} is not a valid gzip file "
        f"({error}); nothing was written to the cache."
      ) from error
    if checksums is not None:
      digest = hashlib.sha256(data).hexdigest()
      if digest != checksums[name]:
        raise SourceError(
          f"Checksum mismatch for {name}.gz downloaded from {origin}: the "
          f"decompressed sha256 is {digest}, expected {checksums[name]}; "
          "nothing was written to the cache."
        )
    read_idx(data, name=f"{name}.gz from {origin}")

  return verify


def find_mnist_file(
  name: str, *, data_dir=None, mirror: str | None = None, checksums=None
) -> pathlib.Path:
  """The path of MNIST file ``name`` (e.g. ``'train-images-idx3-ubyte'``,
  raw or ``.gz``): from the searched directories (:func:`search_dirs`),
  else downloaded (``<name>.gz``, verified against ``checksums``) into the
  cache.

  Raises:
    SourceError: it is nowhere and cannot be downloaded; the message says
      which file, where it looked, why the download failed and the three
      ways to provide it.
  """
  dirs = [d / "mnist" for d in search_dirs(data_dir)]
  for directory in dirs:
    path = _find(directory, name)
    if path is not None:
      return path
  url = download.source_url("mnist", name + ".gz", mirror=mirror)
  return fetch_or_explain(
    "mnist",
    name + ".gz",
    download.cache_dir() / "mnist" / (name + ".gz"),
    missing=(
      f"Missing MNIST file {name}(.gz): looked in "
      f"{', '.join(str(d) for d in dirs)}"
    ),
    how_to=HOW_TO_GET_MNIST,
    mirror=mirror,
    verify=_verify_mnist(name, checksums, url),
  )


def load_mnist(
  split: str,
  *,
  data_dir=None,
  checksums: Mapping[str, str] | None = MNIST_SHA256,
  mirror: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and verifies one MNIST split.

  Args:
    split: ``'train'`` (60000) or ``'test'`` (10000).
    data_dir: the data directory (see :func:`resolve_data_dir`); files are
      read from ``<data_dir>/mnist/``, else from the download cache's
      ``mnist/``, else downloaded there (see :func:`find_mnist_file`).
    checksums: expected sha256 of each decompressed file, by file name;
      ``None`` skips verification (tests of synthetic files).
    mirror: base URL of a mirror (else ``$STN_DATA_MIRROR``, else the
      default), used only when a file must be downloaded.

  Returns:
    ``(images uint8 (N, 28, 28), labels uint8 (N,))``.

  Raises:
    SourceError: a file is missing and cannot be downloaded (the message
      says which, where it looked and how to obtain it), corrupt, or fails
      its checksum.
  """
  if split not in _MNIST_SPLITS:
    raise ValueError(
      f"split must be one of {sorted(_MNIST_SPLITS)}; got {split!r}."
    )
  arrays = []
  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
    name = f"{_MNIST_SPLITS[split]}-{kind}"
    path = find_mnist_file(
      name, data_dir=data_dir, mirror=mirror, checksums=checksums
    )
    data = _read_bytes(path)
    if checksums is not None:
      digest = hashlib.sha256(data).hexdigest()
      if digest != checksums[name]:
        raise SourceError(
          f"Checksum mismatch for {path}: the decompressed sha256 is "
          f"{digest}, expected {checksums[name]}. The file is corrupt or "
          f"not the canonical MNIST. {HOW_TO_GET_MNIST}"
        )
    arrays.append(read_idx(data, name=str(path)))
  images, labels = arrays
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise SourceError(
      f"MNIST {split}: images {images.shape} and labels "
      f"{labels.shape} do not match."
    )
  return images, labels
