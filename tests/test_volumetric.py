"""Volumetric sampling: torch parity, NaN safety, every JAX transform."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_torch

import stn_jax
from stn_jax.ops import volumetric

OPTIONS = list(
  itertools.product(
    volumetric.VOLUMETRIC_MODES,
    ("zeros", "border", "reflection"),
    (False, True),
  )
)


def inputs(seed=0, shape=(2, 3, 4, 5, 2), out=(2, 3, 4)):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=shape)
  grid = rng.uniform(-1.3, 1.3, (shape[0], *out, 3))
  return image, grid


@requires_torch
@pytest.mark.parametrize("mode, padding_mode, align_corners", OPTIONS)
def test_values_and_gradients_equal_torch(mode, padding_mode, align_corners):
  import torch

  image, grid = inputs()
  weights = np.random.default_rng(1).normal(size=(2, 2, 3, 4, 2))
  options = dict(
    mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  t_image = torch.tensor(image.transpose(0, 4, 1, 2, 3), requires_grad=True)
  t_grid = torch.tensor(grid, requires_grad=True)
  t_out = torch.nn.functional.grid_sample(t_image, t_grid, **options)
  (t_out * torch.tensor(weights.transpose(0, 4, 1, 2, 3))).sum().backward()

  with jax.enable_x64(True):

    def loss(i, g):
      return (volumetric.grid_sample_3d(i, g, **options) * weights).sum()

    out = volumetric.grid_sample_3d(image, grid, **options)
    d_image, d_grid = jax.jit(jax.grad(loss, argnums=(0, 1)))(image, grid)
  np.testing.assert_allclose(
    out, t_out.detach().numpy().transpose(0, 2, 3, 4, 1), atol=1e-12
  )
  np.testing.assert_allclose(
    d_image, t_image.grad.numpy().transpose(0, 2, 3, 4, 1), atol=1e-12
  )
  np.testing.assert_allclose(d_grid, t_grid.grad.numpy(), atol=1e-10)


@requires_torch
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_3d_and_its_gradient_equal_torch(align_corners):
  import torch

  theta = np.random.default_rng(2).normal(size=(2, 3, 4))
  weights = np.random.default_rng(3).normal(size=(2, 3, 4, 5, 3))
  t_theta = torch.tensor(theta, requires_grad=True)
  t_grid = torch.nn.functional.affine_grid(
    t_theta, (2, 1, 3, 4, 5), align_corners=align_corners
  )
  (t_grid * torch.tensor(weights)).sum().backward()
  with jax.enable_x64(True):
    grid = volumetric.affine_grid_3d(
      theta, (3, 4, 5), align_corners=align_corners
    )
    d_theta = jax.grad(
      lambda t: (
        volumetric.affine_grid_3d(t, (3, 4, 5), align_corners=align_corners)
        * weights
      ).sum()
    )(theta)
  np.testing.assert_allclose(grid, t_grid.detach().numpy(), atol=1e-12)
  np.testing.assert_allclose(d_theta, t_theta.grad.numpy(), atol=1e-10)


def test_identity_reproduces_the_volume():
  image, _ = inputs()
  theta = np.tile(np.eye(3, 4), (2, 1, 1))
  grid = volumetric.affine_grid_3d(theta, (3, 4, 5))
  out = volumetric.grid_sample_3d(image, grid)
  np.testing.assert_allclose(out, image, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_non_finite_points_read_zero_and_pass_no_gradient(padding_mode):
  image, grid = inputs()
  grid[0, 0, 0, 0] = [np.nan, 0.1, 0.2]
  grid[1, 1, 2, 3] = [0.3, np.inf, -np.inf]

  def loss(i, g):
    return volumetric.grid_sample_3d(i, g, padding_mode=padding_mode).sum()

  out = volumetric.grid_sample_3d(image, grid, padding_mode=padding_mode)
  d_image, d_grid = jax.grad(loss, argnums=(0, 1))(image, grid)
  assert out[0, 0, 0, 0].tolist() == [0, 0]
  assert out[1, 1, 2, 3].tolist() == [0, 0]
  assert np.isfinite(out).all() and np.isfinite(d_image).all()
  assert np.isfinite(d_grid).all()
  assert d_grid[0, 0, 0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
  "mode, padding_mode, align_corners",
  [
    ("bilinear", "zeros", False),
    ("bilinear", "reflection", True),
    ("nearest", "border", False),
  ],
)
def test_every_transform_composes(mode, padding_mode, align_corners):
  options = dict(
    mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  image, grid = inputs(seed=4, shape=(1, 2, 3, 3, 1), out=(1, 2, 2))
  with jax.enable_x64(True):
    image, grid = jnp.asarray(image), jnp.asarray(grid)
    f = lambda g: volumetric.grid_sample_3d(image, g, **options).sum()
    h = lambda i, g: volumetric.grid_sample_3d(i, g, **options)
    # jvp against central finite differences (the image is linear)
    direction = jnp.asarray(np.random.default_rng(5).normal(size=grid.shape))
    _, tangent = jax.jvp(f, (grid,), (direction,))
    eps = 1e-6
    numeric = (f(grid + eps * direction) - f(grid - eps * direction)) / (
      2 * eps
    )
    np.testing.assert_allclose(tangent, numeric, rtol=1e-5, atol=1e-7)
    # forward and reverse Jacobians agree, for both arguments
    for argnum in (0, 1):
      np.testing.assert_allclose(
        jax.jacfwd(h, argnum)(image, grid),
        jax.jacrev(h, argnum)(image, grid),
        atol=1e-12,
      )
    _, linear = jax.linearize(f, grid)
    np.testing.assert_allclose(linear(direction), tangent, atol=1e-12)
    # second order: the Hessian (trilinear: piecewise polynomial) equals
    # the Jacobian of the gradient by finite differences, and grad of grad
    hessian = jax.hessian(f)(grid)
    g = jax.grad(f)
    numeric = (g(grid + eps * direction) - g(grid - eps * direction)) / (
      2 * eps
    )
    np.testing.assert_allclose(
      jnp.tensordot(hessian, direction, direction.ndim),
      numeric,
      rtol=1e-4,
      atol=1e-6,
    )
    mixed = jax.grad(lambda i: jax.grad(lambda g: h(i, g).sum())(grid).sum())
    assert mixed(image).shape == image.shape
    # vmap over a batch of volumes equals the batched call
    batched = jax.vmap(lambda i, g: h(i[None], g[None])[0])(image, grid)
    np.testing.assert_allclose(batched, h(image, grid), atol=1e-12)


def test_unbatched_inputs_and_dtypes():
  image, grid = inputs()
  out = volumetric.grid_sample_3d(
    jnp.asarray(image[0], jnp.bfloat16), jnp.asarray(grid[0], jnp.float32)
  )
  assert out.shape == (2, 3, 4, 2) and out.dtype == jnp.bfloat16
  grid_3d = volumetric.affine_grid_3d(np.eye(3, 4, dtype=np.float32), (2, 3, 4))
  assert grid_3d.shape == (2, 3, 4, 3) and grid_3d.dtype == jnp.float32


def test_bad_input_is_named():
  image, grid = inputs()
  with pytest.raises(ValueError, match=r"image must have shape \(N, D, H, W"):
    volumetric.grid_sample_3d(image[..., 0, 0], grid)
  with pytest.raises(ValueError, match=r"grid must have shape"):
    volumetric.grid_sample_3d(image, grid[..., :2])
  with pytest.raises(ValueError, match="batch axis and size"):
    volumetric.grid_sample_3d(image, grid[:1])
  with pytest.raises(ValueError, match="mode must be one of"):
    volumetric.grid_sample_3d(image, grid, mode="bicubic")
  with pytest.raises(ValueError, match="padding_mode must be one of"):
    volumetric.grid_sample_3d(image, grid, padding_mode="fill")
  with pytest.raises(ValueError, match=r"theta must have shape \(N, 3, 4\)"):
    volumetric.affine_grid_3d(np.zeros((2, 2, 3)), (2, 2, 2))
  with pytest.raises(ValueError, match="out_shape must be a"):
    volumetric.affine_grid_3d(np.zeros((2, 3, 4)), (2, 2))
  voxels = jax.ShapeDtypeStruct((2**13, 2**6, 2**6, 2**6, 1), jnp.float32)
  points = jax.ShapeDtypeStruct((2**13, 1, 1, 1, 3), jnp.float32)
  with pytest.raises(ValueError, match="2,147,483,648 pixels"):
    jax.eval_shape(volumetric.grid_sample_3d, voxels, points)


def test_exported():
  assert stn_jax.ops.grid_sample_3d is volumetric.grid_sample_3d
  assert stn_jax.ops.affine_grid_3d is volumetric.affine_grid_3d


def test_volumetric_transformer_layer_starts_at_the_identity_and_trains():
  from flax import nnx

  from stn_jax.models import SpatialTransformer3D

  layer = SpatialTransformer3D((3, 4, 5, 2), rngs=nnx.Rngs(0))
  volume = jnp.asarray(inputs()[0], jnp.float32)
  np.testing.assert_allclose(layer(volume), volume, atol=1e-5)
  assert layer.transform_params(volume).shape == (2, 3, 4)
  smaller = SpatialTransformer3D(
    (3, 4, 5, 2), out_size=(2, 2, 2), rngs=nnx.Rngs(0)
  )
  assert smaller(volume).shape == (2, 2, 2, 2, 2)

  @nnx.jit
  def step(layer, volume):
    loss = lambda m: (m(volume) ** 2).mean()
    return nnx.grad(loss)(layer)

  grads = step(layer, volume)
  # the regression head's weights get a gradient (it starts at zero)
  assert float(jnp.abs(grads.localisation.head.kernel[...]).sum()) > 0
  with pytest.raises(ValueError, match=r"in_shape must be \(D, H, W, C\)"):
    SpatialTransformer3D((4, 5, 2), rngs=nnx.Rngs(0))
