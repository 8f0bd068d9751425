"""Independent NumPy references for the spatial ops, written from the
definitions (PyTorch's documented conventions), in float64.

They share no code with stn_jax: reflection uses a modular-arithmetic form,
bicubic uses the Keys kernel as a function of distance, and sampling is a
plain loop over taps of per-point arrays.
"""

import numpy as np

KEYS_A = -0.75


def pixel_coordinate(coord, size, align_corners):
  """Normalised [-1, 1] -> pixel index units."""
  if align_corners:
    return (coord + 1) / 2 * (size - 1)
  return ((coord + 1) * size - 1) / 2


def reflect(pixel, size, align_corners, xp=np):
  """Mirror pixel coordinates into the image (then clamp, as PyTorch).

  ``xp``: the array module (NumPy, or ``jax.numpy`` for the plain-jnp
  reference that JAX differentiates in test_transforms.py).
  """
  if align_corners:
    if size == 1:
      return xp.zeros_like(pixel)
    period = 2 * (size - 1)
    m = xp.mod(pixel, period)
    m = xp.where(m > size - 1, period - m, m)
  else:
    period = 2 * size
    m = xp.mod(pixel + 0.5, period)
    m = xp.where(m > size, period - m, m) - 0.5
  return xp.clip(m, 0, size - 1)


def pad_coordinate(pixel, size, padding_mode, align_corners, xp=np):
  if padding_mode == "border":
    return xp.clip(pixel, 0, size - 1)
  if padding_mode == "reflection":
    return reflect(pixel, size, align_corners, xp)
  return pixel


def keys_kernel(distance, xp=np):
  s = xp.abs(distance)
  a = KEYS_A
  near = (a + 2) * s**3 - (a + 3) * s**2 + 1
  far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
  return xp.where(s <= 1, near, xp.where(s < 2, far, 0.0))


def read(image, ys, xs):
  """image (H, W, C) at integer pixel arrays; zero outside."""
  h, w, _ = image.shape
  inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
  yc = np.clip(ys, 0, h - 1).astype(int)
  xc = np.clip(xs, 0, w - 1).astype(int)
  return np.where(inside[..., None], image[yc, xc], 0.0)


def grid_sample(
  image, grid, mode="bilinear", padding_mode="zeros", align_corners=False
):
  """image (N, H, W, C), grid (N, Ho, Wo, 2) -> (N, Ho, Wo, C), float64.

  Non-finite grid points read 0 (stn_jax's documented convention).
  """
  image = np.asarray(image, np.float64)
  grid = np.asarray(grid, np.float64)
  out = np.zeros(grid.shape[:-1] + image.shape[-1:])
  for n in range(image.shape[0]):
    img = image[n]
    h, w, _ = img.shape
    gx, gy = grid[n, ..., 0], grid[n, ..., 1]
    finite = np.isfinite(gx) & np.isfinite(gy)
    gx = np.where(finite, gx, 0.0)
    gy = np.where(finite, gy, 0.0)
    px = pixel_coordinate(gx, w, align_corners)
    py = pixel_coordinate(gy, h, align_corners)
    if mode == "bicubic":
      x0, y0 = np.floor(px), np.floor(py)
      value = 0
      for j in range(-1, 3):
        for i in range(-1, 3):
          tx = pad_coordinate(x0 + i, w, padding_mode, align_corners)
          ty = pad_coordinate(y0 + j, h, padding_mode, align_corners)
          weight = keys_kernel(px - (x0 + i)) * keys_kernel(py - (y0 + j))
          value = value + weight[..., None] * read(img, ty, tx)
    else:
      px = pad_coordinate(px, w, padding_mode, align_corners)
      py = pad_coordinate(py, h, padding_mode, align_corners)
      if mode == "nearest":
        value = read(img, np.round(py), np.round(px))  # half to even
      else:
        x0, y0 = np.floor(px), np.floor(py)
        fx, fy = px - x0, py - y0
        value = ((1 - fx) * (1 - fy))[..., None] * read(img, y0, x0)
        value = value + (fx * (1 - fy))[..., None] * read(img, y0, x0 + 1)
        value = value + ((1 - fx) * fy)[..., None] * read(img, y0 + 1, x0)
        value = value + (fx * fy)[..., None] * read(img, y0 + 1, x0 + 1)
    out[n] = np.where(finite[..., None], value, 0.0)
  return out


def normalised_centres(size, align_corners):
  i = np.arange(size, dtype=np.float64)
  if align_corners:
    return np.zeros(1) if size == 1 else -1 + 2 * i / (size - 1)
  return -1 + (2 * i + 1) / size


def output_points(out_shape, align_corners):
  """(H, W, 3) homogeneous output points (x, y, 1)."""
  h, w = out_shape
  xs = normalised_centres(w, align_corners)
  ys = normalised_centres(h, align_corners)
  x, y = np.meshgrid(xs, ys)
  return np.stack([x, y, np.ones_like(x)], -1)


def affine_grid(theta, out_shape, align_corners=False):
  theta = np.asarray(theta, np.float64)
  points = output_points(out_shape, align_corners)
  return np.einsum("hwk,ndk->nhwd", points, theta)


def projective_grid(homography, out_shape, align_corners=False):
  homography = np.asarray(homography, np.float64)
  points = output_points(out_shape, align_corners)
  uvw = np.einsum("hwk,ndk->nhwd", points, homography)
  return uvw[..., :2] / uvw[..., 2:]
