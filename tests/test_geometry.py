"""Pixel geometry: conversions, warps and crops against OpenCV and scipy.

References:
* OpenCV (``cv2.warpAffine``/``warpPerspective``). OpenCV 4 quantises the
  sample point to 1/32 pixel (after 1/1024 fixed-point rounding) on most
  paths, so linear warps are compared within ``(gx + gy) * (1/64 + 1/1024)``
  (+1e-5), where ``gx``/``gy`` are the largest horizontal/vertical
  neighbour differences of the image padded as OpenCV pads it: bilinear
  interpolation is Lipschitz with those constants along each axis.
* scipy.ndimage (``affine_transform``/``map_coordinates``, order 0/1), in
  float64 without quantisation: compared within 1e-5.
* NumPy written from the definitions (``reference.py`` and below).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
import scipy.ndimage as ndi
from conftest import check_gradients_under_jit, check_jit_vmap_and_unbatched
from jax.test_util import check_grads

import stn_jax

cv2 = pytest.importorskip("cv2")

# Our padding mode -> (OpenCV border, scipy.ndimage mode).
BORDERS = {
  "fill": (cv2.BORDER_CONSTANT, "grid-constant"),
  "border": (cv2.BORDER_REPLICATE, "nearest"),
  "reflection": (cv2.BORDER_REFLECT, "reflect"),
}
FILL = 0.3
QUANTUM = 1 / 64 + 1 / 1024  # OpenCV's worst sample-point error, pixels.


def random_image(shape, seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def random_affine(n, seed=0, centre=(9.0, 8.0)):
  """Rotation, anisotropic scale, shear and shift about a centre (pixels)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    angle = rng.uniform(-np.pi, np.pi)
    rotation = np.array(
      [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    linear = rotation @ np.array(
      [
        [rng.uniform(0.7, 1.3), rng.uniform(-0.2, 0.2)],
        [0, rng.uniform(0.7, 1.3)],
      ]
    )
    shift = np.asarray(centre) - linear @ centre + rng.normal(scale=2, size=2)
    out.append(np.concatenate([linear, shift[:, None]], 1))
  return np.stack(out).astype(np.float32)


def random_homography(n, seed=0, size=(18, 20)):
  """Maps the image's corners to randomly moved corners (pixels)."""
  h, w = size
  corners = np.array(
    [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64
  )
  rng = np.random.default_rng(seed)
  out = [
    cv2.getPerspectiveTransform(
      corners.astype(np.float32),
      (corners + rng.normal(scale=2.5, size=(4, 2))).astype(np.float32),
    )
    for _ in range(n)
  ]
  return np.stack(out).astype(np.float32)


def lipschitz_bound(image, padding_mode):
  """(gx, gy) of one (H, W, C) image padded by OpenCV's rule (2 pixels)."""
  border, _ = BORDERS[padding_mode]
  padded = cv2.copyMakeBorder(image, 2, 2, 2, 2, border, value=(FILL,) * 4)
  padded = padded.reshape(*padded.shape[:2], -1)
  return (
    np.abs(np.diff(padded, axis=1)).max(),
    np.abs(np.diff(padded, axis=0)).max(),
  )


def scipy_affine(
  image, matrix, out_size, mode="grid-constant", order=1, cval=FILL
):
  """Float64 reference: scipy maps output (row, col) to input (row, col)."""
  backward = np.linalg.inv(
    np.vstack([np.asarray(matrix, np.float64), [0, 0, 1]])
  )
  a, b = backward[:2, :2], backward[:2, 2]
  rc_matrix = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])
  rc_offset = np.array([b[1], b[0]])
  return np.stack(
    [
      ndi.affine_transform(
        np.asarray(image[..., c], np.float64),
        rc_matrix,
        rc_offset,
        output_shape=out_size,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    -1,
  )


def scipy_perspective(
  image, homography, out_size, mode="grid-constant", cval=FILL
):
  """Float64 reference: source points of the output pixels, then scipy."""
  h, w = out_size
  x, y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h))
  uvw = np.einsum(
    "ij,jhw->ihw",
    np.linalg.inv(np.asarray(homography, np.float64)),
    np.stack([x, y, np.ones_like(x)]),
  )
  coordinates = np.stack([uvw[1] / uvw[2], uvw[0] / uvw[2]])  # (row, col)
  return np.stack(
    [
      ndi.map_coordinates(
        np.asarray(image[..., c], np.float64),
        coordinates,
        order=1,
        mode=mode,
        cval=cval,
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    -1,
  )


# --------------------------------------------------------------------------
# Conversions between pixel and normalised matrices.

SIZE_PAIRS = [
  ((5, 7), (6, 4)),
  ((1, 1), (3, 2)),
  ((8, 8), (1, 5)),
  ((16, 12), (16, 12)),
]


def pixel_points(size):
  """(H, W, 3) homogeneous pixel centres (x = column, y = row)."""
  h, w = size
  x, y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h))
  return np.stack([x, y, np.ones_like(x)], -1)


def grid_in_pixels(grid, in_size, align_corners):
  h, w = in_size
  grid = np.asarray(grid, np.float64)
  return np.stack(
    [
      reference.pixel_coordinate(grid[..., 0], w, align_corners),
      reference.pixel_coordinate(grid[..., 1], h, align_corners),
    ],
    -1,
  )


@pytest.mark.parametrize("in_size,out_size", SIZE_PAIRS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_to_theta_grid_reads_the_inverse_mapped_pixels(
  in_size, out_size, align_corners
):
  # Output pixel centre q reads source pixel inv(M) q: checked through
  # affine_grid and the reference's own normalised -> pixel rule.
  matrix = random_affine(3, seed=1)
  theta = stn_jax.pixel_to_theta(
    matrix, in_size, out_size, align_corners=align_corners
  )
  grid = stn_jax.affine_grid(theta, out_size, align_corners=align_corners)
  got = grid_in_pixels(grid, in_size, align_corners)
  for n in range(3):
    backward = np.linalg.inv(
      np.vstack([matrix[n].astype(np.float64), [0, 0, 1]])
    )
    want = pixel_points(out_size) @ backward[:2].T
    for axis, size in ((0, in_size[1]), (1, in_size[0])):
      if align_corners and size == 1:
        continue  # every coordinate reads the single pixel
      np.testing.assert_allclose(
        got[n, ..., axis], want[..., axis], atol=2e-4 * max(in_size + out_size)
      )


@pytest.mark.parametrize("in_size,out_size", SIZE_PAIRS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_round_trips(in_size, out_size, align_corners):
  matrix = random_affine(3, seed=2)
  kwargs = dict(in_size=in_size, out_size=out_size, align_corners=align_corners)
  theta = stn_jax.pixel_to_theta(matrix, **kwargs)
  np.testing.assert_allclose(
    stn_jax.theta_to_pixel(theta, **kwargs), matrix, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    stn_jax.pixel_to_theta(stn_jax.theta_to_pixel(theta, **kwargs), **kwargs),
    theta,
    rtol=1e-4,
    atol=1e-4,
  )


@pytest.mark.parametrize("in_size,out_size", SIZE_PAIRS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_homography_conversions(in_size, out_size, align_corners):
  homography = random_homography(3, seed=3)
  kwargs = dict(in_size=in_size, out_size=out_size, align_corners=align_corners)
  normalized = stn_jax.pixel_to_normalized_homography(homography, **kwargs)
  back = np.asarray(
    stn_jax.normalized_to_pixel_homography(normalized, **kwargs)
  )
  np.testing.assert_allclose(
    back / back[:, 2:, 2:], homography, rtol=1e-4, atol=1e-4
  )
  # The grid reads the inverse-mapped pixel centres.
  got = grid_in_pixels(
    stn_jax.projective_grid(normalized, out_size, align_corners=align_corners),
    in_size,
    align_corners,
  )
  for n in range(3):
    uvw = (
      pixel_points(out_size) @ np.linalg.inv(homography[n].astype(np.float64)).T
    )
    want = uvw[..., :2] / uvw[..., 2:]
    for axis, size in ((0, in_size[1]), (1, in_size[0])):
      if not (align_corners and size == 1):
        np.testing.assert_allclose(
          got[n, ..., axis],
          want[..., axis],
          atol=2e-4 * max(in_size + out_size),
        )
  # An affine homography converts like pixel_to_theta.
  affine = random_affine(2, seed=4)
  as_homography = np.concatenate(
    [affine, np.tile([[[0, 0, 1]]], (2, 1, 1))], 1
  ).astype(np.float32)
  normalized = stn_jax.pixel_to_normalized_homography(as_homography, **kwargs)
  np.testing.assert_allclose(
    normalized[:, :2] / normalized[:, 2:, 2:],
    stn_jax.pixel_to_theta(affine, **kwargs),
    atol=1e-5,
  )


@pytest.mark.parametrize("align_corners", [False, True])
def test_normalize_points(align_corners):
  size = (5, 8)
  h, w = size
  x, y = np.meshgrid(
    np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
  )
  pixels = np.stack([x, y], -1)
  got = stn_jax.normalize_points(pixels, size, align_corners=align_corners)
  ys = reference.normalised_centres(h, align_corners)
  xs = reference.normalised_centres(w, align_corners)
  np.testing.assert_allclose(
    got[..., 0], np.broadcast_to(xs, (h, w)), atol=1e-6
  )
  np.testing.assert_allclose(
    got[..., 1], np.broadcast_to(ys[:, None], (h, w)), atol=1e-6
  )
  np.testing.assert_allclose(
    stn_jax.denormalize_points(got, size, align_corners=align_corners),
    pixels,
    atol=1e-5,
  )


def test_invert_affine_matches_numpy():
  matrix = random_affine(4, seed=5)
  got = stn_jax.invert_affine(matrix)
  for n in range(4):
    want = np.linalg.inv(np.vstack([matrix[n], [0, 0, 1]]))[:2]
    np.testing.assert_allclose(got[n], want, atol=1e-5)
  np.testing.assert_allclose(stn_jax.invert_affine(got), matrix, atol=1e-5)
  assert not np.all(
    np.isfinite(
      stn_jax.invert_affine(np.array([[1, 2, 0], [2, 4, 0]], np.float32))
    )
  )


# --------------------------------------------------------------------------
# Warps.


def opencv(function, image, matrix, out_size, flags, padding_mode):
  border, _ = BORDERS[padding_mode]
  out = function(
    image,
    np.asarray(matrix, np.float64),
    (out_size[1], out_size[0]),
    flags=flags,
    borderMode=border,
    borderValue=(FILL,) * 4,
  )
  return out.reshape(*out_size, -1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("padding_mode", list(BORDERS))
def test_warp_affine_matches_scipy_and_opencv(padding_mode, channels):
  image = random_image((3, 16, 18, channels), seed=6)
  matrix = random_affine(3, seed=7)
  out_size = (14, 20)
  got = np.asarray(
    jax.jit(
      functools.partial(
        stn_jax.warp_affine,
        out_size=out_size,
        padding_mode=padding_mode,
        fill_value=FILL,
      )
    )(image, matrix)
  )
  assert got.shape == (3, *out_size, channels)
  for n in range(3):
    _, scipy_mode = BORDERS[padding_mode]
    want = scipy_affine(image[n], matrix[n], out_size, mode=scipy_mode)
    np.testing.assert_allclose(got[n], want, atol=1e-5, rtol=0)
    want = opencv(
      cv2.warpAffine,
      image[n],
      matrix[n],
      out_size,
      cv2.INTER_LINEAR,
      padding_mode,
    )
    gx, gy = lipschitz_bound(image[n], padding_mode)
    np.testing.assert_array_less(
      np.abs(got[n] - want), (gx + gy) * QUANTUM + 1e-5
    )


def test_warp_affine_zeros_padding_is_fill_zero():
  image = random_image((2, 10, 9, 2), seed=8)
  matrix = random_affine(2, seed=9, centre=(4, 5))
  zeros = stn_jax.warp_affine(image, matrix, (11, 8))
  np.testing.assert_allclose(
    zeros,
    stn_jax.warp_affine(
      image, matrix, (11, 8), padding_mode="fill", fill_value=0.0
    ),
    atol=1e-7,
  )
  for n in range(2):
    np.testing.assert_allclose(
      zeros[n], scipy_affine(image[n], matrix[n], (11, 8), cval=0.0), atol=1e-5
    )


@pytest.mark.parametrize("padding_mode", list(BORDERS))
def test_warp_affine_nearest_equals_opencv_exactly(padding_mode):
  # Sample points at 1/8 or 7/8 of a pixel: no rounding ties, and exact
  # under OpenCV's quantisation.
  image = random_image((1, 12, 10, 2), seed=10)
  matrix = np.array([[[0, -0.5, 3.0625], [0.5, 0, 1.03125]]], np.float32)
  got = stn_jax.warp_affine(
    image,
    matrix,
    (9, 13),
    mode="nearest",
    padding_mode=padding_mode,
    fill_value=FILL,
  )
  want = opencv(
    cv2.warpAffine,
    image[0],
    matrix[0],
    (9, 13),
    cv2.INTER_NEAREST,
    padding_mode,
  )
  np.testing.assert_array_equal(got[0], want)
  _, scipy_mode = BORDERS[padding_mode]
  np.testing.assert_allclose(
    got[0],
    scipy_affine(image[0], matrix[0], (9, 13), mode=scipy_mode, order=0),
    atol=1e-7,
  )


def keys_lipschitz():
  """max_t sum_i |k'(t - i)| * max_t sum_i |k(t - i)| of the Keys kernel."""
  t = np.linspace(0, 1, 2001)[:, None] + np.arange(-2, 2)[None]
  eps = 1e-6
  derivative = (
    reference.keys_kernel(t + eps) - reference.keys_kernel(t - eps)
  ) / (2 * eps)
  return (
    np.abs(derivative).sum(1).max()
    * np.abs(reference.keys_kernel(t)).sum(1).max()
  )


@pytest.mark.parametrize("padding_mode", list(BORDERS))
def test_warp_affine_bicubic_matches_opencv_and_reference(padding_mode):
  image = random_image((2, 12, 13, 3), seed=11)
  matrix = random_affine(2, seed=12, centre=(6, 6))
  got = np.asarray(
    stn_jax.warp_affine(
      image,
      matrix,
      (10, 11),
      mode="bicubic",
      padding_mode=padding_mode,
      fill_value=FILL,
    )
  )
  for n in range(2):
    want = opencv(
      cv2.warpAffine,
      image[n],
      matrix[n],
      (10, 11),
      cv2.INTER_CUBIC,
      padding_mode,
    )
    # Values (and fill) lie in [0, 1] and sum_i k'(t - i) = 0, so the slope
    # along each axis is at most keys_lipschitz() * (1 - 0) / 2.
    bound = 2 * keys_lipschitz() / 2 * QUANTUM + 1e-5
    np.testing.assert_array_less(np.abs(got[n] - want), bound)
  if padding_mode != "fill":
    # The NumPy reference from the definition, through pixel_to_theta.
    theta = stn_jax.pixel_to_theta(matrix, (12, 13), (10, 11))
    grid = reference.affine_grid(theta, (10, 11))
    want = reference.grid_sample(image, grid, "bicubic", padding_mode)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("padding_mode", list(BORDERS))
def test_warp_perspective_matches_scipy_and_opencv(padding_mode):
  image = random_image((3, 18, 20, 2), seed=13)
  homography = random_homography(3, seed=14)
  out_size = (17, 21)
  got = np.asarray(
    jax.jit(
      functools.partial(
        stn_jax.warp_perspective,
        out_size=out_size,
        padding_mode=padding_mode,
        fill_value=FILL,
      )
    )(image, homography)
  )
  for n in range(3):
    _, scipy_mode = BORDERS[padding_mode]
    want = scipy_perspective(image[n], homography[n], out_size, scipy_mode)
    np.testing.assert_allclose(got[n], want, atol=1e-5, rtol=0)
    want = opencv(
      cv2.warpPerspective,
      image[n],
      homography[n],
      out_size,
      cv2.INTER_LINEAR,
      padding_mode,
    )
    gx, gy = lipschitz_bound(image[n], padding_mode)
    np.testing.assert_array_less(
      np.abs(got[n] - want), (gx + gy) * QUANTUM + 1e-5
    )


def ramp(n, size, seed=0):
  """Images linear in (x, y): bilinear interpolation reproduces them."""
  h, w = size
  rng = np.random.default_rng(seed)
  x, y = np.meshgrid(np.arange(w), np.arange(h))
  coefficients = rng.normal(size=(n, 3, 2))
  return (
    coefficients[:, None, None, 0] * x[None, ..., None]
    + coefficients[:, None, None, 1] * y[None, ..., None]
    + coefficients[:, None, None, 2]
  ).astype(np.float32)


def inside(points, size, margin):
  h, w = size
  return (
    (points[..., 0] >= margin)
    & (points[..., 0] <= w - 1 - margin)
    & (points[..., 1] >= margin)
    & (points[..., 1] <= h - 1 - margin)
  )


def test_warp_then_inverse_warp_reproduces_the_image():
  size = (20, 22)
  image = ramp(2, size, seed=15)
  matrix = random_affine(2, seed=16, centre=(10.5, 9.5))
  there = stn_jax.warp_affine(image, matrix, size)
  back = np.asarray(
    stn_jax.warp_affine(there, stn_jax.invert_affine(matrix), size)
  )
  # Affine maps keep the ramp linear, so the round trip is exact. A
  # homography does not (the intermediate image is a ratio of linear
  # functions): the round trip equals scipy's float64 round trip, and the
  # image up to the interpolation error of that curvature (< 0.05 here).
  homography = random_homography(2, seed=17, size=size)
  inverse = np.linalg.inv(homography)
  there_p = stn_jax.warp_perspective(image, homography, size)
  back_p = np.asarray(stn_jax.warp_perspective(there_p, inverse, size))
  for n in range(2):
    # Pixels q whose forward image M q is 1 pixel inside (so its 4 taps are
    # inside), and q 2 pixels inside (so are the taps those taps read).
    forward = pixel_points(size) @ np.vstack([matrix[n], [0, 0, 1]]).T
    keep = inside(forward[..., :2], size, 1) & inside(
      pixel_points(size), size, 2
    )
    assert keep.sum() > 100
    np.testing.assert_allclose(back[n][keep], image[n][keep], atol=1e-4)
    uvw = pixel_points(size) @ homography[n].astype(np.float64).T
    keep = inside(uvw[..., :2] / uvw[..., 2:], size, 1) & inside(
      pixel_points(size), size, 2
    )
    assert keep.sum() > 100
    want = scipy_perspective(
      scipy_perspective(
        image[n], homography[n], size, "grid-constant", cval=0.0
      ),
      inverse[n],
      size,
      "grid-constant",
      cval=0.0,
    )
    np.testing.assert_allclose(back_p[n], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(back_p[n][keep], image[n][keep], atol=0.05)
  # A quarter turn about the centre permutes pixels: exact both ways, any
  # mode.
  square = random_image((1, 9, 9, 2), seed=18)
  turn = stn_jax.rotation_matrix(
    np.array([[4.0, 4.0]], np.float32), np.array([90.0], np.float32)
  )
  # As a homography at another scale (any scale is the same map).
  turn_h = 2.5 * np.concatenate([turn, [[[0, 0, 1]]]], 1).astype(np.float32)
  for mode in stn_jax.MODES:
    rotated = stn_jax.warp_affine(square, turn, (9, 9), mode=mode)
    np.testing.assert_allclose(rotated[0], np.rot90(square[0]), atol=1e-5)
    np.testing.assert_allclose(
      stn_jax.warp_affine(
        rotated, stn_jax.invert_affine(turn), (9, 9), mode=mode
      ),
      square,
      atol=1e-5,
    )
    rotated = stn_jax.warp_perspective(square, turn_h, (9, 9), mode=mode)
    np.testing.assert_allclose(rotated[0], np.rot90(square[0]), atol=1e-5)
    np.testing.assert_allclose(
      stn_jax.warp_perspective(
        rotated, np.linalg.inv(turn_h), (9, 9), mode=mode
      ),
      square,
      atol=1e-5,
    )


def test_fill_value_outside_per_channel_and_traced():
  image = random_image((2, 6, 5, 3), seed=19)
  far = np.tile(np.array([[1, 0, 100.0], [0, 1, 100.0]], np.float32), (2, 1, 1))
  fill = np.array([0.5, -1.0, 2.0], np.float32)
  out = stn_jax.warp_affine(
    image, far, (4, 4), padding_mode="fill", fill_value=fill
  )
  np.testing.assert_allclose(out, np.broadcast_to(fill, out.shape), atol=1e-6)
  jitted = jax.jit(
    lambda f: stn_jax.warp_affine(
      image, far, (4, 4), padding_mode="fill", fill_value=f
    )
  )
  np.testing.assert_allclose(jitted(jnp.float32(7.0)), 7.0, atol=1e-6)


@pytest.mark.parametrize("mode", stn_jax.MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_fill_equals_sampling_a_constant_padded_image(
  mode, align_corners
):
  # OpenCV's BORDER_CONSTANT definition: every tap outside reads the fill.
  # Pad by 3 pixels of fill, sample the padded image with zeros padding at
  # the same pixel positions (grid kept within the pad's reach).
  image = random_image((2, 6, 7, 2), seed=20)
  grid = (
    np.random.default_rng(21)
    .uniform(-1.3, 1.3, (2, 5, 8, 2))
    .astype(np.float32)
  )
  got = stn_jax.grid_sample(
    image,
    grid,
    mode=mode,
    padding_mode="fill",
    fill_value=FILL,
    align_corners=align_corners,
  )
  pad = 3
  padded = np.pad(
    image, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=FILL
  )
  h, w = image.shape[1:3]
  px = (
    reference.pixel_coordinate(
      grid[..., 0].astype(np.float64), w, align_corners
    )
    + pad
  )
  py = (
    reference.pixel_coordinate(
      grid[..., 1].astype(np.float64), h, align_corners
    )
    + pad
  )
  # Back to normalised coordinates of the padded image (align_corners=False).
  padded_grid = np.stack(
    [(2 * px + 1) / (w + 2 * pad) - 1, (2 * py + 1) / (h + 2 * pad) - 1], -1
  )
  want = reference.grid_sample(padded, padded_grid, mode, "zeros", False)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_grid_sample_fill_nan_points_read_zero():
  image = random_image((1, 4, 4, 1), seed=22)
  grid = np.array([[[[np.nan, 0.0], [5.0, 5.0]]]], np.float32)
  out = stn_jax.grid_sample(image, grid, padding_mode="fill", fill_value=2.0)
  np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 2.0])


def test_torch_padding_modes_unchanged():
  assert stn_jax.PADDING_MODES == ("zeros", "border", "reflection")
  assert set(stn_jax.ALL_PADDING_MODES) == {*stn_jax.PADDING_MODES, "fill"}


# --------------------------------------------------------------------------
# crop_and_resize.


def crop_reference(image, boxes, out_size, align_corners, order=1):
  """From the docstring's definition, with scipy map_coordinates."""
  h, w = out_size
  out = np.zeros((*boxes.shape[:2], h, w, image.shape[-1]))
  for n in range(boxes.shape[0]):
    for k in range(boxes.shape[1]):
      x1, y1, x2, y2 = boxes[n, k].astype(np.float64)
      if align_corners:
        tx = np.arange(w) / (w - 1) if w > 1 else np.array([0.5])
        ty = np.arange(h) / (h - 1) if h > 1 else np.array([0.5])
      else:
        tx, ty = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
      xs, ys = np.meshgrid(x1 + tx * (x2 - x1), y1 + ty * (y2 - y1))
      for c in range(image.shape[-1]):
        out[n, k, ..., c] = ndi.map_coordinates(
          image[n, ..., c].astype(np.float64),
          [ys, xs],
          order=order,
          mode="grid-constant",
          cval=FILL,
          prefilter=False,
        )
  return out


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("out_size", [(5, 7), (1, 4)])
def test_crop_and_resize_matches_the_definition(align_corners, out_size):
  image = random_image((2, 15, 17, 3), seed=23)
  rng = np.random.default_rng(24)
  corner = rng.uniform(-3, 12, size=(2, 4, 2))
  boxes = np.concatenate(
    [corner, corner + rng.uniform(1, 8, (2, 4, 2))], -1
  ).astype(np.float32)
  boxes[0, 0] = [6, 9, 2, 3]  # flipped: a mirrored glimpse
  got = stn_jax.crop_and_resize(
    image,
    boxes,
    out_size,
    padding_mode="fill",
    fill_value=FILL,
    align_corners=align_corners,
  )
  assert got.shape == (2, 4, *out_size, 3)
  np.testing.assert_allclose(
    got, crop_reference(image, boxes, out_size, align_corners), atol=1e-5
  )


def test_crop_and_resize_whole_image_and_outside_boxes():
  image = random_image((1, 8, 6, 2), seed=25)
  boxes = np.array(
    [[[-0.5, -0.5, 5.5, 7.5], [0, 0, 5, 7], [40, 40, 50, 50]]], np.float32
  )
  out = stn_jax.crop_and_resize(
    image, boxes, (8, 6), padding_mode="fill", fill_value=FILL
  )
  np.testing.assert_allclose(out[0, 0], image[0], atol=1e-5)
  corners = stn_jax.crop_and_resize(image, boxes, (8, 6), align_corners=True)
  np.testing.assert_allclose(corners[0, 1], image[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 2], FILL, atol=1e-6)
  np.testing.assert_allclose(corners[0, 2], 0.0, atol=1e-6)
  # Cells 2 pixels wide from 0: centres at odd pixels.
  nearest = stn_jax.crop_and_resize(
    image, np.array([[[0, 0, 6, 8]]], np.float32), (4, 3), mode="nearest"
  )
  np.testing.assert_allclose(nearest[0, 0], image[0, 1::2, 1::2], atol=1e-7)


def test_crop_and_resize_unbatched_vmap_and_jit():
  image = random_image((3, 9, 10, 2), seed=26)
  boxes = np.random.default_rng(27).uniform(0, 9, (3, 2, 4)).astype(np.float32)
  fn = functools.partial(stn_jax.crop_and_resize, out_size=(4, 3))
  batched = fn(image, boxes)
  np.testing.assert_allclose(jax.jit(fn)(image, boxes), batched, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(image, boxes), batched, atol=1e-6)
  np.testing.assert_allclose(fn(image[1], boxes[1]), batched[1], atol=1e-6)


# --------------------------------------------------------------------------
# Fitting.


def random_quads(n, seed=0):
  """(N, 4, 2) convex-ish quadrilaterals in pixels, no three collinear."""
  rng = np.random.default_rng(seed)
  square = np.array([[0, 0], [40, 0], [40, 30], [0, 30]], np.float64)
  return (
    square
    + rng.uniform(-6, 6, size=(n, 4, 2))
    + rng.uniform(0, 50, size=(n, 1, 2))
  )


def test_get_perspective_transform_matches_opencv():
  # float32-representable points: OpenCV takes float32.
  src = random_quads(4, seed=28).astype(np.float32).astype(np.float64)
  dst = random_quads(4, seed=29).astype(np.float32).astype(np.float64)
  with jax.enable_x64(True):
    got = np.asarray(
      stn_jax.get_perspective_transform(jnp.asarray(src), jnp.asarray(dst))
    )
  got32 = np.asarray(
    stn_jax.get_perspective_transform(
      src.astype(np.float32), dst.astype(np.float32)
    )
  )
  for n in range(4):
    want = cv2.getPerspectiveTransform(
      src[n].astype(np.float32), dst[n].astype(np.float32)
    )
    # OpenCV solves the system in raw pixel units (condition ~1e8): its
    # matrix maps its points to within ~2e-6 px, so agree to 1e-5 relative;
    # ours is checked more tightly by mapping the points below.
    np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-9)
    # float32: within float32 rounding of the system (relative 1e-4).
    np.testing.assert_allclose(got32[n], want, rtol=1e-4, atol=1e-6)
    mapped = np.c_[src[n], np.ones(4)] @ got[n].T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], dst[n], atol=1e-9)


def test_get_affine_transform_matches_opencv_and_lstsq():
  rng = np.random.default_rng(30)
  src3 = rng.uniform(0, 50, size=(3, 3, 2)).astype(np.float32)
  dst3 = rng.uniform(0, 50, size=(3, 3, 2)).astype(np.float32)
  with jax.enable_x64(True):
    got = np.asarray(
      stn_jax.get_affine_transform(
        jnp.asarray(src3, jnp.float64), jnp.asarray(dst3, jnp.float64)
      )
    )
  for n in range(3):
    want = cv2.getAffineTransform(
      src3[n].astype(np.float32), dst3[n].astype(np.float32)
    )
    np.testing.assert_allclose(got[n], want, rtol=1e-9, atol=1e-9)
  # K > 3: NumPy's least squares, and the true map for noise-free points.
  true = random_affine(2, seed=31).astype(np.float64)
  src = rng.uniform(0, 50, size=(2, 9, 2))
  exact = np.einsum(
    "nkj,nij->nki", np.concatenate([src, np.ones((2, 9, 1))], -1), true
  )
  noisy = exact + rng.normal(scale=0.5, size=exact.shape)
  with jax.enable_x64(True):
    fit_exact = np.asarray(
      stn_jax.get_affine_transform(jnp.asarray(src), jnp.asarray(exact))
    )
    fit_noisy = np.asarray(
      stn_jax.get_affine_transform(jnp.asarray(src), jnp.asarray(noisy))
    )
  np.testing.assert_allclose(fit_exact, true, atol=1e-9)
  for n in range(2):
    design = np.concatenate([src[n], np.ones((9, 1))], -1)
    want, *_ = np.linalg.lstsq(design, noisy[n], rcond=None)
    np.testing.assert_allclose(fit_noisy[n], want.T, atol=1e-9)
  got32 = stn_jax.get_affine_transform(
    src.astype(np.float32), exact.astype(np.float32)
  )
  np.testing.assert_allclose(got32, true, rtol=1e-4, atol=1e-3)


def test_rotation_matrix_matches_opencv():
  rng = np.random.default_rng(32)
  center = rng.uniform(0, 40, size=(5, 2)).astype(np.float32)
  angle = rng.uniform(-180, 180, size=5).astype(np.float32)
  scale = rng.uniform(0.5, 2, size=5).astype(np.float32)
  got = stn_jax.rotation_matrix(center, angle, scale)
  for n in range(5):
    want = cv2.getRotationMatrix2D(
      (float(center[n, 0]), float(center[n, 1])),
      float(angle[n]),
      float(scale[n]),
    )
    np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-4)
  # Positive angles turn counter-clockwise as displayed (y down): a point
  # right of the centre moves up.
  turn = np.asarray(
    stn_jax.rotation_matrix(np.array([5.0, 5.0], np.float32), np.float32(90.0))
  )
  np.testing.assert_allclose(turn @ [6.0, 5.0, 1.0], [5.0, 4.0], atol=1e-6)
  np.testing.assert_allclose(
    stn_jax.rotation_matrix(center, angle),
    stn_jax.rotation_matrix(center, angle, np.ones(5, np.float32)),
  )


def tps_points(n, k, seed):
  rng = np.random.default_rng(seed)
  src = rng.uniform(0, 60, size=(n, k, 2))
  dst = src + rng.normal(scale=3, size=(n, k, 2))
  return src, dst


def test_tps_interpolates_and_reproduces_affine_maps():
  src, dst = tps_points(2, 10, seed=33)
  tps = stn_jax.fit_tps(src.astype(np.float32), dst.astype(np.float32))
  np.testing.assert_allclose(
    stn_jax.tps_warp_points(tps, src.astype(np.float32)), dst, atol=1e-3
  )
  true = random_affine(2, seed=34).astype(np.float64)
  affine_dst = np.einsum(
    "nkj,nij->nki", np.concatenate([src, np.ones((2, 10, 1))], -1), true
  )
  query = np.random.default_rng(35).uniform(-10, 70, (2, 7, 2))
  want = np.einsum(
    "nkj,nij->nki", np.concatenate([query, np.ones((2, 7, 1))], -1), true
  )
  for regularization in (0.0, 5.0):
    tps = stn_jax.fit_tps(
      src.astype(np.float32),
      affine_dst.astype(np.float32),
      regularization=regularization,
    )
    np.testing.assert_allclose(
      stn_jax.tps_warp_points(tps, query.astype(np.float32)), want, atol=2e-3
    )


def test_tps_matches_scipy_rbf_interpolator():
  from scipy.interpolate import RBFInterpolator

  src, dst = tps_points(2, 12, seed=36)
  query = np.random.default_rng(37).uniform(-5, 65, (2, 20, 2))
  for regularization in (0.0, 10.0, 1e4):
    with jax.enable_x64(True):
      got = np.asarray(
        stn_jax.tps_warp_points(
          stn_jax.fit_tps(
            jnp.asarray(src), jnp.asarray(dst), regularization=regularization
          ),
          jnp.asarray(query),
        )
      )
    got32 = np.asarray(
      stn_jax.tps_warp_points(
        stn_jax.fit_tps(
          src.astype(np.float32),
          dst.astype(np.float32),
          regularization=regularization,
        ),
        query.astype(np.float32),
      )
    )
    for n in range(2):
      # scipy's kernel is r^2 log r = U(r) / 2, so its smoothing is half ours.
      spline = RBFInterpolator(
        src[n],
        dst[n],
        kernel="thin_plate_spline",
        smoothing=regularization / 2,
        degree=1,
      )
      np.testing.assert_allclose(got[n], spline(query[n]), atol=1e-8)
      np.testing.assert_allclose(got32[n], spline(query[n]), atol=2e-3)


def test_tps_tends_to_the_least_squares_affine_fit():
  src, dst = tps_points(1, 9, seed=38)
  with jax.enable_x64(True):
    affine = np.asarray(
      stn_jax.get_affine_transform(jnp.asarray(src), jnp.asarray(dst))
    )
    query = jnp.asarray(np.random.default_rng(39).uniform(0, 60, (1, 6, 2)))
    want = np.einsum(
      "nkj,nij->nki", np.concatenate([query, np.ones((1, 6, 1))], -1), affine
    )
    errors = [
      np.abs(
        np.asarray(
          stn_jax.tps_warp_points(
            stn_jax.fit_tps(
              jnp.asarray(src), jnp.asarray(dst), regularization=r
            ),
            query,
          )
        )
        - want
      ).max()
      for r in (1e2, 1e5, 1e8)
    ]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 1e-4


def test_tps_agrees_with_tps_grid():
  # tps_grid(control, source_points=s) samples fit_tps(s, control) at the
  # normalised output pixel centres.
  rng = np.random.default_rng(40)
  source = (
    stn_jax.tps_source_points(9) + rng.normal(scale=0.05, size=(9, 2))
  ).astype(np.float32)
  control = (source + rng.normal(scale=0.1, size=(2, 9, 2))).astype(np.float32)
  grid = stn_jax.tps_grid(control, (5, 6), source_points=source)
  points = reference.output_points((5, 6), False)[..., :2].reshape(1, -1, 2)
  tps = stn_jax.fit_tps(np.broadcast_to(source, (2, 9, 2)), control)
  got = stn_jax.tps_warp_points(tps, np.repeat(points, 2, 0).astype(np.float32))
  np.testing.assert_allclose(got.reshape(2, 5, 6, 2), grid, atol=1e-5)


# --------------------------------------------------------------------------
# Gradients, jit, vmap, unbatched inputs.


def x64(*arrays):
  return tuple(jnp.asarray(a, jnp.float64) for a in arrays)


GRAD_CASES = {
  "warp_affine": lambda: (
    functools.partial(
      stn_jax.warp_affine, out_size=(5, 6), padding_mode="fill", fill_value=0.3
    ),
    (random_image((2, 6, 7, 2), 41), random_affine(2, 42, (3, 3))),
  ),
  "warp_perspective": lambda: (
    functools.partial(stn_jax.warp_perspective, out_size=(5, 6)),
    (random_image((2, 6, 7, 2), 43), random_homography(2, 44, size=(6, 7))),
  ),
  "crop_and_resize": lambda: (
    functools.partial(
      stn_jax.crop_and_resize,
      out_size=(3, 4),
      mode="bicubic",
      padding_mode="reflection",
    ),
    (
      random_image((2, 6, 7, 2), 45),
      np.array(
        [
          [[0.3, 0.6, 5.2, 4.1], [-1.3, 1.1, 3.3, 6.4]],
          [[1.2, 0.1, 4.4, 3.7], [2.2, 2.9, 0.4, 0.7]],
        ]
      ),
    ),
  ),
  "pixel_to_theta": lambda: (
    functools.partial(stn_jax.pixel_to_theta, in_size=(6, 7), out_size=(4, 5)),
    (random_affine(2, 46),),
  ),
  "pixel_to_normalized_homography": lambda: (
    functools.partial(
      stn_jax.pixel_to_normalized_homography, in_size=(6, 7), out_size=(4, 5)
    ),
    (random_homography(2, 47),),
  ),
  "get_perspective_transform": lambda: (
    stn_jax.get_perspective_transform,
    (random_quads(2, 48), random_quads(2, 49)),
  ),
  "get_affine_transform": lambda: (
    stn_jax.get_affine_transform,
    tps_points(2, 5, 50),
  ),
  "rotation_matrix": lambda: (
    stn_jax.rotation_matrix,
    (
      np.array([[3.0, 4.0], [1.0, 2.0]]),
      np.array([20.0, -70.0]),
      np.array([1.2, 0.9]),
    ),
  ),
  "tps": lambda: (
    lambda s, d, q: stn_jax.tps_warp_points(
      stn_jax.fit_tps(s, d, regularization=0.5), q
    ),
    (
      *tps_points(2, 6, 51),
      np.random.default_rng(52).uniform(0, 60, (2, 4, 2)),
    ),
  ),
}


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_match_finite_differences(name):
  check_gradients_under_jit(*GRAD_CASES[name]())


def test_fill_value_gradient(sampler_path):
  image = random_image((1, 5, 5, 2), seed=53)
  grid = np.random.default_rng(54).uniform(-1.4, 1.4, (1, 3, 4, 2))
  fn = lambda i, g, f: stn_jax.grid_sample(
    i, g, padding_mode="fill", fill_value=f, mode="bicubic"
  )
  with jax.enable_x64(True):
    check_grads(
      fn,
      x64(image, grid, np.array([0.4, -0.2])),
      order=1,
      modes=("rev",),
      eps=1e-6,
      atol=1e-5,
      rtol=1e-5,
    )


@pytest.mark.parametrize("name", GRAD_CASES)
def test_jit_vmap_and_unbatched_equal_batched(name):
  check_jit_vmap_and_unbatched(*GRAD_CASES[name]())


def test_fit_tps_and_conversions_under_jit_and_vmap():
  src, dst = tps_points(3, 7, seed=55)
  src, dst = src.astype(np.float32), dst.astype(np.float32)
  batched = stn_jax.fit_tps(src, dst)
  for other in (
    jax.jit(stn_jax.fit_tps)(src, dst),
    jax.vmap(stn_jax.fit_tps)(src, dst),
  ):
    for a, b in zip(other, batched):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  for fn, arg in (
    (stn_jax.invert_affine, random_affine(3, 56)),
    (
      functools.partial(
        stn_jax.theta_to_pixel, in_size=(4, 5), out_size=(6, 3)
      ),
      random_affine(3, 57),
    ),
    (
      functools.partial(
        stn_jax.normalized_to_pixel_homography, in_size=(4, 5), out_size=(6, 3)
      ),
      random_homography(3, 58),
    ),
    (functools.partial(stn_jax.normalize_points, size=(4, 5)), src),
  ):
    want = fn(arg)
    np.testing.assert_allclose(jax.jit(fn)(arg), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(fn)(arg), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fn(arg[0]), want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_warps_keep_half_dtypes(dtype):
  image = jnp.asarray(random_image((1, 6, 6, 1), 59), dtype)
  out = stn_jax.warp_affine(image, random_affine(1, 60, (3, 3)), (4, 4))
  assert out.dtype == dtype
  boxes = jnp.asarray([[[0.0, 0.0, 3.0, 3.0]]], dtype)
  assert stn_jax.crop_and_resize(image, boxes, (2, 2)).dtype == dtype


# --------------------------------------------------------------------------
# Errors.

IMAGE = np.zeros((1, 4, 4, 1), np.float32)
AFFINE = np.zeros((1, 2, 3), np.float32)


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: stn_jax.warp_affine(
        IMAGE, np.zeros((1, 3, 3), np.float32), (4, 4)
      ),
      r"matrix must have shape \(N, 2, 3\).*got shape \(1, 3, 3\).*"
      "warp_perspective",
    ),
    (
      lambda: stn_jax.warp_perspective(IMAGE, AFFINE, (4, 4)),
      r"homography must have shape \(N, 3, 3\).*\(1, 2, 3\).*warp_affine",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE, AFFINE[0], (4, 4)),
      "image and matrix must both have a batch axis",
    ),
    (
      lambda: stn_jax.warp_affine(
        IMAGE, np.zeros((2, 2, 3), np.float32), (4, 4)
      ),
      "matrix must have the batch size",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE.astype(np.uint8), AFFINE, (4, 4)),
      "image must have a floating dtype",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE, AFFINE.astype(np.int32), (4, 4)),
      "matrix must have a floating dtype",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE, AFFINE, (4, 4), mode="linear"),
      "mode must be one of",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE, AFFINE, (4, 4), padding_mode="wrap"),
      r"padding_mode must be one of .*'fill'; got 'wrap'",
    ),
    (
      lambda: stn_jax.warp_affine(
        IMAGE, AFFINE, (4, 4), padding_mode="fill", fill_value=np.zeros(3)
      ),
      r"fill_value must be a number or a float array of shape \(\) or \(1,\)",
    ),
    (
      lambda: stn_jax.warp_affine(IMAGE, AFFINE, (4,)),
      r"out_size must be a \(height, width\) pair",
    ),
    (
      lambda: stn_jax.crop_and_resize(
        IMAGE, np.zeros((1, 2, 5), np.float32), (3, 3)
      ),
      r"boxes must have shape \(N, K, 4\).*got shape \(1, 2, 5\)",
    ),
    (
      lambda: stn_jax.crop_and_resize(
        IMAGE, np.zeros((1, 2, 4), np.float32), (3, 3), align_corners=1
      ),
      "align_corners must be a bool",
    ),
    (
      lambda: stn_jax.pixel_to_theta(AFFINE, (4, 4, 1), (4, 4)),
      r"in_size must be a \(height, width\) pair",
    ),
    (
      lambda: stn_jax.get_perspective_transform(
        np.zeros((1, 5, 2)), np.zeros((1, 5, 2))
      ),
      r"src must have shape \(N, 4, 2\).*got shape \(1, 5, 2\)",
    ),
    (
      lambda: stn_jax.get_affine_transform(np.zeros((2, 2)), np.zeros((2, 2))),
      r"src must hold at least 3 points.*got shape \(2, 2\)",
    ),
    (
      lambda: stn_jax.get_affine_transform(
        np.zeros((1, 4, 2)), np.zeros((1, 5, 2))
      ),
      "dst must have as many points as src",
    ),
    (
      lambda: stn_jax.get_affine_transform(
        np.zeros((4, 2), np.int64), np.zeros((4, 2))
      ),
      "src must have a floating dtype",
    ),
    (
      lambda: stn_jax.rotation_matrix(np.zeros((2, 2)), np.zeros(3)),
      "angle must have the batch size of center",
    ),
    (
      lambda: stn_jax.rotation_matrix(np.zeros((2, 3)), np.zeros(2)),
      r"center must have shape \(N, 2\)",
    ),
    (
      lambda: stn_jax.fit_tps(
        np.zeros((5, 2)), np.zeros((5, 2)), regularization=-1.0
      ),
      "regularization must be a non-negative number; got -1.0",
    ),
    (
      lambda: stn_jax.tps_warp_points((1, 2), np.zeros((3, 2))),
      "tps must be a ThinPlateSpline",
    ),
    (
      lambda: stn_jax.normalize_points(np.zeros((3, 3)), (4, 4)),
      r"points must have shape \(\.\.\., 2\)",
    ),
  ],
)
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
