"""Offline source files: where they are, reading them, verifying them.

Nothing here downloads. The data directory is, in this order: the argument
(a config value or flag), the environment variable ``STN_DATA_DIR``, then
``../shared/data`` next to the repository root when it exists.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
from collections.abc import Mapping

import numpy as np

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
HOW_TO_GET_MNIST = (
  "Put the four MNIST IDX files (train-images-idx3-ubyte, "
  "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; "
  "gzipped or not) in <data_dir>/mnist/, and point the data directory at it "
  f"with the data_dir config value or ${ENV_VAR}."
)


class SourceError(RuntimeError):
  """A source file is missing, unreadable or does not match its checksum."""


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
  except (OSError, EOFError) as error:
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


def load_mnist(
  split: str,
  *,
  data_dir=None,
  checksums: Mapping[str, str] | None = MNIST_SHA256,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and verifies one MNIST split.

  Args:
    split: ``'train'`` (60000) or ``'test'`` (10000).
    data_dir: the data directory (see :func:`resolve_data_dir`); files are
      read from ``<data_dir>/mnist/``.
    checksums: expected sha256 of each decompressed file, by file name;
      ``None`` skips verification (tests of synthetic files).

  Returns:
    ``(images uint8 (N, 28, 28), labels uint8 (N,))``.

  Raises:
    SourceError: a file is missing (the message says which, where it looked
      and how to obtain it), corrupt, or fails its checksum.
  """
  if split not in _MNIST_SPLITS:
    raise ValueError(
      f"split must be one of {sorted(_MNIST_SPLITS)}; got {split!r}."
    )
  directory = resolve_data_dir(data_dir) / "mnist"
  arrays = []
  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
    name = f"{_MNIST_SPLITS[split]}-{kind}"
    path = _find(directory, name)
    if path is None:
      raise SourceError(
        f"Missing MNIST file {name}(.gz): looked in "
        f"{directory}. {HOW_TO_GET_MNIST}"
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
