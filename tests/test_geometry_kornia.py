"""Geometry 2: remap, crops, composed matrices and 3-D warps (issue 36).

References: OpenCV (``remap``, ``warpPerspective``, ``warpAffine``,
``getRotationMatrix2D``, ``Rodrigues``), scipy (``ndimage.map_coordinates``
and ``affine_transform``, ``spatial.transform.Rotation``), PyTorch's
``grid_sample`` driven as kornia's ``remap`` drives it, and NumPy written
from the definitions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from conftest import (
  check_gradients_under_jit,
  check_jit_vmap_and_unbatched,
  requires_torch,
)
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

import stn_jax

cv2 = pytest.importorskip("cv2")

FILL = 0.3
# Our padding mode -> (OpenCV border, scipy.ndimage mode).
BORDERS = {
  "fill": (cv2.BORDER_CONSTANT, "grid-constant"),
  "border": (cv2.BORDER_REPLICATE, "nearest"),
  "reflection": (cv2.BORDER_REFLECT, "reflect"),
  "reflection_101": (cv2.BORDER_REFLECT_101, "mirror"),
}


def random_image(shape, seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def random_maps(n, size, in_size, seed):
  """Map points over the image and up to 3 px beyond each edge."""
  rng = np.random.default_rng(seed)
  height, width = in_size
  map_x = rng.uniform(-3, width + 2, (n, *size)).astype(np.float32)
  map_y = rng.uniform(-3, height + 2, (n, *size)).astype(np.float32)
  return map_x, map_y


def scipy_sample(image, rows, cols, mode, order=1):
  """(H, W, C) image at float64 (rows, cols) points, per channel."""
  return np.stack(
    [
      ndi.map_coordinates(
        image[..., c].astype(np.float64),
        [rows, cols],
        order=order,
        mode=mode,
        cval=FILL,
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    -1,
  )


# --------------------------------------------------------------------------
# remap


@pytest.mark.parametrize(
  "padding_mode,channels",
  [(mode, 3) for mode in BORDERS] + [("fill", 1)],
)
def test_remap_matches_opencv_and_scipy(padding_mode, channels):
  image = random_image((2, 7, 9, channels), 1)
  map_x, map_y = random_maps(2, (5, 6), (7, 9), 2)
  got = np.asarray(
    stn_jax.remap(
      image, map_x, map_y, padding_mode=padding_mode, fill_value=FILL
    )
  )
  border, scipy_mode = BORDERS[padding_mode]
  for n in range(2):
    want = cv2.remap(
      image[n],
      map_x[n],
      map_y[n],
      cv2.INTER_LINEAR,
      borderMode=border,
      borderValue=(FILL,) * 4,
    ).reshape(got[n].shape)
    np.testing.assert_allclose(got[n], want, atol=1e-5)
    want = scipy_sample(image[n], map_y[n], map_x[n], scipy_mode)
    np.testing.assert_allclose(got[n], want, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["fill", "border", "reflection"])
def test_remap_bicubic_and_nearest_match_opencv(padding_mode):
  image = random_image((1, 7, 9, 3), 3)
  map_x, map_y = random_maps(1, (5, 6), (7, 9), 4)
  border = BORDERS[padding_mode][0]
  got = stn_jax.remap(
    image,
    map_x,
    map_y,
    mode="bicubic",
    padding_mode=padding_mode,
    fill_value=FILL,
  )
  want = cv2.remap(
    image[0],
    map_x[0],
    map_y[0],
    cv2.INTER_CUBIC,
    borderMode=border,
    borderValue=(FILL,) * 4,
  )
  np.testing.assert_allclose(got[0], want, atol=1e-4)
  # nearest: points a quarter pixel from any tie (OpenCV rounds ties up)
  map_x = np.round(map_x) + 0.25
  map_y = np.round(map_y) - 0.25
  got = stn_jax.remap(
    image, map_x, map_y, mode="nearest", padding_mode=padding_mode
  )
  want = cv2.remap(
    image[0], map_x[0], map_y[0], cv2.INTER_NEAREST, borderMode=border
  )
  if padding_mode == "fill":  # zero fill (fill_value defaults to 0)
    want = cv2.remap(
      image[0],
      map_x[0],
      map_y[0],
      cv2.INTER_NEAREST,
      borderMode=border,
      borderValue=(0,) * 4,
    )
  np.testing.assert_array_equal(got[0], want)


@requires_torch
@pytest.mark.parametrize(
  "mode,ours,torch_padding",
  [
    ("bilinear", "zeros", "zeros"),
    ("bilinear", "border", "border"),
    ("bilinear", "reflection_101", "reflection"),
    ("bicubic", "reflection_101", "reflection"),
  ],
)
def test_remap_equals_kornias_formula_with_align_corners(
  mode, ours, torch_padding
):
  """kornia's remap: pixel -> 2 x / (W - 1) - 1, then torch's grid_sample
  with align_corners=True (transcribed here; kornia is not installed)."""
  import torch

  image = random_image((2, 6, 8, 2), 5)
  map_x, map_y = random_maps(2, (4, 5), (6, 8), 6)
  grid = np.stack([2 * map_x / 7 - 1, 2 * map_y / 5 - 1], -1)
  want = torch.nn.functional.grid_sample(
    torch.from_numpy(image).permute(0, 3, 1, 2),
    torch.from_numpy(grid),
    mode=mode,
    padding_mode=torch_padding,
    align_corners=True,
  )
  want = want.permute(0, 2, 3, 1).numpy()
  got = stn_jax.remap(image, map_x, map_y, mode=mode, padding_mode=ours)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_remap_identity_map_reproduces_the_image():
  image = random_image((5, 6, 2), 7)
  y, x = np.mgrid[0:5, 0:6].astype(np.float32)
  for mode in ("bilinear", "nearest", "bicubic"):
    got = stn_jax.remap(image, x, y, mode=mode)
    np.testing.assert_allclose(got, image, atol=1e-6)


# --------------------------------------------------------------------------
# Crops


def output_corners(out_size, align_corners):
  h, w = out_size
  if align_corners:
    return np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
  return np.float32(
    [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]]
  )


QUADS = np.float32(
  [
    [[[1.2, 0.7], [8.5, 0.9], [9.1, 7.6], [0.4, 6.8]]],
    [[[2.0, -1.5], [9.7, 2.0], [7.2, 10.3], [-1.1, 5.0]]],
  ]
)  # (N = 2, K = 1, 4, 2), the second partly outside the image


@pytest.mark.parametrize(
  "align_corners,padding_mode",
  [
    (False, "fill"),
    (False, "border"),
    (True, "reflection"),
    (True, "reflection_101"),
  ],
)
def test_crop_by_boxes_matches_opencv_warp_perspective(
  align_corners, padding_mode
):
  image = random_image((2, 9, 11, 3), 8)
  out_size = (4, 5)
  got = np.asarray(
    stn_jax.crop_by_boxes(
      image,
      QUADS,
      out_size,
      align_corners=align_corners,
      padding_mode=padding_mode,
      fill_value=FILL,
    )
  )
  border = BORDERS[padding_mode][0]
  for n in range(2):
    homography = cv2.getPerspectiveTransform(
      QUADS[n, 0], output_corners(out_size, align_corners)
    )
    want = cv2.warpPerspective(
      image[n],
      homography,
      (out_size[1], out_size[0]),
      flags=cv2.INTER_LINEAR,
      borderMode=border,
      borderValue=(FILL,) * 4,
    )
    np.testing.assert_allclose(got[n, 0], want, atol=1e-4)


@pytest.mark.parametrize("align_corners", [False, True])
def test_crop_by_boxes_of_axis_aligned_boxes_is_crop_and_resize(align_corners):
  image = random_image((2, 8, 9, 2), 9)
  boxes = np.float32(
    [
      [[0.3, 0.6, 6.2, 5.1], [-1.3, 1.1, 3.3, 7.4]],
      [[1.2, 0.1, 8.4, 3.7], [2.2, 2.9, 4.4, 6.7]],
    ]
  )
  x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
  quads = np.stack(
    [np.stack(c, -1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], -2
  )
  for mode in ("bicubic" if align_corners else "bilinear",):
    got = stn_jax.crop_by_boxes(
      image, quads, (3, 4), align_corners=align_corners, mode=mode
    )
    want = stn_jax.crop_and_resize(
      image, boxes, (3, 4), align_corners=align_corners, mode=mode
    )
    assert got.shape == (2, 2, 3, 4, 2)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_crop_by_transform_mat_matches_opencv():
  image = random_image((1, 9, 10, 3), 10)
  homography = cv2.getPerspectiveTransform(
    QUADS[0, 0], output_corners((5, 6), True)
  )
  for matrix, warp in (
    (homography, cv2.warpPerspective),
    (homography[:2], None),
  ):
    warp = warp or cv2.warpAffine
    for padding_mode in ("reflection_101", "border"):
      got = stn_jax.crop_by_transform_mat(
        image,
        matrix[None].astype(np.float32),
        (5, 6),
        padding_mode=padding_mode,
      )
      want = warp(
        image[0],
        matrix,
        (6, 5),
        flags=cv2.INTER_LINEAR,
        borderMode=BORDERS[padding_mode][0],
      )
      np.testing.assert_allclose(got[0], want, atol=1e-4)


@pytest.mark.parametrize(
  "in_size,out_size", [((7, 8), (4, 4)), ((7, 8), (3, 5)), ((6, 6), (6, 6))]
)
def test_center_crop_is_the_central_slice(in_size, out_size):
  image = random_image((2, *in_size, 2), 11)
  top = (in_size[0] - out_size[0]) // 2
  left = (in_size[1] - out_size[1]) // 2
  want = image[:, top : top + out_size[0], left : left + out_size[1]]
  np.testing.assert_array_equal(stn_jax.center_crop(image, out_size), want)
  np.testing.assert_array_equal(
    stn_jax.center_crop(image[1], out_size), want[1]
  )
  # kornia's start is int(H / 2 - h / 2); the same for every h <= H
  assert top == int(in_size[0] / 2 - out_size[0] / 2)
  assert left == int(in_size[1] / 2 - out_size[1] / 2)


def test_crop_by_indices_slices_and_traces():
  image = random_image((3, 6, 7, 2), 12)
  offsets = np.array([[0, 0], [4, 3], [2, 1]])
  got = stn_jax.crop_by_indices(image, offsets, (3, 3))
  for n, (x, y) in enumerate(offsets):
    np.testing.assert_array_equal(got[n], image[n, y : y + 3, x : x + 3])
  jitted = jax.jit(stn_jax.crop_by_indices, static_argnums=2)
  np.testing.assert_array_equal(jitted(image, offsets, (3, 3)), got)
  np.testing.assert_array_equal(
    stn_jax.crop_by_indices(image[1], offsets[1], (3, 3)), got[1]
  )


# --------------------------------------------------------------------------
# Composed affine matrices


def homogeneous(matrix):
  return np.vstack([matrix, [0, 0, 1]])


def numpy_shear(center, sx, sy):
  """kornia's get_shear_matrix2d, transcribed as a centred product."""
  a, b = np.tan(sx), np.tan(sy)
  cx, cy = center
  to, back = np.eye(3), np.eye(3)
  to[:2, 2], back[:2, 2] = center, -np.asarray(center)
  along_x = np.array([[1, -a, 0], [0, 1, 0], [0, 0, 1]])
  along_y = np.array([[1, 0, 0], [-b, 1, 0], [0, 0, 1]])
  matrix = to @ along_y @ along_x @ back
  # kornia's closed form of the same matrix
  closed = [[1, -a, a * cy], [-b, 1 + a * b, b * (cx - a * cy)]]
  np.testing.assert_allclose(matrix[:2], closed, atol=1e-12)
  return matrix


