"""TFDS builders on tiny synthetic sources: splits, labels, determinism,
verification, and that a failed build leaves nothing readable."""

import hashlib

import data_fixtures
import numpy as np
import pytest

from stn_jax.data import datasets, distortions, gtsrb_source, sources
from stn_jax.data.distorted_mnist import DistortedMnist


@pytest.fixture
def mnist_source(tmp_path):
  checksums, arrays = data_fixtures.make_mnist(tmp_path / "src")
  return tmp_path / "src", checksums, arrays


def build_and_load(name, source_dir, tfds_dir, checksums, split):
  return datasets.load_arrays(
    name, split, tfds_dir=tfds_dir, source_dir=source_dir, checksums=checksums
  )


def records_hash(arrays):
  digest = hashlib.sha256()
  for key in sorted(arrays):
    digest.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
  return digest.hexdigest()


@pytest.mark.parametrize("variant", ["rts", "tc"])
def test_distorted_mnist_splits_labels_and_params(
  variant, mnist_source, tmp_path
):
  source_dir, checksums, arrays = mnist_source
  name = f"distorted_mnist/{variant}"
  size = distortions.IMAGE_SIZE[variant]
  for split, prefix in (("train", "train"), ("test", "t10k")):
    data = build_and_load(name, source_dir, tmp_path / "tfds", checksums, split)
    digits, labels = arrays[prefix]
    assert data["image"].shape == (len(labels), size, size, 1)
    np.testing.assert_array_equal(data["label"], labels)
    np.testing.assert_array_equal(data["index"], np.arange(len(labels)))
    want = distortions.sample_batch_params(
      variant, 0, split, range(len(labels)), num_sources=len(labels)
    )
    np.testing.assert_array_equal(data["theta"], want["theta"])
    rendered = distortions.render(variant, digits, want, clutter_sources=digits)
    np.testing.assert_array_equal(data["image"][..., 0], rendered)


def test_two_builds_give_identical_records(mnist_source, tmp_path):
  source_dir, checksums, _ = mnist_source
  hashes = [
    records_hash(
      build_and_load(
        "distorted_mnist/e",
        source_dir,
        tmp_path / f"tfds{i}",
        checksums,
        "train",
      )
    )
    for i in range(2)
  ]
  assert hashes[0] == hashes[1]


def test_checksum_failure_leaves_no_dataset(mnist_source, tmp_path):
  source_dir, checksums, _ = mnist_source
  bad = dict(checksums, **{"t10k-images-idx3-ubyte": "0" * 64})
  tfds_dir = tmp_path / "tfds"
  with pytest.raises(sources.SourceError, match="Checksum mismatch"):
    datasets.build(
      "distorted_mnist/r",
      tfds_dir=tfds_dir,
      source_dir=source_dir,
      checksums=bad,
    )
  assert not (
    tfds_dir / "distorted_mnist" / "r" / str(DistortedMnist.VERSION)
  ).exists()
  # A later good build works and is complete.
  data = build_and_load(
    "distorted_mnist/r", source_dir, tfds_dir, checksums, "test"
  )
  assert len(data["label"]) == 12


def test_missing_source_says_what_where_and_how(tmp_path):
  with pytest.raises(sources.SourceError) as error:
    datasets.build(
      "distorted_mnist/plain",
      tfds_dir=tmp_path / "tfds",
      source_dir=tmp_path / "empty",
    )
  message = str(error.value)
  assert "train-images-idx3-ubyte" in message
  assert str(tmp_path / "empty" / "mnist") in message
  assert "STN_DATA_DIR" in message


def test_unknown_dataset_names_are_rejected():
  with pytest.raises(ValueError, match="dataset must be one of"):
    datasets.get_builder("mnist/plain")
  with pytest.raises(ValueError, match="has configs plain, r, rts, p, e, tc"):
    datasets.get_builder("distorted_mnist/rotated")


def check_gtsrb_splits(data, n_train, n_test):
  assert len(data["train"]["label"]) == n_train
  assert len(data["test"]["label"]) == n_test
  assert (
    len(data["validation"]["label"])
    + len(data["train_without_validation"]["label"])
    == n_train
  )
  validation_tracks = set(data["validation"]["track"])
  assert validation_tracks
  assert not validation_tracks & set(data["train_without_validation"]["track"])
  assert np.all(data["test"]["track"] == -1)


def load_gtsrb_splits(name, source_dir, tfds_dir, checksums):
  return {
    split: datasets.load_arrays(
      name, split, tfds_dir=tfds_dir, source_dir=source_dir, checksums=checksums
    )
    for split in ("train", "test", "validation", "train_without_validation")
  }


def test_gtsrb_from_the_npz_layout(tmp_path):
  data_fixtures.make_gtsrb_npz(tmp_path / "src")
  data = load_gtsrb_splits(
    "gtsrb/32", tmp_path / "src", tmp_path / "tfds", None
  )
  check_gtsrb_splits(data, 60, 10)
  assert data["train"]["image"].shape == (60, 32, 32, 3)
  np.testing.assert_array_equal(data["train"]["roi"][0], [2, 3, 20, 21])
  np.testing.assert_array_equal(data["train"]["size"][0], [30, 31])
  # one held-out track of 10 frames per class
  assert len(data["validation"]["label"]) == 30
  with np.load(tmp_path / "src" / "gtsrb" / "train.npz") as raw:
    np.testing.assert_array_equal(data["train"]["image"], raw["images"])


def test_gtsrb_npz_checksum_is_verified(tmp_path):
  data_fixtures.make_gtsrb_npz(tmp_path / "src")
  with pytest.raises(sources.SourceError, match="Checksum mismatch"):
    datasets.build(
      "gtsrb/32", tfds_dir=tmp_path / "tfds", source_dir=tmp_path / "src"
    )


def test_gtsrb_from_the_official_layout_resized(tmp_path):
  data_fixtures.make_gtsrb_official(tmp_path / "src")
  data = load_gtsrb_splits(
    "gtsrb/40", tmp_path / "src", tmp_path / "tfds", None
  )
  check_gtsrb_splits(data, 12, 4)
  assert data["train"]["image"].shape == (12, 40, 40, 3)
  np.testing.assert_array_equal(data["test"]["label"], [0, 1, 0, 1])
  # tracks are unique across classes: class * 1000 + track
  assert set(data["train"]["track"]) == {0, 1, 1000, 1001}
  width, height = data["train"]["size"][0]
  np.testing.assert_array_equal(
    data["train"]["roi"][0], [1, 2, width - 2, height - 3]
  )


def test_gtsrb_missing_sources_message(tmp_path):
  with pytest.raises(sources.SourceError, match="No GTSRB sources"):
    gtsrb_source.load_gtsrb("train", data_dir=tmp_path)
