"""Downloads against a real HTTP server on 127.0.0.1 (tests/http_fixtures):
verified, atomic, resumed after a dropped connection; clear errors for a
corrupt file, a 404 and no network at all, also at the command lines."""

import gzip
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import zipfile

import data_fixtures
import numpy as np
import pytest
from conftest import pythonpath
from http_fixtures import FileServer, closed_port_url
from PIL import Image

from stn_jax.data import datasets, download, gtsrb_source, sources

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def online(tmp_path, monkeypatch):
  """Downloads allowed, into ``tmp_path/cache``, from a mirror where nothing
  listens unless the test says otherwise; returns the cache."""
  cache = tmp_path / "cache"
  monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
  monkeypatch.setenv(download.MIRROR_ENV, closed_port_url())
  monkeypatch.setattr(download, "cache_dir", lambda: cache)
  return cache


@pytest.fixture
def server():
  with FileServer().running() as running:
    yield running


@pytest.fixture
def mnist_files(tmp_path):
  """The four synthetic MNIST .gz files: ({name.gz: bytes}, checksums,
  arrays)."""
  checksums, arrays = data_fixtures.make_mnist(tmp_path / "made")
  files = {
    path.name: path.read_bytes()
    for path in (tmp_path / "made" / "mnist").iterdir()
  }
  return files, checksums, arrays


def serve_mnist(server, files, prefix="/mirror"):
  for name, data in files.items():
    server.files[f"{prefix}/mnist/{name}"] = data
  return server.url + prefix


def test_cache_location_follows_the_environment(tmp_path):
  home = pathlib.Path.home()
  assert download.cache_dir_from({}) == home / ".cache" / "stn_jax" / "data"
  assert (
    download.cache_dir_from({"XDG_CACHE_HOME": str(tmp_path)})
    == tmp_path / "stn_jax" / "data"
  )
  assert (
    download.cache_dir_from(
      {"XDG_CACHE_HOME": str(tmp_path), "STN_DATA_DIR": str(tmp_path / "d")}
    )
    == tmp_path / "d"
  )


def test_urls_from_mirror_argument_environment_and_default(monkeypatch):
  # (no request is made here: only the URLs are computed)
  monkeypatch.delenv(download.MIRROR_ENV, raising=False)
  assert (
    download.source_url("mnist", "t10k-labels-idx1-ubyte.gz")
    == "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
  )
  monkeypatch.setenv(download.MIRROR_ENV, "http://env.example/m/")
  assert (
    download.source_url("gtsrb", "a.zip") == "http://env.example/m/gtsrb/a.zip"
  )
  assert (
    download.source_url("gtsrb", "a.zip", mirror="file:///mnt/m")
    == "file:///mnt/m/gtsrb/a.zip"
  )


def test_good_download_is_verified_cached_and_shows_progress(
  online, server, mnist_files, tmp_path, monkeypatch, capfd
):
  files, checksums, arrays = mnist_files
  monkeypatch.setenv(download.MIRROR_ENV, serve_mnist(server, files))
  images, labels = sources.load_mnist(
    "train", data_dir=tmp_path / "empty", checksums=checksums
  )
  np.testing.assert_array_equal(images, arrays["train"][0])
  np.testing.assert_array_equal(labels, arrays["train"][1])
  cached = sorted(p.name for p in (online / "mnist").iterdir())
  # the files, byte for byte; no .part left (the .lock files stay, empty)
  assert [n for n in cached if not n.endswith(".lock")] == [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
  ]
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
    assert (online / "mnist" / name).read_bytes() == files[name]
  err = capfd.readouterr().err
  assert "Downloading " + server.url in err
  assert "100%" in err  # the progress bar reached the end
  # A second load reads the cache: no new request.
  count = len(server.requests)
  sources.load_mnist("train", data_dir=tmp_path / "empty", checksums=checksums)
  assert len(server.requests) == count