def test_get_rotation_matrix2d_matches_opencv_and_definition():
  rng = np.random.default_rng(13)
  center = rng.uniform(0, 20, (4, 2))
  angle = rng.uniform(-180, 180, 4)
  scale = rng.uniform(0.5, 2, (4, 2))
  with jax.enable_x64(True):
    iso = stn_jax.get_rotation_matrix2d(center, angle, scale[:, :1] * [1, 1])
    got = stn_jax.get_rotation_matrix2d(center, angle, scale)
  for n in range(4):
    want = cv2.getRotationMatrix2D(tuple(center[n]), angle[n], scale[n, 0])
    np.testing.assert_allclose(iso[n], want, atol=1e-12)
    rotation = homogeneous(cv2.getRotationMatrix2D((0.0, 0.0), angle[n], 1))
    to, back = np.eye(3), np.eye(3)
    to[:2, 2], back[:2, 2] = center[n], -center[n]
    want = to @ rotation @ np.diag([*scale[n], 1]) @ back
    np.testing.assert_allclose(got[n], want[:2], atol=1e-12)


def test_get_shear_and_affine_matrix2d_match_kornias_composition():
  rng = np.random.default_rng(14)
  t, c = rng.normal(size=(3, 2)), rng.uniform(0, 20, (3, 2))
  scale = rng.uniform(0.5, 2, (3, 2))
  angle = rng.uniform(-180, 180, 3)
  sx, sy = rng.uniform(-0.5, 0.5, (2, 3))
  with jax.enable_x64(True):
    shear = stn_jax.get_shear_matrix2d(c, sx, sy)
    only_x = stn_jax.get_shear_matrix2d(c, sx)
    full = stn_jax.get_affine_matrix2d(t, c, scale, angle, sx=sx, sy=sy)
    plain = stn_jax.get_affine_matrix2d(t, c, scale, angle)
  for n in range(3):
    np.testing.assert_allclose(
      shear[n], numpy_shear(c[n], sx[n], sy[n])[:2], atol=1e-12
    )
    np.testing.assert_allclose(
      only_x[n], numpy_shear(c[n], sx[n], 0.0)[:2], atol=1e-12
    )
    # kornia: get_rotation_matrix2d(c, -angle, scale), + t, then @ shear
    to, back = np.eye(3), np.eye(3)
    to[:2, 2], back[:2, 2] = c[n], -c[n]
    rotation = homogeneous(cv2.getRotationMatrix2D((0.0, 0.0), -angle[n], 1))
    rotation = to @ rotation @ np.diag([*scale[n], 1]) @ back
    rotation[:2, 2] += t[n]
    np.testing.assert_allclose(plain[n], rotation[:2], atol=1e-12)
    want = rotation @ numpy_shear(c[n], sx[n], sy[n])
    np.testing.assert_allclose(full[n], want[:2], atol=1e-12)
    # isotropic, no shear: cv2's matrix of the negated angle, shifted by t
    iso = cv2.getRotationMatrix2D(tuple(c[n]), -angle[n], 1.5)
    with jax.enable_x64(True):
      got = stn_jax.get_affine_matrix2d(t[n], c[n], np.full(2, 1.5), angle[n])
    np.testing.assert_allclose(
      got, iso + np.c_[np.zeros((2, 2)), t[n]], atol=1e-12
    )


