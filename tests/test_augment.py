"""Random affine jitter: geometry against scipy, ranges, determinism, config."""

import numpy as np
import pytest
from conftest import GTSRB, MNIST
from scipy import ndimage

from stn_jax import train
from stn_jax.data import augment
from stn_jax.data.augment import RandomAffine


def test_jitter_resamples_like_scipy_affine_transform():
  rng = np.random.default_rng(0)
  size = 32
  images = ndimage.gaussian_filter(
    rng.uniform(0, 255, (6, size, size, 3)), (0, 1.5, 1.5, 0)
  ).astype(np.uint8)
  step = RandomAffine(rotation=15, scale=0.1, translate=0.1)
  theta = step.sample_theta(3, np.arange(6), 2)
  batch = {"image": images, "label": np.arange(6)}
  out = step(batch, arrays=None, indices=np.arange(6), epochs=2, seed=3)
  assert out["image"].dtype == np.uint8 and out["image"].shape == images.shape
  np.testing.assert_array_equal(out["label"], batch["label"])
  centre = (size - 1) / 2
  for k in range(6):
    # theta in pixels: x_in = L (x_out - c) + c + t * size / 2, in (x, y);
    # scipy wants (row, col) = (y, x)
    linear = theta[k, :, :2].astype(np.float64)[::-1, ::-1]
    offset = theta[k, ::-1, 2] * size / 2 + centre - linear @ [centre, centre]
    for c in range(3):
      want = ndimage.affine_transform(
        images[k, :, :, c].astype(np.float64),
        linear,
        offset=offset,
        order=1,
        mode="nearest",  # = border padding
      )
      np.testing.assert_allclose(out["image"][k, :, :, c], want, atol=1.01)


def test_drawn_parameters_cover_the_ranges_and_are_reproducible():
  step = RandomAffine(rotation=10, scale=0.2, translate=0.05)
  theta = step.sample_theta(0, np.arange(2000), 0).astype(np.float64)
  linear = theta[:, :, :2]
  scale = 1 / np.sqrt(np.linalg.det(linear))  # linear = R^T / s
  angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
  shift = -np.einsum("nij,nj->ni", np.linalg.inv(linear), theta[:, :, 2]) / 2
  for values, bound in ((np.abs(angle), 10), (np.abs(scale - 1), 0.2)):
    assert values.max() <= bound + 1e-4 and values.max() > 0.97 * bound
  assert np.abs(shift).max() <= 0.05 + 1e-6 and np.abs(shift).max() > 0.048
  # per example: the same (seed, index, epoch) gives the same draw
  again = step.sample_theta(0, [5, 3], [0, 0])
  np.testing.assert_array_equal(again, theta[[5, 3]].astype(np.float32))
  assert not np.allclose(step.sample_theta(0, [5], 1), theta[5])
  assert not np.allclose(step.sample_theta(1, [5], 0), theta[5])


def test_no_jitter_is_the_identity():
  images = np.random.default_rng(1).integers(0, 256, (3, 9, 7, 2), np.uint8)
  out = RandomAffine()(
    {"image": images}, arrays=None, indices=[0, 1, 2], epochs=0, seed=0
  )
  np.testing.assert_array_equal(out["image"], images)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(rotation=-1), "rotation"),
    (dict(scale=1.0), "scale"),
    (dict(translate=float("nan")), "translate"),
  ],
)
def test_bad_ranges_are_named(kwargs, name):
  with pytest.raises(ValueError, match=f"augmentation {name} must be"):
    RandomAffine(**kwargs)


def test_configs_choose_the_step():
  config = GTSRB.get_config("small=true")
  assert train.preprocessing(config) is None
  config.augment_rotation = 10.0
  config.augment_translate = 0.1
  step = train.preprocessing(config)
  assert isinstance(step, augment.RandomAffine)
  assert (step.rotation, step.scale, step.translate) == (10.0, 0.0, 0.1)
  config.augment_scale = 2.0
  with pytest.raises(ValueError, match="augmentation scale must be"):
    train.validate_config(config)
  mnist = MNIST.get_config("on_the_fly=true,small=true")
  mnist.augment_rotation = 5.0
  with pytest.raises(ValueError, match="cannot be combined"):
    train.validate_config(mnist)
