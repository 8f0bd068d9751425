"""Grid generators and transformation families."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import requires_torch
from jax.test_util import check_grads
from scipy.interpolate import RBFInterpolator

import stn_jax

SIZES = [(1, 1), (4, 5), (7, 6), (9, 9)]


def random_theta(n, seed=0):
  rng = np.random.default_rng(seed)
  theta = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (n, 1, 1))
  return theta + rng.normal(scale=0.3, size=theta.shape).astype(np.float32)


@pytest.mark.parametrize("out_shape", SIZES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_matches_reference(out_shape, align_corners):
  theta = random_theta(3)
  got = stn_jax.affine_grid(theta, out_shape, align_corners=align_corners)
  assert got.shape == (3, *out_shape, 2) and got.dtype == jnp.float32
  np.testing.assert_allclose(
    got, reference.affine_grid(theta, out_shape, align_corners), atol=1e-6
  )


@requires_torch
@pytest.mark.parametrize("out_shape", SIZES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_matches_torch(out_shape, align_corners):
  import torch

  theta = random_theta(2, seed=1)
  want = torch.nn.functional.affine_grid(
    torch.tensor(theta), (2, 3, *out_shape), align_corners=align_corners
  )
  got = stn_jax.affine_grid(theta, out_shape, align_corners=align_corners)
  np.testing.assert_allclose(got, want.numpy(), atol=1e-6, rtol=0)


def test_base_coordinates_are_pixel_centres():
  np.testing.assert_allclose(
    stn_jax.base_coordinates(4), [-0.75, -0.25, 0.25, 0.75]
  )
  np.testing.assert_allclose(
    stn_jax.base_coordinates(3, align_corners=True), [-1, 0, 1]
  )
  np.testing.assert_allclose(
    stn_jax.base_coordinates(1, align_corners=True), [0]
  )


def test_projective_identity_and_affine_consistency():
  theta = random_theta(2, seed=2)
  homography = np.concatenate(
    [theta, np.tile(np.array([[[0, 0, 1]]], np.float32), (2, 1, 1))], 1
  )
  for align_corners in (False, True):
    np.testing.assert_allclose(
      stn_jax.projective_grid(homography, (5, 6), align_corners=align_corners),
      stn_jax.affine_grid(theta, (5, 6), align_corners=align_corners),
      atol=1e-6,
    )
  identity = stn_jax.projective_grid(np.eye(3, dtype=np.float32), (4, 3))
  np.testing.assert_allclose(
    identity,
    stn_jax.affine_grid(np.eye(2, 3, dtype=np.float32), (4, 3)),
    atol=1e-7,
  )


def test_projective_matches_reference():
  rng = np.random.default_rng(3)
  homography = np.eye(3, dtype=np.float32) + rng.normal(
    scale=0.1, size=(4, 3, 3)
  ).astype(np.float32)
  for align_corners in (False, True):
    np.testing.assert_allclose(
      stn_jax.projective_grid(homography, (6, 5), align_corners=align_corners),
      reference.projective_grid(homography, (6, 5), align_corners),
      atol=1e-5,
    )


def test_projective_known_transform_perspective_divide():
  # (x, y, 1) -> (x, y, 2): every point moves halfway to the centre.
  homography = np.diag([1.0, 1.0, 2.0]).astype(np.float32)
  grid = stn_jax.projective_grid(homography, (4, 4))
  np.testing.assert_allclose(
    grid,
    stn_jax.affine_grid(
      np.diag([0.5, 0.5])
      .astype(np.float32)
      .dot(np.eye(2, 3, dtype=np.float32)),
      (4, 4),
    ),
    atol=1e-7,
  )


def test_projective_points_at_infinity_have_zero_gradient():
  # Third row (1, 0, 0): w = x, which is 0 on the middle column of a 3x3 grid.
  homography = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float32)
  grid = stn_jax.projective_grid(homography, (3, 3))
  assert np.all(np.isinf(grid[:, 1]))
  loss = lambda h: stn_jax.grid_sample(
    jnp.ones((3, 3, 1)), stn_jax.projective_grid(h, (3, 3))
  ).sum()
  grad = jax.grad(loss)(jnp.asarray(homography))
  assert np.all(np.isfinite(grad))


def test_tps_source_points_layout():
  points = stn_jax.tps_source_points(16)
  assert points.shape == (16, 2)
  np.testing.assert_allclose(points[:4, 0], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
  np.testing.assert_allclose(points[::4, 1], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
  with pytest.raises(ValueError, match="num_control_points"):
    stn_jax.tps_source_points(15)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_identity_and_affine_reproduction(align_corners):
  source = stn_jax.tps_source_points(16)
  identity = stn_jax.tps_grid(source, (7, 5), align_corners=align_corners)
  np.testing.assert_allclose(
    identity,
    stn_jax.affine_grid(
      np.eye(2, 3, dtype=np.float32), (7, 5), align_corners=align_corners
    ),
    atol=1e-5,
  )
  theta = random_theta(2, seed=4)
  control = np.einsum(
    "kj,ndj->nkd", np.concatenate([source, np.ones((16, 1))], 1), theta
  )
  np.testing.assert_allclose(
    stn_jax.tps_grid(
      control.astype(np.float32), (7, 5), align_corners=align_corners
    ),
    stn_jax.affine_grid(theta, (7, 5), align_corners=align_corners),
    atol=1e-5,
  )


def test_tps_matches_scipy_thin_plate_spline():
  rng = np.random.default_rng(5)
  source = stn_jax.tps_source_points(16).astype(np.float64)
  control = (source + rng.normal(scale=0.1, size=(2, 16, 2))).astype(np.float32)
  got = stn_jax.tps_grid(control, (6, 8))
  points = reference.output_points((6, 8), False)[..., :2].reshape(-1, 2)
  for n in range(2):
    spline = RBFInterpolator(
      source,
      control[n].astype(np.float64),
      kernel="thin_plate_spline",
      degree=1,
    )
    np.testing.assert_allclose(
      got[n], spline(points).reshape(6, 8, 2), atol=1e-5
    )


def test_tps_learned_source_points_equal_static_ones():
  rng = np.random.default_rng(6)
  source = (
    stn_jax.tps_source_points(9) + rng.normal(scale=0.05, size=(9, 2))
  ).astype(np.float32)
  control = (source + rng.normal(scale=0.1, size=(9, 2))).astype(np.float32)
  static = stn_jax.tps_grid(control, (5, 5), source_points=source)
  traced = jax.jit(
    lambda s: stn_jax.tps_grid(control, (5, 5), source_points=s)
  )(jnp.asarray(source))
  np.testing.assert_allclose(static, traced, atol=1e-4)
  with pytest.raises(ValueError, match="source_points"):
    stn_jax.tps_grid(control, (5, 5), source_points=source[:4])


def test_attention_theta():
  theta = stn_jax.attention_theta(np.array([[0.5, 0.1, -0.2]], np.float32))
  np.testing.assert_allclose(theta, [[[0.5, 0, 0.1], [0, 0.5, -0.2]]])


@pytest.mark.parametrize("transform", stn_jax.TRANSFORMS)
def test_identity_params_give_identity_grid(transform):
  params = stn_jax.identity_params(transform)
  assert params.shape == (stn_jax.num_transform_params(transform),)
  grid = stn_jax.params_to_grid(transform, np.stack([params, params]), (6, 7))
  np.testing.assert_allclose(
    grid,
    stn_jax.affine_grid(
      np.tile(np.eye(2, 3, dtype=np.float32), (2, 1, 1)), (6, 7)
    ),
    atol=1e-5,
  )


def test_params_to_grid_layouts():
  theta = random_theta(2, seed=7)
  np.testing.assert_allclose(
    stn_jax.params_to_grid("affine", theta.reshape(2, 6), (4, 4)),
    stn_jax.affine_grid(theta, (4, 4)),
    atol=1e-7,
  )
  homography = np.concatenate(
    [theta.reshape(2, 6), np.full((2, 2), 0.1, np.float32)], 1
  )
  full = np.concatenate([homography, np.ones((2, 1), np.float32)], 1).reshape(
    2, 3, 3
  )
  np.testing.assert_allclose(
    stn_jax.params_to_grid("projective", homography, (4, 4)),
    stn_jax.projective_grid(full, (4, 4)),
    atol=1e-7,
  )
  with pytest.raises(ValueError, match=r"params for 'affine' must have shape"):
    stn_jax.params_to_grid("affine", np.zeros((2, 5), np.float32), (4, 4))
  with pytest.raises(ValueError, match="transform must be one of"):
    stn_jax.params_to_grid("similarity", np.zeros((2, 4), np.float32), (4, 4))


GRID_FUNCTIONS = {
  "affine_grid": (stn_jax.affine_grid, (2, 3)),
  "projective_grid": (stn_jax.projective_grid, (3, 3)),
  "tps_grid": (stn_jax.tps_grid, (16, 2)),
}


def near_identity(name, seed=0):
  rng = np.random.default_rng(seed)
  base = {
    "affine_grid": np.eye(2, 3),
    "projective_grid": np.eye(3),
    "tps_grid": stn_jax.tps_source_points(16),
  }[name]
  return base + rng.normal(scale=0.05, size=(3, *base.shape))


@pytest.mark.parametrize("name", GRID_FUNCTIONS)
def test_grid_gradients_match_finite_differences(name):
  fn, _ = GRID_FUNCTIONS[name]
  with jax.enable_x64(True):
    params = jnp.asarray(near_identity(name), jnp.float64)
    check_grads(
      lambda p: fn(p, (4, 5)),
      (params,),
      order=1,
      modes=("rev",),
      eps=1e-6,
      atol=1e-6,
      rtol=1e-6,
    )


@pytest.mark.parametrize("name", GRID_FUNCTIONS)
def test_grid_functions_under_jit_and_vmap(name):
  fn, _ = GRID_FUNCTIONS[name]
  params = jnp.asarray(near_identity(name, seed=1), jnp.float32)
  batched = fn(params, (4, 5), align_corners=True)
  jitted = jax.jit(functools.partial(fn, out_shape=(4, 5), align_corners=True))(
    params
  )
  mapped = jax.vmap(lambda p: fn(p, (4, 5), align_corners=True))(params)
  single = fn(params[0], (4, 5), align_corners=True)
  np.testing.assert_allclose(jitted, batched, atol=1e-6)
  np.testing.assert_allclose(mapped, batched, atol=1e-6)
  np.testing.assert_allclose(single, batched[0], atol=1e-6)


def test_params_helpers_under_jit_and_vmap():
  params = jnp.asarray(
    np.random.default_rng(8).normal(size=(3, 3)), jnp.float32
  )
  np.testing.assert_allclose(
    jax.vmap(stn_jax.attention_theta)(params),
    jax.jit(stn_jax.attention_theta)(params),
  )
  for transform in stn_jax.TRANSFORMS:
    p = jnp.tile(stn_jax.identity_params(transform), (3, 1))
    p = p + 0.01 * jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
    fn = functools.partial(stn_jax.params_to_grid, transform, out_shape=(3, 4))
    np.testing.assert_allclose(jax.vmap(fn)(p), jax.jit(fn)(p), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_grid_dtypes_follow_input(dtype):
  for name, (fn, _) in GRID_FUNCTIONS.items():
    assert fn(jnp.asarray(near_identity(name), dtype), (3, 3)).dtype == dtype
  assert stn_jax.attention_theta(jnp.ones((2, 3), dtype)).dtype == dtype


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: stn_jax.affine_grid(np.zeros((2, 3, 3), np.float32), (4, 4)),
      r"theta must have shape \(N, 2, 3\).*got shape \(2, 3, 3\)",
    ),
    (
      lambda: stn_jax.affine_grid(np.zeros((2, 2, 3), np.int32), (4, 4)),
      "theta must have a floating dtype",
    ),
    (
      lambda: stn_jax.affine_grid(np.zeros((2, 2, 3), np.float32), (4, 4, 1)),
      r"out_shape must be a \(height, width\) pair",
    ),
    (
      lambda: stn_jax.affine_grid(np.zeros((2, 2, 3), np.float32), (0, 4)),
      "out_shape",
    ),
    (
      lambda: stn_jax.affine_grid(
        np.zeros((2, 2, 3), np.float32), (4, 4), align_corners="yes"
      ),
      "align_corners",
    ),
    (
      lambda: stn_jax.projective_grid(np.zeros((2, 2, 3), np.float32), (4, 4)),
      "homography must have shape",
    ),
    (
      lambda: stn_jax.tps_grid(np.zeros((2, 16, 3), np.float32), (4, 4)),
      "control_points must have shape",
    ),
    (
      lambda: stn_jax.tps_grid(np.zeros((2, 15, 2), np.float32), (4, 4)),
      "perfect square",
    ),
    (
      lambda: stn_jax.attention_theta(np.zeros((2, 4), np.float32)),
      "params must have shape",
    ),
    (lambda: stn_jax.identity_params("rigid"), "transform must be one of"),
  ],
)
def test_bad_input_raises_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
