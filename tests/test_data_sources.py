"""Offline MNIST sources: data-directory resolution, IDX parsing, checksums."""

import numpy as np
import pytest
from data_fixtures import write_idx

from stn_jax.data import sources


@pytest.fixture
def tiny_mnist(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "mnist").mkdir()
  checksums, arrays = {}, {}
  for prefix, n, compress in (("train", 7, True), ("t10k", 3, False)):
    images = rng.integers(0, 256, size=(n, 28, 28))
    labels = rng.integers(0, 10, size=(n,))
    arrays[prefix] = (images, labels)
    for kind, array in (
      ("images-idx3-ubyte", images),
      ("labels-idx1-ubyte", labels),
    ):
      name = f"{prefix}-{kind}"
      checksums[name] = write_idx(tmp_path / "mnist" / name, array, compress)
  return tmp_path, checksums, arrays


def test_reads_gzipped_and_raw_files(tiny_mnist):
  root, checksums, arrays = tiny_mnist
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = sources.load_mnist(
      split, data_dir=root, checksums=checksums
    )
    np.testing.assert_array_equal(images, arrays[prefix][0])
    np.testing.assert_array_equal(labels, arrays[prefix][1])
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)


def test_checksum_mismatch_names_the_file(tiny_mnist):
  root, checksums, _ = tiny_mnist
  checksums = dict(checksums, **{"t10k-labels-idx1-ubyte": "0" * 64})
  with pytest.raises(
    sources.SourceError, match=r"Checksum mismatch for .*t10k-labels-idx1-ubyte"
  ):
    sources.load_mnist("test", data_dir=root, checksums=checksums)


def test_missing_file_says_which_where_and_how(tmp_path):
  with pytest.raises(sources.SourceError) as error:
    sources.load_mnist("train", data_dir=tmp_path)
  message = str(error.value)
  assert "train-images-idx3-ubyte" in message
  assert str(tmp_path / "mnist") in message
  assert "STN_DATA_DIR" in message


def test_corrupt_file_is_rejected(tmp_path):
  with pytest.raises(sources.SourceError, match="bad magic"):
    sources.read_idx(b"\x00\x00\x09\x01\x00\x00\x00\x01\x05")
  with pytest.raises(sources.SourceError, match="expected 10 bytes"):
    sources.read_idx(b"\x00\x00\x08\x01\x00\x00\x00\x02\x05")


def test_data_dir_resolution_order(tmp_path, monkeypatch):
  monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "from_env"))
  assert sources.resolve_data_dir(tmp_path / "given") == tmp_path / "given"
  assert sources.resolve_data_dir() == tmp_path / "from_env"
  monkeypatch.delenv(sources.ENV_VAR)
  shared = sources.REPO_ROOT.parent / "shared" / "data"
  if shared.is_dir():
    assert sources.resolve_data_dir() == shared
  else:
    with pytest.raises(sources.SourceError, match="No data directory"):
      sources.resolve_data_dir()


def test_real_mnist_matches_published_checksums_and_counts():
  root = sources.REPO_ROOT.parent / "shared" / "data"
  if not (root / "mnist").is_dir():
    pytest.skip("the offline MNIST copy is not present")
  images, labels = sources.load_mnist("test", data_dir=root)
  assert images.shape == (10000, 28, 28)
  np.testing.assert_array_equal(
    np.bincount(labels, minlength=10),
    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
  )
