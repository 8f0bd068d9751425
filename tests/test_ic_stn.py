"""The inverse compositional spatial transformer (IC-STN) and the 3x3
matrix form of the flat transform parameters it composes with."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import stn_jax
from stn_jax import models

SHAPE = (12, 12, 1)


def _images(n=3, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(size=(n, *SHAPE)), jnp.float32)


def _perturb_head(layer, seed=1, scale=0.05):
  """Non-zero head weights, so the updates depend on the input."""
  head = layer.localisation.head
  rng = np.random.default_rng(seed)
  kernel = rng.normal(0, scale, head.kernel.get_value().shape)
  head.kernel.set_value(jnp.asarray(kernel, jnp.float32))


def _layer(transform="affine", recurrences=3, **kwargs):
  return models.ICSpatialTransformer(
    SHAPE,
    transform=transform,
    recurrences=recurrences,
    localisation_kwargs={"channels": (4, 4), "hidden": 8, "downsample": 1},
    rngs=nnx.Rngs(0),
    **kwargs,
  )


@pytest.mark.parametrize("transform", ["affine", "projective", "attention"])
def test_params_to_matrix_round_trip_and_grid(transform):
  rng = np.random.default_rng(0)
  size = stn_jax.num_transform_params(transform)
  params = stn_jax.identity_params(transform) + rng.normal(0, 0.1, (4, size))
  params = jnp.asarray(params, jnp.float32)
  matrix = stn_jax.params_to_matrix(transform, params)
  assert matrix.shape == (4, 3, 3)
  # The matrix gives the same grid as the flat parameters.
  np.testing.assert_allclose(
    stn_jax.projective_grid(matrix, (5, 7)),
    stn_jax.params_to_grid(transform, params, (5, 7)),
    atol=1e-5,
  )
  if transform != "attention":
    np.testing.assert_allclose(
      stn_jax.matrix_to_params(transform, matrix), params, atol=1e-6
    )
  # Unbatched, and under jit and vmap.
  np.testing.assert_allclose(
    stn_jax.params_to_matrix(transform, params[0]), matrix[0], atol=1e-7
  )
  jitted = jax.jit(stn_jax.params_to_matrix, static_argnums=0)
  np.testing.assert_allclose(jitted(transform, params), matrix, atol=1e-7)
  mapped = jax.vmap(lambda p: stn_jax.params_to_matrix(transform, p))
  np.testing.assert_allclose(mapped(params), matrix, atol=1e-7)


def test_matrix_to_params_normalises_a_homography():
  matrix = 2.5 * np.eye(3, dtype=np.float32)
  matrix[2, 0] = 0.5
  params = stn_jax.matrix_to_params("projective", matrix)
  np.testing.assert_allclose(params, [1, 0, 0, 0, 1, 0, 0.2, 0], atol=1e-7)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="transform must be one of"):
    stn_jax.params_to_matrix("tps", np.zeros((1, 32), np.float32))
  with pytest.raises(ValueError, match="params must have shape"):
    stn_jax.params_to_matrix("affine", np.zeros((1, 8), np.float32))
  with pytest.raises(ValueError, match="'affine' or 'projective'"):
    _layer(transform="tps")
  with pytest.raises(ValueError, match="recurrences must be an int >= 1"):
    _layer(recurrences=0)


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_ic_stn_starts_at_the_identity(transform):
  layer = _layer(transform)
  x = _images()
  np.testing.assert_allclose(layer(x), x, atol=1e-5)
  np.testing.assert_allclose(
    layer.transform_params(x),
    np.tile(stn_jax.identity_params(transform), (3, 1)),
    atol=1e-6,
  )
  np.testing.assert_array_equal(layer.localisation.head.kernel.get_value(), 0)


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_composition_equals_the_warps_applied_one_after_another(transform):
  layer = _layer(transform, recurrences=3)
  _perturb_head(layer)
  x = _images()
  warps = layer.updates(x)  # (K + 1, N, 3, 3)
  assert warps.shape == (4, 3, 3, 3)
  np.testing.assert_allclose(warps[0], np.tile(np.eye(3), (3, 1, 1)))
  # By hand: each step's update is regressed from the ORIGINAL input
  # warped by the composition so far, and composed on the right.
  warp = np.tile(np.eye(3), (3, 1, 1))
  for k in range(3):
    grid = stn_jax.projective_grid(jnp.asarray(warp, jnp.float32), SHAPE[:2])
    seen = stn_jax.grid_sample(x, grid)
    update = stn_jax.params_to_matrix(transform, layer.localisation(seen))
    warp = warp @ np.asarray(update, np.float64)
    np.testing.assert_allclose(warps[k + 1], warp, atol=1e-5)
    assert not np.allclose(warp, np.eye(3), atol=1e-3)  # a real test
  # The output samples the original input once with the composed warp ...
  composed = stn_jax.projective_grid(jnp.asarray(warp, jnp.float32), SHAPE[:2])
  once = stn_jax.grid_sample(x, composed)
  np.testing.assert_allclose(layer(x), once, atol=1e-5)
  # ... not the warped images one after another (each resampling blurs).
  last = stn_jax.params_to_matrix(transform, layer.localisation(seen))
  chained = stn_jax.grid_sample(seen, stn_jax.projective_grid(last, SHAPE[:2]))
  assert not np.allclose(layer(x), chained, atol=1e-5)


@pytest.mark.parametrize("transform", ["affine", "projective"])
def test_one_recurrence_is_the_st_cnn_with_the_same_parameters(transform):
  kwargs = dict(
    in_shape=(28, 28, 1),
    num_classes=10,
    transform=transform,
    channels=(4, 4),
    localisation_channels=(4, 4),
    localisation_hidden=8,
  )
  st = models.get_model("st_cnn", rngs=nnx.Rngs(3), **kwargs)
  ic = models.get_model("ic_st_cnn", recurrences=1, rngs=nnx.Rngs(3), **kwargs)
  _perturb_head(st.transformer)
  nnx.update(ic, nnx.state(st))  # the same parameters, the same tree
  x = jnp.asarray(
    np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32
  )
  np.testing.assert_allclose(
    ic.transformer.transform_params(x),
    st.transformer.transform_params(x),
    atol=1e-6,
  )
  np.testing.assert_allclose(ic(x), st(x), atol=1e-5)
  # More recurrences give another model.
  ic.transformer.recurrences = 2
  assert not np.allclose(ic(x), st(x), atol=1e-4)


def test_gradients_match_finite_differences():
  layer = _layer("affine", recurrences=2)
  _perturb_head(layer, scale=0.2)
  graphdef, state = nnx.split(layer)
  with jax.enable_x64(True):
    pure = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64), nnx.to_pure_dict(state)
    )
    head = pure["localisation"]["head"]

    def output(kernel, bias, images):
      values = {**pure}
      values["localisation"] = {
        **pure["localisation"],
        "head": {"kernel": kernel, "bias": bias},
      }
      nnx.replace_by_pure_dict(state, values)
      return (nnx.merge(graphdef, state)(images) ** 2).sum()

    check_grads(
      output,
      (
        head["kernel"],
        head["bias"],
        jnp.asarray(_images(2), jnp.float64),
      ),
      order=1,
      modes=["rev", "fwd"],
      eps=1e-6,
      atol=1e-5,
      rtol=1e-5,
    )


def test_ic_stn_under_jit_and_vmap():
  layer = _layer("projective", recurrences=2)
  _perturb_head(layer)
  graphdef, state = nnx.split(layer)
  x = _images(4)
  eager = layer(x)
  jitted = jax.jit(lambda s, a: nnx.merge(graphdef, s)(a))(state, x)
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  mapped = jax.vmap(lambda a: nnx.merge(graphdef, state)(a[None])[0])(x)
  np.testing.assert_allclose(mapped, eager, atol=1e-5)


def test_tools_that_read_a_transformer_read_the_composed_warp():
  model = models.get_model(
    "ic_st_cnn",
    in_shape=(28, 28, 1),
    num_classes=10,
    channels=(4, 4),
    localisation_channels=(4, 4),
    localisation_hidden=8,
    recurrences=3,
    rngs=nnx.Rngs(0),
  )
  _perturb_head(model.transformer)
  x = jnp.asarray(
    np.random.default_rng(1).uniform(size=(2, 28, 28, 1)), jnp.float32
  )
  assert models.transformers(model) == [model.transformer]
  composed = model.transformer.updates(x)[-1]
  np.testing.assert_allclose(
    models.first_transform_params(model, x),
    stn_jax.matrix_to_params("affine", composed),
    atol=1e-6,
  )
  np.testing.assert_allclose(
    models.warp_input(model, x), model.transformer(x), atol=1e-6
  )
