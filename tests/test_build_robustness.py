"""Builds that survive misuse: concurrent builds, leftovers of interrupted
builds, damaged shards, absurd sizes and preview arguments."""

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import data_fixtures
import numpy as np
import pytest
from conftest import pythonpath

from stn_jax.data import __main__ as data_cli
from stn_jax.data import datasets
from stn_jax.data.distorted_mnist import DistortedMnist

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "distorted_mnist/plain"
VERSION = str(DistortedMnist.VERSION)


@pytest.fixture
def mnist_source(tmp_path):
  checksums, arrays = data_fixtures.make_mnist(tmp_path / "src")
  return tmp_path / "src", checksums, arrays


def config_dir(tfds_dir):
  return tfds_dir / "distorted_mnist" / "plain"


def test_leftover_incomplete_folders_are_deleted_by_the_next_build(
  mnist_source, tmp_path
):
  source_dir, checksums, arrays = mnist_source
  tfds_dir = tmp_path / "tfds"
  leftover = config_dir(tfds_dir) / f"incomplete.ABC123_{VERSION}"
  (leftover / "distorted_mnist-train.array_record-00000-of-00001").mkdir(
    parents=True
  )
  data = datasets.load_arrays(
    NAME, "test", tfds_dir=tfds_dir, source_dir=source_dir, checksums=checksums
  )
  np.testing.assert_array_equal(data["label"], arrays["t10k"][1])
  assert not leftover.exists()
  assert not list(config_dir(tfds_dir).glob("incomplete.*"))
  # Also when the dataset is already built.
  leftover.mkdir()
  datasets.build(NAME, tfds_dir=tfds_dir, source_dir=source_dir)
  assert not leftover.exists()


def test_damaged_shard_is_reported_with_its_path_and_the_cure(
  mnist_source, tmp_path, capsys
):
  source_dir, checksums, arrays = mnist_source
  tfds_dir = tmp_path / "tfds"
  kwargs = dict(tfds_dir=tfds_dir, source_dir=source_dir, checksums=checksums)
  datasets.build(NAME, **kwargs)
  shards = sorted(config_dir(tfds_dir).glob(f"{VERSION}/*test.array_record*"))
  assert shards
  for shard in shards:
    shard.write_bytes(os.urandom(shard.stat().st_size))
  with pytest.raises(datasets.CorruptDatasetError) as error:
    datasets.load_arrays(NAME, "test", **kwargs)
  message = str(error.value)
  assert str(config_dir(tfds_dir) / VERSION) in message
  assert f"python -m stn_jax.data build {NAME} --overwrite" in message
  # The cure it names works (build --overwrite calls this; the command
  # line cannot take the synthetic files' checksums).
  datasets.build(NAME, overwrite=True, **kwargs)
  data = datasets.load_arrays(NAME, "test", **kwargs)
  np.testing.assert_array_equal(data["label"], arrays["t10k"][1])


def test_damaged_shard_at_the_command_line_is_one_line(
  mnist_source, tmp_path, capsys
):
  source_dir, checksums, _ = mnist_source
  tfds_dir = tmp_path / "tfds"
  datasets.build(
    NAME, tfds_dir=tfds_dir, source_dir=source_dir, checksums=checksums
  )
  for shard in config_dir(tfds_dir).glob(f"{VERSION}/*.array_record*"):
    shard.write_bytes(b"garbage")
  capsys.readouterr()  # the build's own progress output
  status = data_cli.main(
    [
      "preview",
      NAME,
      f"--out={tmp_path / 'p.png'}",
      f"--tfds_dir={tfds_dir}",
      f"--source_dir={source_dir}",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert status == 1
  assert err.startswith("python -m stn_jax.data: error: Cannot read split")
  assert "--overwrite" in err and "\n" not in err


_BUILD_SCRIPT = textwrap.dedent(
  """
  import pathlib, sys, time
  from stn_jax.data import datasets
  import data_fixtures  # noqa: F401 (tests/ on the path)
  tmp = pathlib.Path(sys.argv[1])
  (tmp / f"ready{sys.argv[2]}").touch()
  while not (tmp / "go").exists():
    time.sleep(0.01)
  builder = datasets.build(
    "distorted_mnist/plain", tfds_dir=tmp / "tfds", source_dir=tmp / "src",
    checksums=None,
  )
  print(builder.info.splits["test"].num_examples)
  """
)


def test_two_concurrent_builds_do_not_crash_each_other(mnist_source, tmp_path):
  env = dict(
    os.environ,
    PYTHONPATH=pythonpath(REPO, REPO / "tests"),
    JAX_PLATFORMS="cpu",
  )
  processes = [
    subprocess.Popen(
      [sys.executable, "-c", _BUILD_SCRIPT, str(tmp_path), str(i)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  deadline = time.monotonic() + 120
  while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
    assert time.monotonic() < deadline, "the build processes did not start"
    assert all(p.poll() is None for p in processes), [
      p.communicate() for p in processes
    ]
    time.sleep(0.05)
  (tmp_path / "go").touch()  # both start building at the same moment
  outputs = [p.communicate(timeout=120) for p in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err
    assert out.split()[-1] == "12"
  # One generated it (TFDS announces that on stdout), the other waited for
  # the lock and then found it built.
  generated = ["Downloading and preparing" in out for out, _ in outputs]
  assert sorted(generated) == [False, True]
  assert not list(config_dir(tmp_path / "tfds").glob("incomplete.*"))
  data = datasets.load_arrays(
    NAME, "train", tfds_dir=tmp_path / "tfds", source_dir=tmp_path / "src"
  )
  assert len(data["label"]) == 24


@pytest.mark.parametrize("size", ["4", "7", "257", "100000"])
def test_gtsrb_sizes_outside_8_to_256_are_rejected(size, capsys):
  with pytest.raises(ValueError, match=r"\[8, 256\]"):
    datasets.get_builder(f"gtsrb/{size}")
  assert data_cli.main(["build", f"gtsrb/{size}"]) == 1
  err = capsys.readouterr().err.strip()
  assert "[8, 256]" in err and size in err and "\n" not in err


def test_gtsrb_sizes_inside_the_range_are_accepted(tmp_path):
  for size in (8, 48, 256):
    builder = datasets.get_builder(f"gtsrb/{size}", tfds_dir=tmp_path)
    assert builder.builder_config.image_size == size


@pytest.mark.parametrize(
  "flag", ["--count=0", "--count=-3", "--columns=0", "--columns=-1"]
)
def test_preview_rejects_nonsensical_count_and_columns(flag, tmp_path, capsys):
  status = data_cli.main(["preview", NAME, f"--out={tmp_path / 'p.png'}", flag])
  err = capsys.readouterr().err.strip()
  assert status == 1
  name = flag.split("=")[0]
  assert err.startswith(f"python -m stn_jax.data: error: {name} must be")
  assert "\n" not in err
  assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("out", ["folder", "preview", "preview.xyz"])
def test_preview_out_must_be_an_image_file(out, tmp_path, capsys):
  """Issue 33 (rerun as a user): ``--out`` naming a folder, or a file
  without an image extension, was "unknown file extension:" after the
  dataset was read."""
  (tmp_path / "folder").mkdir()
  path = tmp_path / out
  status = data_cli.main(["preview", NAME, f"--out={path}"])
  err = capsys.readouterr().err.strip()
  assert status == 1
  assert err.startswith(f"python -m stn_jax.data: error: {path}"), err
  assert ("folder" if out == "folder" else ".png") in err
  assert "\n" not in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
