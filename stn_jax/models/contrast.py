"""Local contrast normalisation (Jarrett et al. 2009), a parameter-free layer.

GTSRB's photographs range from nearly black to washed out; the traffic-sign
networks of Ciresan et al. (2012) and Arcos-Garcia et al. (2018) normalise
contrast locally, which a global mean/std cannot do. The definition used
here, for an image ``x`` of shape ``(H, W, C)`` and a normalised Gaussian
window ``w`` (``size`` x ``size`` taps, standard deviation ``sigma`` px):

1. local mean over the window and all channels,
   ``m = (w * mean_c x) / (w * 1)``: a zero-padded correlation divided by
   the window weight that falls inside the image, so borders average only
   real pixels;
2. ``v = x - m`` (the same ``m`` for every channel);
3. local standard deviation ``s = sqrt((w * mean_c v**2) / (w * 1))``;
4. ``y = v / max(s, mean_hw(s), eps)``: dividing by the image's mean ``s``
   where the local one is smaller keeps flat regions from being blown up
   into noise (Jarrett et al.'s ``max(c, sigma)`` with ``c`` the mean).

This is the computation of Torch7's ``nn.SpatialContrastiveNormalization``
with a Gaussian kernel (subtractive then divisive normalisation, border
corrected), except that Torch floors ``s`` at a fixed threshold rather than
at the image's mean. A positive affine change of brightness, ``a x + b``
with ``a > 0``, leaves ``y`` unchanged (up to ``eps``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """``(size,)`` float64 Gaussian taps centred on the middle one, summing
  to 1 (``size`` odd, ``sigma`` in pixels)."""
  if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
    raise ValueError(f"size must be an odd positive int; got {size!r}.")
  if not np.isfinite(sigma) or sigma <= 0:
    raise ValueError(f"sigma must be a positive number; got {sigma!r}.")
  offsets = np.arange(size) - size // 2
  taps = np.exp(-0.5 * (offsets / sigma) ** 2)
  return taps / taps.sum()


def _correlate(a: jax.Array, taps: np.ndarray) -> jax.Array:
  """Zero-padded separable correlation of ``a (N, H, W, 1)`` with the
  window ``outer(taps, taps)``; same shape out."""
  k, taps = len(taps), [float(t) for t in taps]  # weak: keep a's dtype
  a = jnp.pad(a, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)])
  h, w = a.shape[1] - k + 1, a.shape[2] - k + 1
  rows = sum(t * a[:, i : i + h] for i, t in enumerate(taps))
  return sum(t * rows[:, :, j : j + w] for j, t in enumerate(taps))


@functools.partial(jax.jit, static_argnames=("size", "sigma", "eps"))
def _normalise(x, *, size, sigma, eps):
  taps = gaussian_taps(size, sigma)
  shape = x.shape
  x = x.reshape(-1, *shape[-3:])
  # The window weight inside the image at each pixel: dividing by it makes
  # a window mean count only real pixels.
  inside = _correlate(jnp.ones((1, *x.shape[1:3], 1), x.dtype), taps)
  v = x - _correlate(x.mean(-1, keepdims=True), taps) / inside
  variance = _correlate(jnp.mean(v * v, -1, keepdims=True), taps) / inside
  # max() before sqrt: sqrt's derivative at 0 is infinite, and 0 * inf
  # would turn a flat region's zero gradient into NaN.
  s = jnp.sqrt(jnp.maximum(variance, eps * eps))
  floor = s.mean((1, 2), keepdims=True)
  return (v / jnp.maximum(s, floor)).reshape(shape)


def local_contrast_norm(
  x: jax.Array, *, size: int = 7, sigma: float = 1.75, eps: float = 1e-4
) -> jax.Array:
  """Local contrast normalisation of ``x (..., H, W, C)`` (see the module
  docstring for the definition); returns the same shape and dtype.

  Args:
    x: float images, channels last; any leading batch dimensions.
    size: window taps per side (odd). The default window, 7 taps of
      ``sigma = 1.75`` px, is Torch7's ``image.gaussian1D(7)``.
    sigma: the window's standard deviation in pixels.
    eps: smallest local standard deviation; keeps values and gradients
      finite on flat images (a constant image maps to zeros, up to
      rounding, not NaN).
  """
  x = jnp.asarray(x)
  if x.ndim < 3:
    raise ValueError(
      f"x must be (..., H, W, C) images; got shape {tuple(x.shape)}."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be floating point; got dtype {x.dtype}.")
  if not eps > 0:
    raise ValueError(f"eps must be positive; got {eps!r}.")
  gaussian_taps(size, sigma)  # the arguments' errors, outside the jit
  return _normalise(x, size=int(size), sigma=float(sigma), eps=float(eps))


class LocalContrastNorm(nnx.Module):
  """:func:`local_contrast_norm` as a layer (no parameters)."""

  def __init__(self, *, size: int = 7, sigma: float = 1.75, eps: float = 1e-4):
    gaussian_taps(size, sigma)  # validate now, not at the first call
    self.size, self.sigma, self.eps = size, sigma, eps

  def __call__(self, x):
    return local_contrast_norm(
      x, size=self.size, sigma=self.sigma, eps=self.eps
    )
