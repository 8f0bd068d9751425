"""Spatial ops on degenerate input: empty grids and batches, traced static
arguments, coincident or collinear thin-plate-spline points."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax

F32 = np.float32
THETA = np.tile(np.array([[1, 0, 0], [0, 1, 0]], F32), (2, 1, 1))
HOMOGRAPHY = np.tile(np.eye(3, dtype=F32), (2, 1, 1))
CONTROL = np.tile(stn_jax.tps_source_points(16), (2, 1, 1))
IMAGE = np.random.default_rng(0).random((2, 5, 6, 3)).astype(F32)
GRID = np.asarray(stn_jax.affine_grid(THETA, (4, 4)))


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: stn_jax.grid_sample(IMAGE, np.zeros((2, 0, 4, 2), F32)),
      r"grid must not be empty.*got shape \(2, 0, 4, 2\)",
    ),
    (
      lambda: stn_jax.grid_sample(IMAGE, np.zeros((2, 4, 0, 2), F32)),
      r"grid must not be empty.*got shape \(2, 4, 0, 2\)",
    ),
    (
      lambda: stn_jax.grid_sample(IMAGE[0], np.zeros((0, 4, 2), F32)),
      r"grid must not be empty.*got shape \(1, 0, 4, 2\)",
    ),
    (
      lambda: stn_jax.grid_sample(IMAGE[:0], GRID[:0]),
      r"image must not be empty.*the batch N included.*\(0, 5, 6, 3\)",
    ),
    (
      lambda: stn_jax.grid_sample(IMAGE[:, :0], GRID),
      r"image must not be empty.*\(2, 0, 6, 3\)",
    ),
    (
      lambda: stn_jax.affine_grid(THETA, (0, 4)),
      r"out_shape must be a \(height, width\) pair of positive ints \(a "
      r"zero size would give an empty grid\); got \(0, 4\)",
    ),
    (lambda: stn_jax.projective_grid(HOMOGRAPHY, (4, 0)), "out_shape.*(4, 0)"),
    (lambda: stn_jax.tps_grid(CONTROL, (0, 0)), r"out_shape.*\(0, 0\)"),
    (
      lambda: stn_jax.params_to_grid("affine", np.zeros((2, 6), F32), (0, 3)),
      "out_shape",
    ),
    (
      lambda: stn_jax.affine_grid(THETA[:0], (4, 4)),
      r"theta must not be empty.*\(N, 2, 3\).*got shape \(0, 2, 3\)",
    ),
    (
      lambda: stn_jax.projective_grid(HOMOGRAPHY[:0], (4, 4)),
      r"homography must not be empty.*got shape \(0, 3, 3\)",
    ),
    (
      lambda: stn_jax.tps_grid(CONTROL[:0], (4, 4)),
      r"control_points must not be empty.*got shape \(0, 16, 2\)",
    ),
    (
      lambda: stn_jax.tps_grid(np.zeros((2, 0, 2), F32), (4, 4)),
      r"control_points must not be empty.*got shape \(2, 0, 2\)",
    ),
    (
      lambda: stn_jax.params_to_grid("affine", np.zeros((0, 6), F32), (4, 4)),
      r"params must not be empty.*got shape \(0, 6\)",
    ),
  ],
)
def test_empty_grid_or_batch_raises_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


STATIC_HINT = r"must be static .*not a traced value.*static_argnums"


@pytest.mark.parametrize(
  "function,args,match",
  [
    (
      lambda t, s: stn_jax.affine_grid(t, s),
      (THETA, (4, 4)),
      r"out_shape must be static \(a \(height, width\) pair of Python ints\)",
    ),
    (
      lambda t, s: stn_jax.affine_grid(t, s),
      (THETA, jnp.array([4, 4])),
      "out_shape must be static",
    ),
    (
      lambda h, s: stn_jax.projective_grid(h, s),
      (HOMOGRAPHY, (4, 4)),
      "out_shape must be static",
    ),
    (
      lambda c, s: stn_jax.tps_grid(c, s),
      (CONTROL, (4, 4)),
      "out_shape must be static",
    ),
    (
      lambda p, s: stn_jax.params_to_grid("affine", p, s),
      (THETA.reshape(2, 6), (4, 4)),
      "out_shape must be static",
    ),
    (
      lambda t, a: stn_jax.affine_grid(t, (4, 4), align_corners=a),
      (THETA, True),
      r"align_corners must be static \(a Python bool\)",
    ),
    (
      lambda c, a: stn_jax.tps_grid(c, (4, 4), align_corners=a),
      (CONTROL, False),
      "align_corners must be static",
    ),
    (
      lambda g, a: stn_jax.grid_sample(IMAGE, g, align_corners=a),
      (GRID, True),
      "align_corners must be static",
    ),
    (
      lambda g, m: stn_jax.grid_sample(IMAGE, g, mode=m),
      (GRID, 1),
      r"mode must be static \(a Python str\)",
    ),
    (
      lambda i, s: stn_jax.warp_affine(i, THETA, s),
      (IMAGE, (4, 4)),
      "out_size must be static",
    ),
    (
      lambda k: stn_jax.tps_source_points(k),
      (16,),
      r"num_control_points must be static \(a Python int\)",
    ),
    (
      lambda k: stn_jax.identity_params("tps", num_control_points=k),
      (16,),
      "num_control_points must be static",
    ),
  ],
)
def test_traced_static_arguments_raise_saying_they_must_be_static(
  function, args, match
):
  with pytest.raises(ValueError, match=match) as error:
    jax.jit(function)(*args)
  assert error.match(STATIC_HINT) and error.match("functools.partial")


def test_static_arguments_under_jit_and_concrete_jax_values_work():
  want = stn_jax.affine_grid(THETA, (4, 5), align_corners=True)
  static = jax.jit(
    stn_jax.affine_grid, static_argnames=("out_shape", "align_corners")
  )
  np.testing.assert_array_equal(
    static(THETA, out_shape=(4, 5), align_corners=True), want
  )
  bound = jax.jit(
    functools.partial(stn_jax.affine_grid, out_shape=(4, 5), align_corners=True)
  )
  np.testing.assert_array_equal(bound(THETA), want)
  # Concrete (untraced) JAX integers and bools are values, not tracers.
  np.testing.assert_array_equal(
    stn_jax.affine_grid(
      THETA, jnp.array([4, 5]), align_corners=jnp.array(True)
    ),
    want,
  )
  with pytest.raises(ValueError, match="align_corners must be a bool"):
    stn_jax.affine_grid(THETA, (4, 5), align_corners=jnp.array(1))


def _duplicated():
  points = stn_jax.tps_source_points(16).copy()
  points[9] = points[3]
  return points


def _collinear():
  t = np.linspace(-1, 1, 16)
  return np.stack([t, 0.5 * t + 0.1], -1).astype(F32)


DUPLICATE = r"must be distinct points.*got points 3 and 9 at distance 0"
COLLINEAR = r"must not all lie on one line.*got 16 points"


@pytest.mark.parametrize(
  "points,match",
  [
    (_duplicated(), DUPLICATE),
    (_collinear(), COLLINEAR),
    (np.zeros((16, 2), F32), "must be distinct points"),
    (np.full((16, 2), np.nan, F32), "must be finite; got 32 nan/inf"),
  ],
)
@pytest.mark.parametrize("as_jax", [False, True])
def test_tps_grid_degenerate_source_points_raise(points, match, as_jax):
  source = jnp.asarray(points) if as_jax else points
  with pytest.raises(ValueError, match="source_points " + match):
    stn_jax.tps_grid(CONTROL, (4, 4), source_points=source)


def test_tps_grid_traced_source_points_are_not_checked():
  # Documented limitation: under jit the values cannot be looked at.
  grid_of = jax.jit(
    lambda s: stn_jax.tps_grid(CONTROL, (4, 4), source_points=s)
  )
  assert grid_of(jnp.asarray(_duplicated())).shape == (2, 4, 4, 2)
  with pytest.raises(ValueError, match="source_points must be distinct"):
    stn_jax.tps_grid(CONTROL, (4, 4), source_points=jnp.asarray(_duplicated()))


@pytest.mark.parametrize("num_control_points", [4, 16, 64, 144])
def test_tps_grid_accepts_regular_and_nearly_degenerate_points(
  num_control_points,
):
  # The check this replaces (|det| < 1e-12) rejected K = 64 and K = 144.
  source = stn_jax.tps_source_points(num_control_points)
  control = np.asarray(source)[None]
  identity = stn_jax.affine_grid(THETA[:1], (6, 7))
  np.testing.assert_allclose(
    stn_jax.tps_grid(control, (6, 7)), identity, atol=1e-4
  )
  # Distinct but close (1e-3 apart) and nearly collinear points are fine.
  near = source.astype(np.float64).copy()
  near[1] = near[0] + 1e-3
  grid = stn_jax.tps_grid(control, (6, 7), source_points=near)
  assert np.isfinite(np.asarray(grid)).all()
  t = np.linspace(-1, 1, num_control_points)
  thin = np.stack([t, 1e-3 * np.cos(7 * t)], -1)
  assert np.isfinite(
    np.asarray(stn_jax.tps_grid(control, (6, 7), source_points=thin))
  ).all()


@pytest.mark.parametrize(
  "src,match",
  [
    (_duplicated(), "src " + DUPLICATE),
    (_collinear(), "src " + COLLINEAR),
    (
      np.stack([stn_jax.tps_source_points(16), _duplicated()]),
      r"src\[1\] " + DUPLICATE,
    ),
  ],
)
def test_fit_tps_degenerate_src_raises(src, match):
  with pytest.raises(ValueError, match=match):
    stn_jax.fit_tps(src, src)
  with pytest.raises(ValueError, match=match):
    stn_jax.fit_tps(jnp.asarray(src), jnp.asarray(src))


def test_fit_tps_regularized_accepts_repeated_points_but_not_collinear():
  src = _duplicated()
  dst = src * 1.5 + 0.25
  tps = stn_jax.fit_tps(src, dst, regularization=0.1)
  assert all(np.isfinite(np.asarray(field)).all() for field in tps)
  # Affine maps are reproduced for any regularisation, repeated points too.
  np.testing.assert_allclose(stn_jax.tps_warp_points(tps, src), dst, atol=1e-4)
  with pytest.raises(ValueError, match="src " + COLLINEAR):
    stn_jax.fit_tps(_collinear(), _collinear(), regularization=0.1)
  with pytest.raises(ValueError, match="src must be distinct"):
    stn_jax.fit_tps(src, dst, regularization=jnp.asarray(0.0))


def test_fit_tps_traced_src_is_not_checked():
  # Documented limitation: under jit the values cannot be looked at, so the
  # singular system is solved anyway (non-finite or meaningless results,
  # depending on rounding) where the same call outside jit raises.
  tps = jax.jit(stn_jax.fit_tps)(_collinear(), _collinear())
  assert tps.weights.shape == (16, 2) and tps.affine.shape == (3, 2)
  with pytest.raises(ValueError, match="src " + COLLINEAR):
    stn_jax.fit_tps(_collinear(), _collinear())