# --------------------------------------------------------------------------
# 3-D


PERMUTE = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])  # (x, y, z) <-> (z, y, x)


def scipy_warp3d(volume, backward, out_size, mode):
  """volume (D, H, W, C); backward (4, 4) destination -> source voxel."""
  d, h, w = out_size
  z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
  xyzw = np.einsum(
    "ij,jdhw->idhw", backward, np.stack([x, y, z, np.ones_like(x)])
  )
  points = xyzw[:3] / xyzw[3]
  return np.stack(
    [
      ndi.map_coordinates(
        volume[..., c].astype(np.float64),
        [points[2], points[1], points[0]],
        order=1,
        mode=mode,
        prefilter=False,
      )
      for c in range(volume.shape[-1])
    ],
    -1,
  )


VOLUME_MODES = {
  "zeros": "grid-constant",
  "border": "nearest",
  "reflection": "reflect",
  "reflection_101": "mirror",
}


def random_affine3d(n, seed, centre=(3.0, 2.5, 2.0)):
  rng = np.random.default_rng(seed)
  return np.asarray(
    stn_jax.get_projective_transform(
      np.tile(np.float32(centre), (n, 1)),
      rng.uniform(-40, 40, (n, 3)).astype(np.float32),
      rng.uniform(0.8, 1.25, (n, 3)).astype(np.float32),
    )
  ) + np.pad(rng.normal(scale=0.7, size=(n, 3, 1)), ((0, 0), (0, 0), (3, 0)))


