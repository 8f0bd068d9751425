"""stn_jax.pretrained: the shipped entries (checksums, their logits on
noise probes; no dataset image is shipped), packaging a run, verify against
the test split (against restore(...) of the same run),
damaged weights, and release downloads from a 127.0.0.1 server."""

import dataclasses
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST, tiny
from http_fixtures import FileServer

import stn_jax
from stn_jax import model_packaging, model_zoo
from stn_jax.data import download
from stn_jax.inference import Restored


def test_shipped_entries_match_their_files_and_logits():
  """Every shipped card's weights pass their sha256 (recomputed here), and
  the model loaded from them gives, on the seeded noise probes, the logits
  that the run's own checkpoint gave when it was packaged. The folder holds
  no dataset image: the check's real test images are indices."""
  registry = stn_jax.pretrained()
  assert "rts_st_cnn_small" in registry
  for name, card in registry.items():
    folder = model_zoo.MODELS_DIR / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
      [model_zoo.CARD, model_zoo.CHECK, card.weights]
    )
    weights = folder / card.weights
    assert model_zoo.sha256_of(weights) == card.sha256
    assert weights.stat().st_size == card.size <= model_zoo.MAX_SHIPPED_BYTES
    assert 0 <= card.test_error < 1 and card.test_examples > 0
    assert card.command.startswith("python -m stn_jax.main")
    restored = stn_jax.pretrained(name)
    assert isinstance(restored, Restored)
    assert restored.step == card.step
    assert restored.in_shape == card.in_shape
    check = model_zoo.read_check(name)
    assert "images" not in check
    assert check["indices"].dtype.kind == "i"
    assert check["logits"].shape == (len(check["indices"]), 10)
    assert check["labels"].shape == check["indices"].shape
    probes = model_zoo.probe_images(
      card.in_shape, seed=int(check["probe_seed"])
    )
    assert probes.shape == (8, *card.in_shape) and probes.dtype == np.uint8
    logits = restored.predict(probes)
    np.testing.assert_allclose(logits, check["probe_logits"], rtol=0, atol=1e-4)
    # The noise probes tell the weights apart: the logits are not constant.
    assert np.ptp(check["probe_logits"], axis=0).max() > 1e-3
    # verify() without data does the same check and says so.
    found = model_packaging.verify(name, real=False)
    assert found["probe_max_diff"] <= 1e-4 and "real_max_diff" not in found


def test_probe_images_are_seeded():
  a = model_zoo.probe_images((42, 42, 1), seed=3)
  np.testing.assert_array_equal(a, model_zoo.probe_images((42, 42, 1), seed=3))
  assert not np.array_equal(a, model_zoo.probe_images((42, 42, 1), seed=4))
  assert a.min() < 10 and a.max() > 245


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="rts_st_cnn_small.*got 'nope'"):
    stn_jax.pretrained("nope")


def _workdir_with_a_checkpoint(config, folder):
  """A workdir as training leaves it (config, input shape, a verified
  orbax checkpoint at step 7) holding random parameters, without the cost
  of training: NumPy draws into the model's abstract state."""
  from flax import nnx

  from stn_jax import checkpointing, models

  in_shape = (42, 42, 1)
  checkpointing.write_run_files(str(folder), config, in_shape)
  model = nnx.eval_shape(lambda: models.from_config(config, in_shape))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  state = jax.tree.map(
    lambda leaf: jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype),
    state,
  )
  checkpoints = checkpointing.Checkpoints(str(folder))
  try:
    checkpoints.save(
      7, types.SimpleNamespace(model=state, opt_state={"count": 0}), {}
    )
  finally:
    checkpoints.close()


