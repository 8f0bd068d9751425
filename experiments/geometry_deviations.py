"""Measured deviations of the geometry warps from OpenCV and scipy.

Command (writes nothing; paste the output into results/geometry.md):

  python experiments/geometry_deviations.py            # the warps
  python experiments/geometry_deviations.py --kornia   # Geometry 2 functions

Random images in [0, 1] (8 x 40 x 48 x C), random rotation/scale/shear/shift
matrices and random corner-moving homographies, fill value 0.3. scipy
(``affine_transform``/``map_coordinates``, order 1, float64) does not
quantise; OpenCV (``warpAffine``/``warpPerspective``) rounds sample points
to 1/32 pixel on most paths. Each row is the maximum over the padding modes
fill (BORDER_CONSTANT / grid-constant), border (BORDER_REPLICATE / nearest)
and reflection (BORDER_REFLECT / reflect).
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import scipy.ndimage as ndi

import stn_jax

FILL = 0.3
MODES = {
  "fill": (cv2.BORDER_CONSTANT, "grid-constant"),
  "border": (cv2.BORDER_REPLICATE, "nearest"),
  "reflection": (cv2.BORDER_REFLECT, "reflect"),
}
INTERPOLATION = {
  "bilinear": cv2.INTER_LINEAR,
  "nearest": cv2.INTER_NEAREST,
  "bicubic": cv2.INTER_CUBIC,
}


def inputs(n=8, size=(40, 48), seed=0, channels=3):
  rng = np.random.default_rng(seed)
  h, w = size
  images = rng.uniform(size=(n, h, w, channels)).astype(np.float32)
  centre = np.array([w / 2, h / 2])
  affines, homographies = [], []
  corners = np.array(
    [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32
  )
  for _ in range(n):
    a = rng.uniform(-np.pi, np.pi)
    linear = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ (
      np.array(
        [
          [rng.uniform(0.7, 1.3), rng.uniform(-0.2, 0.2)],
          [0, rng.uniform(0.7, 1.3)],
        ]
      )
    )
    shift = centre - linear @ centre + rng.normal(scale=3, size=2)
    affines.append(np.c_[linear, shift])
    moved = corners + rng.normal(scale=4, size=(4, 2)).astype(np.float32)
    homographies.append(cv2.getPerspectiveTransform(corners, moved))
  return (
    images,
    np.asarray(affines, np.float32),
    np.asarray(homographies, np.float32),
  )


def scipy_warp(image, backward, size, mode):
  """backward: (3, 3) destination pixel -> source pixel, float64."""
  h, w = size
  x, y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h))
  uvw = np.einsum("ij,jhw->ihw", backward, np.stack([x, y, np.ones_like(x)]))
  rows, cols = uvw[1] / uvw[2], uvw[0] / uvw[2]
  return np.stack(
    [
      ndi.map_coordinates(
        image[..., c].astype(np.float64),
        [rows, cols],
        order=1,
        mode=mode,
        cval=FILL,
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    -1,
  )


def main():
  print(
    "| warp | mode | C | max abs dev. from OpenCV | "
    "max abs dev. from scipy (order 1) |"
  )
  print("|---|---|---|---|---|")
  for name in ("warp_affine", "warp_perspective"):
    warp = getattr(stn_jax, name)
    cv_warp = cv2.warpAffine if name == "warp_affine" else cv2.warpPerspective
    for mode, flag in INTERPOLATION.items():
      for channels in (1, 2, 3, 4):
        images, affines, homographies = inputs(channels=channels)
        matrices = affines if name == "warp_affine" else homographies
        size = images.shape[1:3]
        cv_dev = scipy_dev = 0.0
        for padding, (border, scipy_mode) in MODES.items():
          ours = np.asarray(
            warp(
              images,
              matrices,
              size,
              mode=mode,
              padding_mode=padding,
              fill_value=FILL,
            )
          )
          for n in range(len(images)):
            want = cv_warp(
              images[n],
              matrices[n].astype(np.float64),
              (size[1], size[0]),
              flags=flag,
              borderMode=border,
              borderValue=(FILL,) * 4,
            )
            want = want.reshape(ours[n].shape)
            cv_dev = max(cv_dev, float(np.abs(ours[n] - want).max()))
            if mode == "bilinear":
              forward = matrices[n].astype(np.float64)
              if forward.shape[0] == 2:
                forward = np.vstack([forward, [0, 0, 1]])
              want = scipy_warp(
                images[n], np.linalg.inv(forward), size, scipy_mode
              )
              scipy_dev = max(scipy_dev, float(np.abs(ours[n] - want).max()))
        scipy_text = f"{scipy_dev:.1e}" if mode == "bilinear" else "-"
        print(f"| {name} | {mode} | {channels} | {cv_dev:.1e} | {scipy_text} |")


def _max(a, b):
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b)).max())


def kornia_functions():
  """Geometry 2 (issue 36): each new function against its reference.

  float32 inputs (as users call them); the references run in float64
  (scipy, NumPy) or float32 (OpenCV's warps, which take float32 images).
  """
  from scipy.spatial.transform import Rotation

  rng = np.random.default_rng(1)
  images, affines, homographies = inputs(n=8, channels=3)
  size = images.shape[1:3]
  rows = []

  # remap, per padding mode, against cv2.remap and scipy (order 1)
  borders = {**MODES, "reflection_101": (cv2.BORDER_REFLECT_101, "mirror")}
  map_x = rng.uniform(-4, size[1] + 3, (8, 32, 36)).astype(np.float32)
  map_y = rng.uniform(-4, size[0] + 3, (8, 32, 36)).astype(np.float32)
  for padding, (border, scipy_mode) in borders.items():
    ours = np.asarray(
      stn_jax.remap(images, map_x, map_y, padding_mode=padding, fill_value=FILL)
    )
    cv_dev = scipy_dev = 0.0
    for n in range(8):
      want = cv2.remap(
        images[n],
        map_x[n],
        map_y[n],
        cv2.INTER_LINEAR,
        borderMode=border,
        borderValue=(FILL,) * 4,
      )
      cv_dev = max(cv_dev, _max(ours[n], want))
      want = np.stack(
        [
          ndi.map_coordinates(
            images[n, ..., c].astype(np.float64),
            [map_y[n], map_x[n]],
            order=1,
            mode=scipy_mode,
            cval=FILL,
            prefilter=False,
          )
          for c in range(3)
        ],
        -1,
      )
      scipy_dev = max(scipy_dev, _max(ours[n], want))
    rows.append(
      (
        f"remap ({padding})",
        "cv2.remap / scipy map_coordinates",
        cv_dev,
        scipy_dev,
      )
    )

  # crop_by_boxes: random quads around the image centre, both corner kinds
  h, w = size
  base = np.float32([[8, 6], [w - 8, 6], [w - 8, h - 6], [8, h - 6]])
  quads = base + rng.normal(scale=3, size=(8, 1, 4, 2)).astype(np.float32)
  for align in (False, True):
    out_size = (24, 30)
    ours = np.asarray(
      stn_jax.crop_by_boxes(
        images, quads, out_size, align_corners=align, padding_mode="border"
      )
    )
    oh, ow = out_size
    if align:
      corners = np.float32([[0, 0], [ow - 1, 0], [ow - 1, oh - 1], [0, oh - 1]])
    else:
      corners = np.float32(
        [[-0.5, -0.5], [ow - 0.5, -0.5], [ow - 0.5, oh - 0.5], [-0.5, oh - 0.5]]
      )
    dev = 0.0
    for n in range(8):
      matrix = cv2.getPerspectiveTransform(quads[n, 0], corners)
      want = cv2.warpPerspective(
        images[n],
        matrix,
        (ow, oh),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
      )
      dev = max(dev, _max(ours[n, 0], want))
    rows.append(
      (
        f"crop_by_boxes (align_corners={align})",
        "cv2.getPerspectiveTransform + warpPerspective",
        dev,
        None,
      )
    )

  # crop_by_transform_mat with reflection_101 (kornia's reflection)
  ours = np.asarray(
    stn_jax.crop_by_transform_mat(
      images, homographies, size, padding_mode="reflection_101"
    )
  )
  dev = max(
    _max(
      ours[n],
      cv2.warpPerspective(
        images[n],
        homographies[n].astype(np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
      ),
    )
    for n in range(8)
  )
  rows.append(
    ("crop_by_transform_mat (reflection_101)", "cv2.warpPerspective", dev, None)
  )

  # composed matrices (float32 in, float64 references)
  center = rng.uniform(0, 40, (64, 2))
  angle = rng.uniform(-180, 180, 64)
  scale = rng.uniform(0.5, 2, (64, 2))
  shift = rng.normal(scale=5, size=(64, 2))
  sx, sy = rng.uniform(-0.5, 0.5, (2, 64))
  f32 = lambda *a: tuple(np.float32(x) for x in a)
  ours = np.asarray(
    stn_jax.get_rotation_matrix2d(*f32(center, angle, scale[:, :1] * [1, 1]))
  )
  dev = max(
    _max(
      ours[n], cv2.getRotationMatrix2D(tuple(center[n]), angle[n], scale[n, 0])
    )
    for n in range(64)
  )
  rows.append(
    ("get_rotation_matrix2d (sx = sy)", "cv2.getRotationMatrix2D", dev, None)
  )
  ours = np.asarray(
    stn_jax.get_affine_matrix2d(
      *f32(shift, center, scale[:, :1] * [1, 1], angle)
    )
  )
  dev = max(
    _max(
      ours[n],
      cv2.getRotationMatrix2D(tuple(center[n]), -angle[n], scale[n, 0])
      + np.c_[np.zeros((2, 2)), shift[n]],
    )
    for n in range(64)
  )
  rows.append(
    (
      "get_affine_matrix2d (isotropic, no shear)",
      "cv2.getRotationMatrix2D(c, -angle, s) + t",
      dev,
      None,
    )
  )
  ours = np.asarray(stn_jax.get_shear_matrix2d(*f32(center, sx, sy)))
  a, b = np.tan(sx), np.tan(sy)
  cx, cy = center[:, 0], center[:, 1]
  want = np.stack(
    [
      np.stack([np.ones(64), -a, a * cy], -1),
      np.stack([-b, 1 + a * b, b * (cx - a * cy)], -1),
    ],
    1,
  )
  rows.append(
    (
      "get_shear_matrix2d",
      "kornia's closed form (NumPy)",
      _max(ours, want),
      None,
    )
  )

  # 3-D
  center3 = rng.uniform(0, 10, (64, 3))
  angles3 = rng.uniform(-120, 120, (64, 3))
  scales3 = rng.uniform(0.5, 2, (64, 3))
  ours = np.asarray(
    stn_jax.get_projective_transform(*f32(center3, angles3, scales3))
  )
  want = np.stack(
    [
      Rotation.from_rotvec(np.deg2rad(angles3[n])).as_matrix()
      @ np.diag(scales3[n])
      for n in range(64)
    ]
  )
  rows.append(
    (
      "get_projective_transform (3 x 3 part)",
      "scipy Rotation.from_rotvec @ diag(scales)",
      _max(ours[:, :, :3], want),
      None,
    )
  )
  volumes = rng.uniform(size=(4, 12, 14, 16, 2)).astype(np.float32)
  matrices = np.asarray(
    stn_jax.get_projective_transform(
      *f32(
        np.tile([7.5, 6.5, 5.5], (4, 1)),
        rng.uniform(-30, 30, (4, 3)),
        rng.uniform(0.8, 1.25, (4, 3)),
      )
    )
  )
  permute = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
  volume_modes = {
    "zeros": "grid-constant",
    "border": "nearest",
    "reflection": "reflect",
    "reflection_101": "mirror",
  }
  for padding, scipy_mode in volume_modes.items():
    ours = np.asarray(
      stn_jax.warp_affine3d(
        volumes, matrices, (12, 14, 16), padding_mode=padding
      )
    )
    dev = 0.0
    for n in range(4):
      inverse = np.linalg.inv(np.vstack([matrices[n], [0, 0, 0, 1]]))
      want = np.stack(
        [
          ndi.affine_transform(
            volumes[n, ..., c].astype(np.float64),
            permute @ inverse[:3, :3] @ permute,
            permute @ inverse[:3, 3],
            order=1,
            mode=scipy_mode,
          )
          for c in range(2)
        ],
        -1,
      )
      dev = max(dev, _max(ours[n], want))
    rows.append(
      (f"warp_affine3d ({padding})", "scipy affine_transform", None, dev)
    )
  truth = np.eye(4) + rng.normal(scale=0.03, size=(64, 4, 4))
  truth /= truth[:, 3:, 3:]
  corners = np.array(np.meshgrid([0, 15], [0, 13], [0, 11], indexing="ij"))
  src = np.tile(corners.reshape(3, -1).T, (64, 1, 1)).astype(np.float64)
  mapped = np.einsum(
    "nij,nkj->nki", truth, np.concatenate([src, np.ones((64, 8, 1))], -1)
  )
  dst = mapped[..., :3] / mapped[..., 3:]
  ours = np.asarray(stn_jax.get_perspective_transform3d(*f32(src, dst)))
  rows.append(
    (
      "get_perspective_transform3d (box corners)",
      "the true homography (float64)",
      _max(ours, truth),
      None,
    )
  )
  ours = np.asarray(
    stn_jax.warp_perspective3d(
      volumes, truth[:4].astype(np.float32), (12, 14, 16)
    )
  )
  dev = 0.0
  z, y, x = np.meshgrid(
    np.arange(12), np.arange(14), np.arange(16), indexing="ij"
  )
  for n in range(4):
    back = np.einsum(
      "ij,jdhw->idhw",
      np.linalg.inv(truth[n]),
      np.stack([x, y, z, np.ones_like(x)]),
    )
    p = back[:3] / back[3]
    want = np.stack(
      [
        ndi.map_coordinates(
          volumes[n, ..., c].astype(np.float64),
          [p[2], p[1], p[0]],
          order=1,
          mode="grid-constant",
          prefilter=False,
        )
        for c in range(2)
      ],
      -1,
    )
    dev = max(dev, _max(ours[n], want))
  rows.append(
    ("warp_perspective3d (zeros)", "scipy map_coordinates", None, dev)
  )

  print(
    "| function | reference | max abs dev. (OpenCV / NumPy) | max abs dev. (scipy) |"
  )
  print("|---|---|---|---|")
  for name, ref, first, second in rows:
    text = lambda d: "-" if d is None else f"{d:.1e}"
    print(f"| {name} | {ref} | {text(first)} | {text(second)} |")


if __name__ == "__main__":
  if "--kornia" in sys.argv[1:]:
    kornia_functions()
  else:
    main()