@pytest.mark.parametrize("padding_mode", VOLUME_MODES)
def test_warp_affine3d_matches_scipy_affine_transform(padding_mode):
  volume = random_image((2, 5, 6, 7, 2), 15)
  matrix = random_affine3d(2, 16).astype(np.float32)
  out_size = (4, 6, 5)
  got = np.asarray(
    stn_jax.warp_affine3d(volume, matrix, out_size, padding_mode=padding_mode)
  )
  for n in range(2):
    inverse = np.linalg.inv(np.vstack([matrix[n], [0, 0, 0, 1]]))
    linear = PERMUTE @ inverse[:3, :3] @ PERMUTE
    offset = PERMUTE @ inverse[:3, 3]
    want = np.stack(
      [
        ndi.affine_transform(
          volume[n, ..., c].astype(np.float64),
          linear,
          offset,
          output_shape=out_size,
          order=1,
          mode=VOLUME_MODES[padding_mode],
        )
        for c in range(2)
      ],
      -1,
    )
    np.testing.assert_allclose(got[n], want, atol=1e-5)


def random_homography3d(n, seed):
  rng = np.random.default_rng(seed)
  h = np.eye(4) + rng.normal(scale=0.03, size=(n, 4, 4))
  h[:, :3, 3] += rng.normal(scale=0.5, size=(n, 3))
  return h / h[:, 3:, 3:]


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection_101"])
def test_warp_perspective3d_matches_scipy(padding_mode):
  volume = random_image((2, 5, 6, 7, 1), 17)
  homography = random_homography3d(2, 18)
  got = stn_jax.warp_perspective3d(
    volume, homography.astype(np.float32), (5, 4, 6), padding_mode=padding_mode
  )
  for n in range(2):
    want = scipy_warp3d(
      volume[n],
      np.linalg.inv(homography[n]),
      (5, 4, 6),
      VOLUME_MODES[padding_mode],
    )
    np.testing.assert_allclose(got[n], want, atol=1e-5)