@pytest.fixture(scope="module")
def packaged(tiny_tfds, tmp_path_factory):
  """A run's workdir and its packaged entry in a temporary registry."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  _workdir_with_a_checkpoint(config, workdir)
  models_dir = tmp_path_factory.mktemp("registry")
  card = model_packaging.package(
    str(workdir),
    "tiny",
    command="python -m stn_jax.main --config=... --workdir=RUN",
    out=models_dir,
    num_samples=4,
  )
  return workdir, models_dir, card


def test_packaged_run_predicts_as_restore_and_its_error_is_measured(
  packaged, tiny_tfds
):
  workdir, models_dir, card = packaged
  restored = stn_jax.restore(str(workdir))
  loaded = model_zoo.load("tiny", models_dir=models_dir)
  assert type(loaded) is type(restored)
  assert loaded.step == restored.step == card.step == 7
  assert loaded.config.to_dict() == restored.config.to_dict()
  from stn_jax.data import datasets

  test = datasets.load_arrays("distorted_mnist/rts", "test", tfds_dir=tiny_tfds)
  expected = restored.predict(test["image"])
  np.testing.assert_array_equal(loaded.predict(test["image"]), expected)
  assert card.test_examples == len(test["label"])
  assert card.test_error == pytest.approx(
    np.mean(expected.argmax(1) != test["label"])
  )
  assert card.sha256 == model_zoo.sha256_of(models_dir / "tiny" / card.weights)
  assert model_zoo.cards(models_dir)["tiny"] == card


def test_verify_reads_the_real_test_images_by_index(packaged, tiny_tfds):
  """verify() reads the check's test images from the data directory by
  index, finds the run's logits there and the card's error on the whole
  split; a check that the weights do not reproduce is refused."""
  workdir, models_dir, card = packaged
  check = model_zoo.read_check("tiny", models_dir=models_dir)
  assert "images" not in check
  np.testing.assert_array_equal(check["indices"], np.arange(4))
  from stn_jax.data import datasets

  test = datasets.load_arrays("distorted_mnist/rts", "test", tfds_dir=tiny_tfds)
  np.testing.assert_array_equal(check["labels"], test["label"][:4])
  restored = stn_jax.restore(str(workdir))
  np.testing.assert_array_equal(
    check["logits"], restored.predict(test["image"][:4])
  )
  found = model_packaging.verify(
    "tiny", models_dir=models_dir, full=True, tfds_dir=tiny_tfds
  )
  assert found["probe_max_diff"] == found["real_max_diff"] == 0.0
  assert found["real_count"] == 4
  assert found["test_error"] == pytest.approx(card.test_error)


def test_verify_refuses_weights_that_do_not_reproduce(packaged, tmp_path):
  _, models_dir, _ = packaged
  shutil.copytree(models_dir / "tiny", tmp_path / "tiny")
  check = model_zoo.read_check("tiny", models_dir=tmp_path)
  check["probe_logits"] = check["probe_logits"] + 0.01
  np.savez(tmp_path / "tiny" / model_zoo.CHECK, **check)
  with pytest.raises(ValueError, match="noise probes differ .* up to 0.01"):
    model_packaging.verify("tiny", models_dir=tmp_path, real=False)


def test_bfloat16_weights_round_trip(packaged, tmp_path):
  workdir, models_dir, _ = packaged
  restored = stn_jax.restore(str(workdir))
  from flax import nnx

  _, state = nnx.split(restored.model)
  path = tmp_path / "w.npz"
  model_zoo.save_weights(state, path, dtype="bfloat16")
  back = model_zoo.load_weights(state, path, dtype="bfloat16")
  import jax

  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
    np.testing.assert_array_equal(
      np.asarray(a).astype(jax.numpy.bfloat16).astype(np.float32), b
    )


def test_damaged_weights_fail_their_checksum(packaged, tmp_path):
  _, models_dir, card = packaged
  shutil.copytree(models_dir / "tiny", tmp_path / "tiny")
  weights = tmp_path / "tiny" / card.weights
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 1
  weights.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="fails its sha256 check"):
    model_zoo.load("tiny", models_dir=tmp_path)


def _release_entry(packaged, tmp_path, url):
  """The packaged entry as a release download: card only, with ``url``."""
  _, models_dir, card = packaged
  folder = tmp_path / "registry" / "tiny"
  folder.mkdir(parents=True)
  dataclasses.replace(card, url=url).write(folder)
  return tmp_path / "registry", (models_dir / "tiny" / card.weights)


def test_release_weights_are_downloaded_verified_and_cached(
  packaged, tmp_path, monkeypatch
):
  server = FileServer()
  with server.running():
    url = f"{server.url}/v1/tiny/weights.npz"
    registry, weights = _release_entry(packaged, tmp_path, url)
    server.files["/v1/tiny/weights.npz"] = weights.read_bytes()
    monkeypatch.delenv("STN_DATA_OFFLINE")
    first = model_zoo.load("tiny", models_dir=registry)
    cached = download.cache_dir() / "pretrained" / "tiny" / "weights.npz"
    assert cached.read_bytes() == weights.read_bytes()
    assert len(server.requests) == 1
    second = model_zoo.load("tiny", models_dir=registry)  # from the cache
    assert len(server.requests) == 1
  images = np.zeros((2, *first.in_shape), np.uint8)
  np.testing.assert_array_equal(first.predict(images), second.predict(images))
  cached.unlink()


def test_mirror_and_corrupt_downloads(packaged, tmp_path, monkeypatch):
  server = FileServer()
  with server.running():
    registry, weights = _release_entry(
      packaged, tmp_path, "http://unused.invalid/weights.npz"
    )
    damaged = bytearray(weights.read_bytes())
    damaged[100] ^= 1
    server.files["/m/pretrained/tiny/weights.npz"] = bytes(damaged)
    monkeypatch.delenv("STN_DATA_OFFLINE")
    monkeypatch.setenv("STN_DATA_MIRROR", f"{server.url}/m")
    with pytest.raises(ValueError, match="fails its sha256 check"):
      model_zoo.load("tiny", models_dir=registry)
    cached = download.cache_dir() / "pretrained" / "tiny" / "weights.npz"
    assert not cached.exists()
    server.files["/m/pretrained/tiny/weights.npz"] = weights.read_bytes()
    model_zoo.load("tiny", models_dir=registry)
    assert [path for path, _ in server.requests] == [
      "/m/pretrained/tiny/weights.npz"
    ] * 2
  cached.unlink()


def test_offline_refuses_to_download(packaged, tmp_path):
  registry, _ = _release_entry(packaged, tmp_path, "http://127.0.0.1:9/w.npz")
  with pytest.raises(download.DownloadError, match="STN_DATA_OFFLINE"):
    model_zoo.load("tiny", models_dir=registry)


def test_command_line_lists_the_entries(capsys):
  assert model_zoo.main(["list"]) == 0
  assert "rts_st_cnn_small:" in capsys.readouterr().out
  assert model_zoo.main(["package", "--name=x"]) == 1
  assert "package needs --workdir" in capsys.readouterr().err
