"""The distorted-MNIST protocol: ranges, identities, determinism."""

import numpy as np
import pytest

import stn_jax
from stn_jax.data import distortions as D


def bar_image():
  """A horizontal bar through the centre: its orientation is measurable."""
  image = np.zeros((1, 28, 28), np.uint8)
  image[0, 13:15, 6:22] = 255
  return image


def orientation_degrees(image):
  """Principal-axis angle of an image's mass, in (-90, 90], y down."""
  ys, xs = np.nonzero(image > 64)
  weights = image[ys, xs].astype(float)
  x = xs - np.average(xs, weights=weights)
  y = ys - np.average(ys, weights=weights)
  cov = np.cov(np.stack([x, y]), aweights=weights)
  return np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))


def test_rotation_recovered_from_a_known_pattern_is_in_range():
  for index in range(20):
    params = D.sample_batch_params("r", 0, "test", [index])
    theta = params["theta"][0]
    angle = np.degrees(np.arctan2(theta[1, 0], theta[0, 0]))
    assert -90 <= angle <= 90
    rendered = D.render("r", bar_image(), params)[0]
    # The grid maps output to input, so the output bar is rotated by -angle
    # in image coordinates (y down): measured orientation = -angle mod 180.
    measured = orientation_degrees(rendered)
    difference = (measured + angle + 90) % 180 - 90
    assert abs(difference) < 4, (index, angle, measured)


def test_rts_parameters_are_within_the_protocol():
  params = D.sample_batch_params("rts", 3, "train", range(300))
  theta = params["theta"].astype(np.float64)
  linear = theta[:, :, :2]
  scale_inverse = np.sqrt(np.abs(np.linalg.det(linear)))  # = 1.5 / s
  scale = 42 / 28 / scale_inverse
  assert scale.min() >= 0.7 - 1e-5 and scale.max() <= 1.2 + 1e-5
  angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
  assert np.abs(angle).max() <= 45 + 1e-4
  # The digit's centre (where the grid reads digit coordinate 0) stays on
  # the canvas, far enough from the edge for the digit.
  centre = -np.linalg.solve(linear, theta[:, :, 2:])[..., 0]
  assert np.abs(centre).max() < 1 - 24 * 0.7 / 42 + 1e-6
  assert np.ptp(scale) > 0.4 and np.ptp(angle) > 70  # really random


def test_projective_and_tps_identity_parameters_reproduce_the_digit():
  digits = np.random.default_rng(0).integers(
    0, 256, (3, 28, 28), dtype=np.uint8
  )
  identity_h = {"homography": np.tile(np.eye(3, dtype=np.float32), (3, 1, 1))}
  identity_tps = {
    "control_points": np.tile(stn_jax.tps_source_points(16), (3, 1, 1))
  }
  np.testing.assert_array_equal(D.render("p", digits, identity_h), digits)
  tps = D.render("e", digits, identity_tps).astype(int)
  assert np.abs(tps - digits).max() <= 1  # float64 TPS solve, then rounding


def test_p_and_e_perturbations_have_the_configured_size():
  params = D.sample_batch_params("e", 0, "train", range(200))
  control = params["control_points"].astype(np.float64)
  source = stn_jax.tps_source_points(16)
  # control = (source + noise) / s with s in [0.75, 1]: fit s per example
  scale = (source * source).sum() / (control * source).sum(axis=(1, 2))
  noise_px = (control * scale[:, None, None] - source) * 14
  assert scale.min() > 0.7 and scale.max() < 1.05
  assert 1.2 < noise_px.std() < 1.8  # sigma 1.5 px
  homographies = D.sample_batch_params("p", 0, "train", range(200))[
    "homography"
  ]
  assert np.all(homographies[:, 2, 2] == 1)


def test_distortions_are_deterministic_per_example():
  a = D.sample_batch_params("tc", 7, "test", [5, 6, 7], num_sources=100)
  b = D.sample_batch_params("tc", 7, "test", [7, 5, 6], num_sources=100)
  np.testing.assert_array_equal(a["theta"], b["theta"][[1, 2, 0]])
  c = D.sample_batch_params("tc", 8, "test", [5, 6, 7], num_sources=100)
  assert not np.allclose(a["theta"], c["theta"])
  epoch0 = D.sample_params("rts", D.example_rng(0, "train", 3, epoch=0))
  epoch1 = D.sample_params("rts", D.example_rng(0, "train", 3, epoch=1))
  fixed = D.sample_params("rts", D.example_rng(0, "train", 3))
  assert not np.allclose(epoch0["theta"], epoch1["theta"])
  assert not np.allclose(epoch0["theta"], fixed["theta"])


def test_tc_clutter_comes_from_other_digits_and_stays_on_the_canvas():
  params = D.sample_batch_params("tc", 0, "train", range(50), num_sources=50)
  clutter = params["clutter"]
  assert np.all(clutter[:, :, 0] != np.arange(50)[:, None])
  assert clutter[:, :, 3:].max() <= 60 - 6 and clutter.min() >= 0
  digits = np.zeros((50, 28, 28), np.uint8)
  digits[:, 10:18, 10:18] = 200
  images = D.render("tc", digits, params, clutter_sources=digits)
  assert images.shape == (50, 60, 60)
  # the digit (64 bright pixels) plus some clutter
  assert np.all((images > 0).sum(axis=(1, 2)) >= 64)


@pytest.mark.parametrize("variant", D.VARIANTS)
def test_render_shapes_and_dtype(variant):
  digits = np.random.default_rng(1).integers(
    0, 256, (5, 28, 28), dtype=np.uint8
  )
  params = D.sample_batch_params(variant, 0, "test", range(5), num_sources=5)
  images = D.render(variant, digits, params, clutter_sources=digits)
  size = D.IMAGE_SIZE[variant]
  assert images.shape == (5, size, size) and images.dtype == np.uint8
  for name, shape in D.PARAM_SHAPES[variant].items():
    assert params[name].shape == (5, *shape)


def test_bad_arguments():
  with pytest.raises(ValueError, match="variant must be one of"):
    D.sample_params("rotate", np.random.default_rng(0))
  with pytest.raises(ValueError, match="split must be one of"):
    D.example_rng(0, "dev", 0)
  with pytest.raises(ValueError, match=r"digits must have shape \(B, 28, 28\)"):
    D.render(
      "r",
      np.zeros((2, 32, 32), np.uint8),
      {"theta": np.zeros((2, 2, 3), np.float32)},
    )
