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


def test_tc_clutter_is_cut_from_anywhere_and_stays_on_the_canvas():
  params = D.sample_batch_params("tc", 0, "train", range(400), num_sources=50)
  clutter = params["clutter"]
  assert clutter[:, :, 0].min() == 0 and clutter[:, :, 0].max() == 49
  # crops from the whole 28x28 digit, as DeepMind's generator takes them
  assert clutter[:, :, 1:3].min() == 0 and clutter[:, :, 1:3].max() == 28 - 6
  assert clutter[:, :, 3:].min() == 0 and clutter[:, :, 3:].max() == 60 - 6


def test_tc_clutter_is_added_and_clamped_like_deepminds_generator():
  rng = np.random.default_rng(0)
  digits = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
  params = D.sample_batch_params("tc", 1, "test", range(20), num_sources=20)
  images = D.render("tc", digits, params, clutter_sources=digits)
  # the generator, in [0, 1] floats: sum the crops, clamp, add the digit,
  # clamp (github.com/deepmind/mnist-cluttered, mnist_cluttered.lua)
  digit_only = D.render(
    "tc",
    digits,
    {**params, "clutter": params["clutter"][:, :0]},
    clutter_sources=digits,
  )
  for b in range(20):
    canvas = np.zeros((60, 60))
    for source, cy, cx, y, x in params["clutter"][b]:
      canvas[y : y + 6, x : x + 6] += digits[source, cy : cy + 6, cx : cx + 6]
    canvas = np.minimum(canvas / 255, 1)
    canvas = np.clip(canvas + digit_only[b] / 255, 0, 1) * 255
    np.testing.assert_allclose(images[b], canvas, atol=1e-9)


def test_convex_quadrilateral_check():
  square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
  assert D.is_convex_quadrilateral(square)
  assert D.is_convex_quadrilateral(square[::-1])  # other orientation
  assert not D.is_convex_quadrilateral(square[[0, 2, 1, 3]])  # a bow tie
  dart = np.array([[-1, -1], [1, -1], [0, -0.5], [-1, 1]])
  assert not D.is_convex_quadrilateral(dart)
  assert not D.is_convex_quadrilateral([[0, 0], [1, 0], [2, 0], [0, 1]])


def test_p_output_corners_read_scaled_and_jittered_convex_points():
  from scipy.spatial import ConvexHull

  homographies = D.sample_batch_params("p", 0, "test", range(2000))[
    "homography"
  ].astype(np.float64)
  assert np.all(homographies[:, 2, 2] == 1)
  corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
  # where each output corner reads the digit: q_i = H (c_i, 1)
  mapped = np.einsum("nij,kj->nki", homographies, np.c_[corners, np.ones(4)])
  reads = mapped[..., :2] / mapped[..., 2:]
  # q_i = c_i / s + n_i: least squares 1/s, then the noise in digit pixels
  inverse_scale = (reads * corners).sum((1, 2)) / (corners * corners).sum()
  noise_px = (reads - inverse_scale[:, None, None] * corners) * 14
  # E[1/s] for s ~ U(0.75, 1) is 4 ln(4/3); the fit's own noise is
  # 5 px / sqrt(8) = 0.13 per example, so only the mean is sharp
  assert abs(inverse_scale.mean() - 4 * np.log(4 / 3)) < 0.02
  assert 4.5 < noise_px.std() * np.sqrt(8 / 7) < 5.5  # sigma 5 px
  # the input frame as the output sees it: in front of the horizon
  seen = np.einsum(
    "nij,kj->nki", np.linalg.inv(homographies), np.c_[corners, np.ones(4)]
  )
  assert np.all(seen[..., 2] > 0)
  for quad in [*reads[:300], *(seen[:300, :, :2] / seen[:300, :, 2:])]:
    hull = ConvexHull(quad).vertices  # convex, in order: all 4 on the hull
    assert len(hull) == 4
    start = list(hull).index(0)
    assert list(np.roll(hull, -start)) in ([0, 1, 2, 3], [0, 3, 2, 1])


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