def test_warp3d_nearest_and_identity_are_exact():
  volume = random_image((3, 4, 5, 2), 19)
  shift = np.float32([[1, 0, 0, 1.2], [0, 1, 0, -0.8], [0, 0, 1, 1.1]])
  got = stn_jax.warp_affine3d(volume, shift, (3, 4, 5), mode="nearest")
  want = np.zeros_like(volume)
  want[1:, :3, 1:] = volume[:-1, 1:, :-1]  # source = destination - round(t)
  np.testing.assert_array_equal(got, want)
  identity = np.eye(4, dtype=np.float32)
  np.testing.assert_allclose(
    stn_jax.warp_perspective3d(volume, identity, (3, 4, 5)), volume, atol=1e-6
  )


def test_get_projective_transform_matches_scipy_and_opencv():
  rng = np.random.default_rng(20)
  center = rng.uniform(0, 10, (4, 3))
  angles = rng.uniform(-120, 120, (4, 3))
  scales = rng.uniform(0.5, 2, (4, 3))
  with jax.enable_x64(True):
    got = np.asarray(stn_jax.get_projective_transform(center, angles, scales))
  for n in range(4):
    rotation = Rotation.from_rotvec(np.deg2rad(angles[n])).as_matrix()
    opencv, _ = cv2.Rodrigues(np.deg2rad(angles[n]))
    np.testing.assert_allclose(rotation, opencv, atol=1e-12)
    linear = rotation @ np.diag(scales[n])
    np.testing.assert_allclose(got[n, :, :3], linear, atol=1e-12)
    np.testing.assert_allclose(got[n] @ [*center[n], 1], center[n], atol=1e-12)
  # tiny and zero rotations: the series of sin(t) / t and (1 - cos t) / t^2
  tiny = np.array([[1e-5, -2e-5, 3e-6], [0.0, 0.0, 0.0]], np.float32)
  got = stn_jax.get_projective_transform(
    np.zeros((2, 3), np.float32), tiny, np.ones((2, 3), np.float32)
  )
  for n in range(2):
    want = Rotation.from_rotvec(
      np.deg2rad(tiny[n].astype(np.float64))
    ).as_matrix()
    np.testing.assert_allclose(got[n, :, :3], want, atol=1e-7)
  gradient = jax.grad(
    lambda a: stn_jax.get_projective_transform(
      jnp.zeros(3), a, jnp.ones(3)
    ).sum()
  )(jnp.zeros(3))
  assert np.isfinite(gradient).all()


