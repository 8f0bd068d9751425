"""Distortion and jitter drawn and rendered on the device: the protocols'
parameter ranges (checked against their definitions, recovered from the
matrices with NumPy), rendering equal to the host steps', a reproducible
per-example stream under jit and vmap, and a resumed run bitwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GTSRB, MNIST, tiny

import stn_jax
from stn_jax import hooks, train, workdir
from stn_jax.data import augment, device_augment, distortions, pipeline
from stn_jax.normalization import Normalization

N = 4000
PX = 2.0 / 28


def _keys(n=N, seed=0, epoch=0, stream=7):
  index = jnp.arange(n, dtype=jnp.int32)
  return device_augment.example_keys(
    jnp.full(n, seed, jnp.int32), index, jnp.full(n, epoch, jnp.int32), stream
  )


def _draws(variant, **kwargs):
  params = device_augment.sample_params(
    variant, _keys(), with_draws=True, **kwargs
  )
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _uniform_in(values, low, high):
  """All in [low, high), the range covered to its ends, mean in the middle."""
  assert values.min() >= low and values.max() < high
  span = high - low
  assert values.min() < low + 0.01 * span and values.max() > high - 0.01 * span
  assert abs(values.mean() - (low + high) / 2) < 0.02 * span


def test_r_is_a_rotation_within_90_degrees():
  p = _draws("r")
  theta = p["theta"]
  _uniform_in(p["angle"], -90, 90)
  angle = np.degrees(np.arctan2(theta[:, 1, 0], theta[:, 0, 0]))
  np.testing.assert_allclose(angle, p["angle"], atol=1e-3)
  gram = np.einsum("bij,bkj->bik", theta[:, :, :2], theta[:, :, :2])
  np.testing.assert_allclose(
    gram, np.broadcast_to(np.eye(2), gram.shape), atol=1e-5
  )
  np.testing.assert_array_equal(theta[:, :, 2], 0)


def test_rts_rotation_scale_and_placement():
  p = _draws("rts")
  _uniform_in(p["angle"], -45, 45)
  _uniform_in(p["scale"], 0.7, 1.2)
  # Recovered from theta alone (canvas point p reads k R (p - centre)).
  linear, shift = p["theta"][:, :, :2], p["theta"][:, :, 2]
  k = np.sqrt(np.linalg.det(linear))
  np.testing.assert_allclose(42 / (28 * k), p["scale"], rtol=1e-5)
  angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
  np.testing.assert_allclose(angle, p["angle"], atol=1e-3)
  centre = -np.linalg.solve(linear, shift[..., None])[..., 0]
  np.testing.assert_allclose(centre, p["centre"], atol=1e-5)
  # The digit's 24 px box stays on the 42 px canvas.
  reach = 1 - 24 * p["scale"] / 42
  assert np.all(np.abs(centre) <= reach[:, None] + 1e-6)
  _uniform_in(centre[:, 0] / reach, -1, 1)


def test_p_reads_the_scaled_corners_plus_5px_noise_and_stays_a_view():
  p = _draws("p")
  _uniform_in(p["scale"], 0.75, 1.0)
  assert p["valid"].all()
  corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
  # Where the output corners read the input, from the homography alone.
  h = p["homography"]
  mapped = np.einsum("bij,kj->bki", h, np.c_[corners, np.ones(4)])
  reads = mapped[..., :2] / mapped[..., 2:]
  expected = corners / p["scale"][:, None, None] + p["noise"]
  np.testing.assert_allclose(reads, expected, atol=1e-4)
  noise = p["noise"] / PX
  assert abs(noise.mean()) < 0.1
  assert abs(noise.std() - 5.0) < 0.1  # N(0, 5 px), barely cut by the redraw
  # Every kept warp is a real perspective view (the host protocol's tests).
  for k in range(0, N, 7):
    assert distortions.is_convex_quadrilateral(reads[k])
    assert distortions._frame_in_view(h[k])
  redrawn = (p["tries"] > 1).mean()
  assert 0.003 < redrawn < 0.05, redrawn  # about 1.4% at the host


def test_e_moves_the_tps_points_by_1_5px_after_scaling():
  p = _draws("e")
  _uniform_in(p["scale"], 0.75, 1.0)
  source = distortions.grids.tps_source_points(16)
  recovered = p["control_points"] * p["scale"][:, None, None] - source
  np.testing.assert_allclose(recovered, p["noise"], atol=1e-5)
  assert abs(recovered.std() / PX - 1.5) < 0.05
  assert abs(recovered.mean() / PX) < 0.05


def test_tc_placement_and_clutter_ranges():
  p = _draws("tc", num_sources=50)
  reach = 1 - 28 / 60
  _uniform_in(p["centre"][:, 0], -reach, reach)
  np.testing.assert_allclose(
    p["theta"][:, :, :2],
    np.broadcast_to(60 / 28 * np.eye(2), (N, 2, 2)),
    rtol=1e-6,
  )
  clutter = p["clutter"].astype(int)
  assert clutter.shape == (N, 6, 5)
  for column, high in ((0, 50), (1, 23), (2, 23), (3, 55), (4, 55)):
    values = clutter[..., column]
    assert values.min() == 0 and values.max() == high - 1, column


def _digits(n, seed=0):
  """Blobby uint8 28x28 'digits' with strokes in the middle."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28), np.uint8)
  images[:, 4:24, 6:22] = rng.integers(0, 256, (n, 20, 16))
  return images


