"""Measured deviations of the geometry warps from OpenCV and scipy.

Command (writes nothing; paste the output into results/geometry.md):

  python experiments/geometry_deviations.py

Random images in [0, 1] (8 x 40 x 48 x C), random rotation/scale/shear/shift
matrices and random corner-moving homographies, fill value 0.3. scipy
(``affine_transform``/``map_coordinates``, order 1, float64) does not
quantise; OpenCV (``warpAffine``/``warpPerspective``) rounds sample points
to 1/32 pixel on most paths. Each row is the maximum over the padding modes
fill (BORDER_CONSTANT / grid-constant), border (BORDER_REPLICATE / nearest)
and reflection (BORDER_REFLECT / reflect).
"""

from __future__ import annotations

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


if __name__ == "__main__":
  main()