def test_data_directory_comes_before_the_cache_and_the_download(
  online, server, mnist_files, tmp_path
):
  files, checksums, arrays = mnist_files
  # test split in the cache (other content than the data dir's), train in
  # the data directory: nothing is downloaded.
  other_checksums, other = data_fixtures.make_mnist(
    online, sizes=(("t10k", 5),), seed=1
  )
  mirror = serve_mnist(server, files)
  images, _ = sources.load_mnist(
    "train", data_dir=tmp_path / "made", checksums=checksums, mirror=mirror
  )
  np.testing.assert_array_equal(images, arrays["train"][0])
  images, _ = sources.load_mnist(
    "test", data_dir=tmp_path / "made", checksums=checksums, mirror=mirror
  )
  np.testing.assert_array_equal(images, arrays["t10k"][0])  # data dir first
  images, _ = sources.load_mnist(
    "test",
    data_dir=tmp_path / "empty",
    checksums=other_checksums,
    mirror=mirror,
  )
  np.testing.assert_array_equal(images, other["t10k"][0])  # then the cache
  assert server.requests == []


def test_corrupt_download_names_the_file_and_both_checksums(
  online, server, mnist_files, tmp_path
):
  files, checksums, _ = mnist_files
  name = "train-images-idx3-ubyte"
  bad = gzip.compress(gzip.decompress(files[name + ".gz"])[:-1] + b"\x07")
  files = dict(files, **{name + ".gz": bad})
  with pytest.raises(sources.SourceError) as error:
    sources.load_mnist(
      "train",
      data_dir=tmp_path / "empty",
      checksums=checksums,
      mirror=serve_mnist(server, files),
    )
  message = str(error.value)
  assert name + ".gz" in message
  assert checksums[name] in message  # expected
  assert hashlib.sha256(gzip.decompress(bad)).hexdigest() in message  # actual
  assert not (online / "mnist" / (name + ".gz")).exists()
  assert not list((online / "mnist").glob("*.part"))


def test_dropped_connection_leaves_no_file_and_a_rerun_resumes(
  online, server, tmp_path
):
  data = os.urandom(300_000)
  server.files["/f/blob.bin"] = data
  server.drop_after["/f/blob.bin"] = (100_000, 1)
  destination = tmp_path / "out" / "blob.bin"
  url = server.url + "/f/blob.bin"
  with pytest.raises(download.DownloadError, match="cut short after 100000"):
    download.download(url, destination, attempts=1, progress=False)
  assert not destination.exists()  # no half file under the real name
  part = tmp_path / "out" / ".blob.bin.part"
  assert part.stat().st_size == 100_000
  download.download(url, destination, attempts=1, progress=False)
  assert destination.read_bytes() == data
  assert not part.exists()
  assert server.requests == [
    ("/f/blob.bin", None),
    ("/f/blob.bin", "bytes=100000-"),
  ]


def test_dropped_connection_is_retried_within_one_call(
  online, server, tmp_path
):
  data = os.urandom(200_000)
  server.files["/f/blob.bin"] = data
  server.drop_after["/f/blob.bin"] = (50_000, 2)
  destination = tmp_path / "blob.bin"
  download.download(
    server.url + "/f/blob.bin", destination, attempts=3, progress=False
  )
  assert destination.read_bytes() == data
  assert [r for _, r in server.requests] == [None, "bytes=50000-"] + [
    "bytes=100000-"
  ]


def test_a_server_ignoring_range_restarts_cleanly(online, server, tmp_path):
  data = os.urandom(100_000)
  server.files["/f/blob.bin"] = data
  server.ignore_range = True
  (tmp_path / ".blob.bin.part").write_bytes(data[:30_000])
  download.download(
    server.url + "/f/blob.bin", tmp_path / "blob.bin", progress=False
  )
  assert (tmp_path / "blob.bin").read_bytes() == data  # not appended twice