@pytest.mark.parametrize("variant", distortions.VARIANTS)
def test_render_equals_the_host_render_of_the_same_parameters(variant):
  digits = _digits(64)
  sources = _digits(20, seed=1)
  params = device_augment.sample_params(variant, _keys(64), num_sources=20)
  got = jax.jit(
    lambda x, p, s: device_augment.render(variant, x, p, clutter_sources=s)
  )(digits[..., None], params, sources[..., None])
  host = distortions.render(
    variant,
    digits,
    jax.tree.map(np.asarray, params),
    clutter_sources=sources,
    exact=False,
  )
  got = np.asarray(got)[..., 0]
  assert got.dtype == np.float32 and np.all(got == np.rint(got))
  # The same float32 ops; XLA may fuse them differently, so a value at a
  # rounding tie may land one grey level apart.
  diff = np.abs(got - host)
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_jitter_ranges_and_render_equal_the_host_step():
  keys = _keys()
  theta = np.asarray(device_augment.jitter_theta(keys, 10.0, 0.1, 0.2), float)
  linear, shift = theta[:, :, :2], theta[:, :, 2]
  # linear = R(a)^T / s, offset = -linear @ (2 * translation)
  scale = 1 / np.sqrt(np.linalg.det(linear))
  angle = np.degrees(np.arctan2(linear[:, 0, 1], linear[:, 0, 0]))
  translation = -np.linalg.solve(linear, shift[..., None])[..., 0] / 2
  _uniform_in(scale, 0.9, 1.1)
  _uniform_in(angle, -10, 10)
  _uniform_in(translation[:, 1], -0.2, 0.2)
  images = np.random.default_rng(0).integers(0, 256, (32, 9, 7, 3), np.uint8)
  step = device_augment.RandomAffine(10.0, 0.1, 0.2)
  index = jnp.arange(32, dtype=jnp.int32)
  zeros = jnp.zeros(32, jnp.int32)
  got = np.asarray(
    jax.jit(
      lambda x: step(x, sources=None, index=index, epoch=zeros, seed=zeros)
    )(images)
  )
  theta = device_augment.jitter_theta(
    device_augment.example_keys(
      zeros, index, zeros, device_augment._STREAM_JITTER
    ),
    10.0,
    0.1,
    0.2,
  )
  host = np.clip(
    np.rint(
      np.asarray(augment._warp(jnp.asarray(images, jnp.float32), theta, (9, 7)))
    ),
    0,
    255,
  )
  diff = np.abs(got - host)
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
  identity = device_augment.RandomAffine()
  np.testing.assert_array_equal(
    identity(images, sources=None, index=index, epoch=zeros, seed=zeros), images
  )


def _split(n=40):
  digits = _digits(n)[..., None]
  return {"image": digits, "label": np.arange(n) % 10}