def numpy_dlt3d(src, dst):
  """Homogeneous DLT: the null vector of the 3 K x 16 system (SVD)."""
  rows = []
  for (x, y, z), target in zip(src, dst):
    p = np.array([x, y, z, 1.0])
    for axis in range(3):
      row = np.zeros(16)
      row[4 * axis : 4 * axis + 4] = p
      row[12:] = -target[axis] * p
      rows.append(row)
  h = np.linalg.svd(np.array(rows))[2][-1].reshape(4, 4)
  return h / h[3, 3]


@pytest.mark.parametrize("k", [5, 8])
def test_get_perspective_transform3d_matches_numpy_dlt(k):
  rng = np.random.default_rng(21 + k)
  truth = random_homography3d(2, 22 + k)
  if k == 8:  # a box's corners, as kornia takes them
    corners = np.array(np.meshgrid([0, 9], [0, 7], [0, 5], indexing="ij"))
    src = np.tile(corners.reshape(3, -1).T, (2, 1, 1)).astype(np.float64)
  else:
    src = rng.uniform(0, 10, (2, k, 3))
  mapped = np.einsum(
    "nij,nkj->nki", truth, np.concatenate([src, np.ones((2, k, 1))], -1)
  )
  dst = mapped[..., :3] / mapped[..., 3:]
  with jax.enable_x64(True):
    got = np.asarray(stn_jax.get_perspective_transform3d(src, dst))
  for n in range(2):
    np.testing.assert_allclose(got[n], numpy_dlt3d(src[n], dst[n]), atol=1e-9)
    np.testing.assert_allclose(got[n], truth[n], atol=1e-9)
  got32 = stn_jax.get_perspective_transform3d(
    src.astype(np.float32), dst.astype(np.float32)
  )
  np.testing.assert_allclose(got32, truth, atol=2e-4)


# --------------------------------------------------------------------------
# Gradients, jit, vmap, unbatched inputs.


def x64(*arrays):
  return tuple(jnp.asarray(a, jnp.float64) for a in arrays)


