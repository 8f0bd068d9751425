"""Local contrast normalisation against a NumPy/scipy reference written
from its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy import ndimage

from stn_jax import models
from stn_jax.models.contrast import LocalContrastNorm, local_contrast_norm


def reference(x, size=7, sigma=1.75, eps=1e-4):
  """One (H, W, C) image: Gaussian window mean over space and channels,
  border-corrected by the window weight inside the image, then division by
  the local std floored at the image's mean std."""
  offsets = np.arange(size) - size // 2
  g = np.exp(-(offsets**2) / (2.0 * sigma**2))
  window = np.outer(g, g) / g.sum() ** 2

  def correlate(a):
    return ndimage.correlate(a, window, mode="constant", cval=0.0)

  inside = correlate(np.ones(x.shape[:2]))
  v = x - (correlate(x.mean(-1)) / inside)[..., None]
  s = np.sqrt(np.maximum(correlate((v**2).mean(-1)) / inside, eps**2))
  return v / np.maximum(s, s.mean())[..., None]


def images(shape, seed=0):
  rng = np.random.default_rng(seed)
  # A brightness gradient plus texture, so the local mean and std vary.
  h, w = shape[-3:-1]
  ramp = np.linspace(0, 1, h)[:, None, None] * np.linspace(0.2, 1, w)[:, None]
  return ramp + 0.3 * rng.random(shape)


@pytest.mark.parametrize(
  "shape, size, sigma",
  [
    ((9, 11, 3), 7, 1.75),
    ((8, 8, 1), 3, 0.8),
    ((5, 4, 2), 7, 1.75),  # image smaller than the window
    ((12, 7, 3), 5, 3.0),
  ],
)
def test_matches_the_reference(shape, size, sigma):
  x = images(shape)
  with jax.enable_x64(True):
    got = jax.jit(lambda a: local_contrast_norm(a, size=size, sigma=sigma))(
      jnp.asarray(x)
    )
    assert got.dtype == jnp.float64
  np.testing.assert_allclose(
    np.asarray(got), reference(x, size, sigma), rtol=1e-10, atol=1e-10
  )


def test_float32_batch_and_leading_dims_match_the_reference():
  x = images((2, 3, 10, 9, 3)).astype(np.float32)
  got = local_contrast_norm(jnp.asarray(x))
  assert got.shape == x.shape and got.dtype == jnp.float32
  want = np.stack(
    [np.stack([reference(im.astype(np.float64)) for im in row]) for row in x]
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # vmap over the leading axis equals the batched call
  mapped = jax.vmap(local_contrast_norm)(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(got), atol=1e-6)


def test_positive_affine_brightness_change_leaves_the_output_unchanged():
  x = images((10, 10, 3), seed=1)
  with jax.enable_x64(True):
    a = local_contrast_norm(jnp.asarray(x))
    b = local_contrast_norm(jnp.asarray(2.5 * x + 0.3))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-9)


def test_flat_image_gives_zeros_and_finite_gradients():
  x = jnp.full((1, 6, 6, 3), 0.4, jnp.float32)
  y = local_contrast_norm(x)
  # zero up to float32 rounding of the local mean, divided by eps
  np.testing.assert_allclose(np.asarray(y), 0.0, atol=1e-2)
  r = jax.random.normal(jax.random.key(0), x.shape)
  grad = jax.grad(lambda a: jnp.sum(local_contrast_norm(a) * r))(x)
  assert np.isfinite(np.asarray(grad)).all()


def test_gradients_match_finite_differences():
  x = images((1, 6, 7, 2), seed=2)
  with jax.enable_x64(True):
    check_grads(
      lambda a: local_contrast_norm(a, size=5, sigma=1.2),
      (jnp.asarray(x),),
      order=2,
      modes=("fwd", "rev"),
      eps=1e-5,
      atol=1e-5,
      rtol=1e-5,
    )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"size": 6}, "size must be an odd positive int; got 6"),
    ({"size": 0}, "size must be an odd positive int; got 0"),
    ({"sigma": 0.0}, "sigma must be a positive number; got 0.0"),
    ({"eps": 0.0}, "eps must be positive; got 0.0"),
  ],
)
def test_bad_arguments_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    local_contrast_norm(jnp.zeros((4, 4, 1)), **kwargs)


def test_bad_images_are_named():
  with pytest.raises(
    ValueError, match=r"x must be \(\.\.\., H, W, C\).*\(4, 4\)"
  ):
    local_contrast_norm(jnp.zeros((4, 4)))
  with pytest.raises(ValueError, match="x must be floating point; got dtype"):
    local_contrast_norm(jnp.zeros((4, 4, 1), jnp.uint8))
  with pytest.raises(ValueError, match="size must be an odd positive int"):
    LocalContrastNorm(size=4)


def test_gtsrb_cnn_contrast_norm_options():
  x = jnp.asarray(images((2, 16, 16, 3)), jnp.float32)
  kwargs = dict(in_shape=(16, 16, 3), num_classes=43, width=0.05)
  plain = models.get_model("gtsrb_cnn", rngs=nnx.Rngs(0), **kwargs)
  normed = models.get_model(
    "gtsrb_cnn",
    rngs=nnx.Rngs(0),
    contrast_norm_input=True,
    contrast_norm_blocks=True,
    **kwargs,
  )
  # parameter-free: the same parameters, different function
  assert models.count_params(normed) == models.count_params(plain)
  assert normed(x).shape == (2, 43)
  assert not np.allclose(np.asarray(normed(x)), np.asarray(plain(x)))
  # input normalisation makes the logits brightness invariant
  input_only = models.get_model(
    "gtsrb_cnn", rngs=nnx.Rngs(0), contrast_norm_input=True, **kwargs
  )
  np.testing.assert_allclose(
    np.asarray(input_only(x)), np.asarray(input_only(3 * x - 1)), atol=1e-4
  )