def test_device_input_draws_per_example_epoch_and_seed_under_jit_and_vmap():
  arrays = _split()
  normalization = Normalization(mean=0.1, std=0.3)
  streams = [
    pipeline.DeviceInput(
      arrays,
      batch_size=8,
      seed=seed,
      normalization=normalization,
      augment=device_augment.OnTheFly("rts"),
    )
    for seed in (0, 1)
  ]
  data = streams[0].device_arrays(arrays)
  gather = jax.jit(streams[0].gather)
  epoch0 = streams[0].indices()
  batch = gather(data, epoch0)
  assert batch["image"].shape == (8, 42, 42, 1)
  np.testing.assert_array_equal(
    batch["label"], arrays["label"][epoch0["index"]]
  )
  # Whole grey levels, normalised: (v / 255 - 0.1) / 0.3.
  levels = (np.asarray(batch["image"]) * 0.3 + 0.1) * 255
  np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
  # The same example again: the same image; in a later epoch: another one.
  np.testing.assert_array_equal(gather(data, epoch0)["image"], batch["image"])
  later = dict(epoch0, epoch=epoch0["epoch"] + 1)
  assert not np.array_equal(gather(data, later)["image"], batch["image"])
  other_seed = dict(epoch0, seed=epoch0["seed"] + 1)
  assert not np.array_equal(gather(data, other_seed)["image"], batch["image"])
  # A population's members (vmapped, one seed each) get what each stream
  # alone gets; blocks of several steps too.
  blocks = [s.indices(3) for s in streams]
  stacked = jax.tree.map(lambda *x: np.stack(x), *blocks)
  together = jax.jit(jax.vmap(streams[0].gather, in_axes=(None, 0)))(
    data, stacked
  )
  for member, block in enumerate(blocks):
    alone = gather(data, block)
    np.testing.assert_array_equal(together["image"][member], alone["image"])
    single = gather(data, jax.tree.map(lambda x: x[2], block))
    np.testing.assert_array_equal(alone["image"][2], single["image"])


def test_configs_choose_where_augmentation_runs():
  config = GTSRB.get_config("small=true")
  config.augment_rotation = 10.0
  assert config.augment_on_device and config.data_on_device
  assert train.batches_on_device(config)
  step = train.device_preprocessing(config)
  assert isinstance(step, device_augment.RandomAffine) and step.rotation == 10.0
  config.augment_on_device = False
  assert not train.batches_on_device(config)
  mnist = MNIST.get_config("on_the_fly=true,small=true")
  assert isinstance(train.device_preprocessing(mnist), device_augment.OnTheFly)
  mnist.data_on_device = False  # everything on the host
  assert not train.batches_on_device(mnist)
  with pytest.raises(ValueError, match="seed must be an int"):
    pipeline.DeviceInput(_split(), batch_size=8, seed=-1)


def test_augment_on_device_is_part_of_an_augmented_runs_identity_only():
  plain = MNIST.get_config("small=true")
  saved = workdir._as_json(plain)
  saved.pop("augment_on_device")  # a run saved before the field existed
  assert workdir.config_differences(saved, plain) == []
  augmented = MNIST.get_config("on_the_fly=true,small=true")
  saved = workdir._as_json(augmented)
  saved.pop("augment_on_device")
  assert workdir.config_differences(saved, augmented) == [
    "augment_on_device: False -> True"
  ]


def _rts_config(tfds_dir, **overrides):
  config = MNIST.get_config("on_the_fly=true,model=st_cnn,small=true")
  return tiny(
    config,
    tfds_dir,
    train_dataset="distorted_mnist/plain",
    num_steps=12,
    log_every=4,
    checkpoint_every=6,
    eval_every=12,
    **overrides,
  )


def test_a_run_distorted_on_the_device_resumes_bitwise(tiny_tfds, tmp_path):
  straight = tmp_path / "straight"
  results = train.train_and_evaluate(_rts_config(tiny_tfds), str(straight))
  assert np.isfinite(results["test_error"])
  stopped = tmp_path / "stopped"
  out = train.train_and_evaluate(
    _rts_config(tiny_tfds), str(stopped), hooks=[hooks.SignalAtStep(6, 15)]
  )
  assert out == {"interrupted_at_step": 6, "signal": "SIGTERM"}
  train.train_and_evaluate(_rts_config(tiny_tfds), str(stopped))
  leaves = lambda w: jax.tree.leaves(stn_jax.restore(str(w)).model)
  for a, b in zip(leaves(straight), leaves(stopped)):
    np.testing.assert_array_equal(a, b)
  # The host stream is another stream: another run, refused on resume.
  with pytest.raises(workdir.WorkdirError, match="augment_on_device"):
    train.train_and_evaluate(
      _rts_config(tiny_tfds, augment_on_device=False), str(stopped)
    )