CASES = {
  "remap": lambda: (
    functools.partial(
      stn_jax.remap, mode="bicubic", padding_mode="reflection_101"
    ),
    (random_image((2, 5, 6, 2), 30), *random_maps(2, (3, 4), (5, 6), 31)),
  ),
  "crop_by_boxes": lambda: (
    functools.partial(
      stn_jax.crop_by_boxes,
      out_size=(3, 4),
      padding_mode="fill",
      fill_value=0.2,
    ),
    (random_image((2, 9, 11, 2), 32), QUADS),
  ),
  "crop_by_transform_mat": lambda: (
    functools.partial(stn_jax.crop_by_transform_mat, out_size=(3, 4)),
    (
      random_image((2, 9, 11, 2), 33),
      np.stack(
        [
          cv2.getPerspectiveTransform(
            QUADS[n, 0], output_corners((3, 4), False)
          )
          for n in range(2)
        ]
      ),
    ),
  ),
  "center_crop": lambda: (
    functools.partial(stn_jax.center_crop, out_size=(2, 3)),
    (random_image((2, 5, 6, 2), 35),),
  ),
  "get_rotation_matrix2d": lambda: (
    stn_jax.get_rotation_matrix2d,
    (
      np.array([[3.0, 4.0], [1.0, 2.0]]),
      np.array([20.0, -70.0]),
      np.array([[1.2, 0.7], [0.9, 1.1]]),
    ),
  ),
  "get_shear_matrix2d": lambda: (
    stn_jax.get_shear_matrix2d,
    (
      np.array([[3.0, 4.0], [1.0, 2.0]]),
      np.array([0.2, -0.4]),
      np.array([0.3, 0.1]),
    ),
  ),
  "get_affine_matrix2d": lambda: (
    lambda t, c, s, a, sx, sy: stn_jax.get_affine_matrix2d(
      t, c, s, a, sx=sx, sy=sy
    ),
    (
      np.array([[0.5, -1.0], [2.0, 0.3]]),
      np.array([[3.0, 4.0], [1.0, 2.0]]),
      np.array([[1.2, 0.7], [0.9, 1.1]]),
      np.array([20.0, -70.0]),
      np.array([0.2, -0.4]),
      np.array([0.3, 0.1]),
    ),
  ),
  "warp_affine3d": lambda: (
    functools.partial(
      stn_jax.warp_affine3d, out_size=(3, 4, 3), padding_mode="reflection"
    ),
    (random_image((2, 3, 4, 5, 1), 36), random_affine3d(2, 37, (2, 1.5, 1))),
  ),
  "warp_perspective3d": lambda: (
    functools.partial(stn_jax.warp_perspective3d, out_size=(3, 3, 4)),
    (random_image((2, 3, 4, 5, 1), 38), random_homography3d(2, 39)),
  ),
  "get_projective_transform": lambda: (
    stn_jax.get_projective_transform,
    (
      np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 2.0]]),
      np.array([[10.0, -20.0, 30.0], [50.0, 5.0, -8.0]]),
      np.array([[1.1, 0.9, 1.0], [0.7, 1.3, 1.2]]),
    ),
  ),
  "get_perspective_transform3d": lambda: (
    stn_jax.get_perspective_transform3d,
    (
      np.random.default_rng(40).uniform(0, 10, (2, 6, 3)),
      np.random.default_rng(41).uniform(0, 10, (2, 6, 3)),
    ),
  ),
}


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_finite_differences(name):
  check_gradients_under_jit(*CASES[name]())


def test_crop_by_indices_gradient():
  offsets = jnp.array([[1, 0], [0, 2]])
  fn = lambda image: stn_jax.crop_by_indices(image, offsets, (2, 3))
  with jax.enable_x64(True):
    check_grads(
      fn, x64(random_image((2, 4, 5, 1), 42)), order=1, modes=("rev",), eps=1e-6
    )


@pytest.mark.parametrize("name", CASES)
def test_jit_vmap_and_unbatched_equal_batched(name):
  check_jit_vmap_and_unbatched(*CASES[name]())


# --------------------------------------------------------------------------
# Errors.