def test_http_404_names_the_url(online, server, tmp_path):
  url = server.url + "/nothing/here.gz"
  with pytest.raises(download.DownloadError) as error:
    download.download(url, tmp_path / "here.gz", progress=False)
  assert url in str(error.value) and "404" in str(error.value)
  assert list(tmp_path.iterdir()) == [tmp_path / ".here.gz.lock"]


def check_one_message(message, *, names, where):
  for name in names:
    assert name in message
  assert str(where) in message
  for way in ("(1) download", "(2) mirror", "(3) data directory"):
    assert way in message
  assert "STN_DATA_MIRROR" in message and "STN_DATA_DIR" in message


def test_no_network_and_no_files_gives_one_clear_message(online, tmp_path):
  url = closed_port_url()
  with pytest.raises(sources.SourceError) as error:
    sources.load_mnist("train", data_dir=tmp_path / "empty", mirror=url)
  message = str(error.value)
  check_one_message(
    message, names=["train-images-idx3-ubyte"], where=tmp_path / "empty"
  )
  assert "Cannot reach " + url in message
  assert not (online / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_offline_setting_forbids_downloads(online, tmp_path, monkeypatch):
  monkeypatch.setenv(download.OFFLINE_ENV, "1")
  with pytest.raises(sources.SourceError, match="disabled"):
    sources.load_mnist("test", data_dir=tmp_path / "empty")
  with pytest.raises(sources.SourceError, match="No GTSRB sources") as error:
    gtsrb_source.load_gtsrb("test", data_dir=tmp_path / "empty")
  check_one_message(
    str(error.value),
    names=["GTSRB_Final_Training_Images.zip"],
    where=tmp_path / "empty",
  )


def run_command(args, env_dir, timeout=120):
  """Runs ``python -m ARGS`` with nothing reachable and an empty data
  directory and cache (``$STN_DATA_DIR=env_dir``)."""
  env = dict(os.environ, STN_DATA_DIR=str(env_dir), PYTHONPATH=pythonpath(REPO))
  env.pop(download.OFFLINE_ENV, None)
  env.pop(download.MIRROR_ENV, None)
  return subprocess.run(
    [sys.executable, "-m", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
    env=env,
  )


def test_command_lines_print_one_line_without_traceback(tmp_path):
  url = closed_port_url()
  build = run_command(
    [
      "stn_jax.data",
      "build",
      "distorted_mnist/plain",
      f"--tfds_dir={tmp_path / 'tfds'}",
      f"--data_mirror={url}",
    ],
    tmp_path / "data",
  )
  train = run_command(
    [
      "stn_jax.main",
      "--config=configs/mnist.py:distortion=plain,small=true",
      f"--workdir={tmp_path / 'work'}",
      f"--config.tfds_dir={tmp_path / 'tfds'}",
      f"--config.data_mirror={url}",
    ],
    tmp_path / "data",
  )
  for result, prog in ((build, "stn_jax.data"), (train, "stn_jax.main")):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error = [line for line in lines if "error:" in line]
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"python -m {prog}: error: Missing MNIST file")
    check_one_message(
      error[0], names=["train-images-idx3-ubyte"], where=tmp_path / "data"
    )
    assert "Cannot reach " + url in error[0]


def gtsrb_archives(root):
  """The official layout (tests/data_fixtures) packed as the three official
  archives: ({name: bytes}, {name: md5}, the extracted folder)."""
  folder = data_fixtures.make_gtsrb_official(root)
  archives = {}
  for name, top, prefix in (
    ("GTSRB_Final_Training_Images.zip", "Final_Training", "GTSRB/"),
    ("GTSRB_Final_Test_Images.zip", "Final_Test", "GTSRB/"),
    ("GTSRB_Final_Test_GT.zip", None, ""),
  ):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
      if top is None:
        zf.write(
          folder / "Final_Test" / "Images" / "GT-final_test.csv",
          "GT-final_test.csv",
        )
      else:
        for path in sorted((folder / top).rglob("*")):
          if path.name == "GT-final_test.csv":
            continue  # only in the GT archive, as in the official ones
          zf.write(path, prefix + str(path.relative_to(folder)))
        zf.writestr(prefix + "Readme.txt", "readme")
    archives[name] = buffer.getvalue()
  md5 = {name: hashlib.md5(data).hexdigest() for name, data in archives.items()}
  return archives, md5, folder


def test_gtsrb_48_from_downloaded_archives(online, server, tmp_path):
  archives, md5, folder = gtsrb_archives(tmp_path / "made")
  for name, data in archives.items():
    server.files[f"/m/gtsrb/{name}"] = data
  data = datasets.load_arrays(
    "gtsrb/48",
    "train",
    tfds_dir=tmp_path / "tfds",
    source_dir=tmp_path / "empty",
    data_mirror=server.url + "/m",
    checksums=None,
    archive_md5=md5,
  )
  assert data["image"].shape == (12, 48, 48, 3)
  # Resized from the original-resolution PPM, not from a 32x32 copy.
  first = folder / "Final_Training" / "Images" / "00000" / "00000_00000.ppm"
  with Image.open(first) as image:
    want = np.asarray(image.resize((48, 48), Image.BILINEAR))
  np.testing.assert_array_equal(data["image"][0], want)
  cache = online / "gtsrb"
  assert (cache / "Final_Training" / "Images" / "00001").is_dir()
  assert (cache / "Final_Test" / "Images" / "00003.ppm").is_file()
  assert (cache / "GT-final_test.csv").is_file()
  assert not list(cache.glob("*.zip")) and not list(cache.glob(".extract-*"))
  test = datasets.load_arrays(
    "gtsrb/48",
    "test",
    tfds_dir=tmp_path / "tfds",
    source_dir=tmp_path / "empty",
  )
  np.testing.assert_array_equal(test["label"], [0, 1, 0, 1])


def test_gtsrb_archive_with_wrong_md5_is_not_used(online, server, tmp_path):
  archives, md5, _ = gtsrb_archives(tmp_path / "made")
  for name, data in archives.items():
    server.files[f"/m/gtsrb/{name}"] = data
  wrong = dict(md5, **{"GTSRB_Final_Training_Images.zip": "0" * 32})
  with pytest.raises(sources.SourceError) as error:
    gtsrb_source.load_gtsrb(
      "train",
      data_dir=tmp_path / "empty",
      mirror=server.url + "/m",
      archive_md5=wrong,
    )
  message = str(error.value)
  assert "GTSRB_Final_Training_Images.zip" in message
  assert "0" * 32 in message
  assert md5["GTSRB_Final_Training_Images.zip"] in message
  cache = online / "gtsrb"
  assert not (cache / "Final_Training").exists()
  assert not list(cache.glob("*.zip")) and not list(cache.glob("*.part"))


def test_gtsrb_above_32_prefers_the_official_layout(online, tmp_path):
  data_fixtures.make_gtsrb_npz(tmp_path / "data")  # the 32x32 copy
  data_fixtures.make_gtsrb_official(online)  # archives, in the cache
  data_dir = tmp_path / "data"
  assert gtsrb_source.find_layout(data_dir) == ("npz", data_dir / "gtsrb")
  assert gtsrb_source.find_layout(data_dir, prefer_official=True) == (
    "official",
    online / "gtsrb",
  )


def test_subprocesses_of_the_suite_use_its_empty_download_cache():
  """The suite's download cache reaches the processes its tests start (a
  training CLI, a Ray worker), so files a user downloaded into
  ~/.cache/stn_jax/data cannot stand in for a source a test leaves
  missing."""
  code = "from stn_jax.data import download; print(download.cache_dir())"
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  ).stdout.strip()
  assert pathlib.Path(out) == download.cache_dir()
  assert not pathlib.Path(out).is_relative_to(pathlib.Path.home() / ".cache")