IMAGE = np.zeros((1, 6, 6, 1), np.float32)
VOLUME = np.zeros((1, 3, 4, 5, 1), np.float32)
SQUARE = np.float32([[1, 1], [4, 1], [4, 4], [1, 4]])


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: stn_jax.remap(IMAGE, np.zeros((1, 3, 3)), np.zeros((1, 3, 4))),
      r"map_y must have the shape of map_x; got map_x shape \(1, 3, 3\) and "
      r"map_y shape \(1, 3, 4\)",
    ),
    (
      lambda: stn_jax.remap(IMAGE, np.zeros((3, 3)), np.zeros((3, 3))),
      "image and map_x must both have a batch axis",
    ),
    (
      lambda: stn_jax.remap(
        IMAGE, np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), padding_mode="wrap"
      ),
      r"padding_mode must be one of .*'reflection_101'; got 'wrap'",
    ),
    (
      lambda: stn_jax.crop_by_boxes(
        IMAGE,
        np.float32([[[[1, 1], [3, 1], [5, 1], [1, 4]]]]),
        (3, 3),
      ),
      r"boxes\[0, 0\] is a collapsed quadrilateral: 3 of its corners lie on "
      "one line",
    ),
    (
      lambda: stn_jax.crop_by_boxes(
        IMAGE, np.tile(SQUARE[:1], (1, 1, 4, 1)), (3, 3)
      ),
      r"boxes\[0, 0\] is a collapsed quadrilateral",
    ),
    (
      lambda: stn_jax.crop_by_boxes(
        IMAGE, SQUARE[None, None], (1, 3), align_corners=True
      ),
      r"out_size must be at least \(2, 2\) with align_corners=True",
    ),
    (
      lambda: stn_jax.crop_by_boxes(IMAGE, SQUARE[None], (3, 3)),
      "image and boxes must both have a batch axis",
    ),
    (
      lambda: stn_jax.crop_by_transform_mat(IMAGE, np.zeros((1, 4, 4)), (3, 3)),
      r"matrix must have shape \(N, 3, 3\) or \(N, 2, 3\).*got shape \(1, 4, 4\)",
    ),
    (
      lambda: stn_jax.center_crop(IMAGE, (7, 3)),
      r"out_size must fit in the image, \(h, w\) <= \(6, 6\).*got \(7, 3\)",
    ),
    (
      lambda: stn_jax.crop_by_indices(IMAGE, np.array([[4, 0]]), (3, 3)),
      r"offsets\[0\] = \[4, 0\] puts the \(3, 3\) window outside",
    ),
    (
      lambda: stn_jax.crop_by_indices(IMAGE, np.array([[1.0, 0.0]]), (3, 3)),
      "offsets must be an integer array of shape",
    ),
    (
      lambda: stn_jax.get_rotation_matrix2d(
        np.zeros(2), np.zeros(()), np.array([1.0, 0.0])
      ),
      r"scale must be non-zero .*got scale\[1\] = 0",
    ),
    (
      lambda: stn_jax.get_affine_matrix2d(
        np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(())
      ),
      "scale must be non-zero",
    ),
    (
      lambda: stn_jax.get_affine_matrix2d(
        np.zeros((2, 2)), np.zeros(2), np.ones(2), np.zeros(())
      ),
      "translation and center must both have a batch axis",
    ),
    (
      lambda: stn_jax.get_shear_matrix2d(np.zeros((2, 2)), np.zeros(3)),
      "sx must have the batch size of center",
    ),
    (
      lambda: stn_jax.get_projective_transform(
        np.zeros(3), np.zeros(3), np.array([1.0, 0.0, 1.0])
      ),
      "scales must be non-zero",
    ),
    (
      lambda: stn_jax.get_projective_transform(
        np.zeros(2), np.zeros(3), np.ones(3)
      ),
      r"center must have shape \(N, 3\)",
    ),
    (
      lambda: stn_jax.warp_affine3d(VOLUME, np.zeros((1, 4, 4)), (3, 4, 5)),
      r"matrix must have shape \(N, 3, 4\)",
    ),
    (
      lambda: stn_jax.warp_affine3d(VOLUME, np.zeros((1, 3, 4)), (3, 4)),
      r"out_size must be a \(depth, height, width\) triple",
    ),
    (
      lambda: stn_jax.warp_perspective3d(
        VOLUME, np.zeros((1, 4, 4)), (3, 4, 5), padding_mode="fill"
      ),
      "padding_mode must be one of",
    ),
    (
      lambda: stn_jax.get_perspective_transform3d(
        np.zeros((4, 3)), np.zeros((4, 3))
      ),
      r"src and dst must have the same shape \(N, K, 3\) with K >= 5",
    ),
  ],
)
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
