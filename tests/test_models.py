"""Models: registry, identity initialisation, shapes, parameter counts."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
from stn_jax import models


def in_shape_for(name):
  return (32, 32, 3) if name.startswith("gtsrb") else (28, 28, 1)


def small_kwargs(name):
  return {"width": 0.05} if name.startswith("gtsrb") else {}


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_maps_images_to_logits(name):
  shape = in_shape_for(name)
  model = models.get_model(
    name, in_shape=shape, num_classes=7, rngs=nnx.Rngs(0), **small_kwargs(name)
  )
  logits = model(jnp.ones((3, *shape)))
  assert logits.shape == (3, 7)
  assert models.count_params(model) > 0
  assert (len(models.transformers(model)) > 0) == (
    name in models.TRANSFORMER_MODELS
  )


@pytest.mark.parametrize("transform", stn_jax.TRANSFORMS)
@pytest.mark.parametrize("localisation", ["conv", "fc"])
def test_transformer_starts_at_the_identity(transform, localisation):
  layer = models.SpatialTransformer(
    (12, 10, 2),
    transform=transform,
    localisation=localisation,
    rngs=nnx.Rngs(0),
  )
  x = jnp.asarray(
    np.random.default_rng(0).uniform(size=(4, 12, 10, 2)), jnp.float32
  )
  np.testing.assert_allclose(layer(x), x, atol=1e-5)
  np.testing.assert_allclose(
    layer.transform_params(x),
    np.tile(stn_jax.identity_params(transform), (4, 1)),
    atol=1e-6,
  )
  head = layer.localisation.head
  np.testing.assert_array_equal(head.kernel.get_value(), 0)


def test_transformer_on_a_feature_map_with_other_output_size():
  layer = models.SpatialTransformer(
    (16, 16, 8),
    out_size=(8, 6),
    localisation_kwargs={"downsample": 1},
    rngs=nnx.Rngs(1),
  )
  assert layer(jnp.ones((2, 16, 16, 8))).shape == (2, 8, 6, 8)
  assert layer.grid(jnp.ones((2, 16, 16, 8))).shape == (2, 8, 6, 2)


def test_st_output_is_pooled_for_rts():
  model = models.get_model(
    "st_cnn",
    in_shape=(42, 42, 1),
    num_classes=10,
    pool_output=True,
    rngs=nnx.Rngs(0),
  )
  assert model.classifier.out.in_features == (21 // 4) * (21 // 4) * 32


def test_resnet_stn_with_a_transformer_after_a_stage():
  model = models.get_model(
    "resnet_stn",
    in_shape=(32, 32, 3),
    num_classes=5,
    transformer_after_stage=1,
    widths=(4, 8, 8),
    blocks_per_stage=1,
    rngs=nnx.Rngs(0),
  )
  assert len(models.transformers(model)) == 2
  assert model(jnp.ones((2, 32, 32, 3))).shape == (2, 5)


def test_unknown_model_is_rejected():
  with pytest.raises(ValueError, match="model must be one of fcn, cnn"):
    models.get_model(
      "vit", in_shape=(28, 28, 1), num_classes=10, rngs=nnx.Rngs(0)
    )


def test_a_model_is_one_registry_entry_and_the_configs_offer_it():
  """register_model is the one place: get_model builds the new model, the
  lists derive from it, and a config file loaded afterwards offers it."""
  import importlib.util

  from conftest import REPO

  from stn_jax.models import registry

  models.register_model(
    "tiny_st_fcn", models.st_fcn, transformer=True, datasets=("mnist",)
  )
  try:
    assert models.MODELS["tiny_st_fcn"] is models.st_fcn
    assert "tiny_st_fcn" in models.model_names(dataset="mnist")
    assert "tiny_st_fcn" not in models.model_names(dataset="gtsrb")
    assert "tiny_st_fcn" in models.model_names(transformer=True)
    assert "tiny_st_fcn" not in models.model_names(transformer=False)
    spec = importlib.util.spec_from_file_location(
      "mnist_config_after_registration", REPO / "configs" / "mnist.py"
    )
    config_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_file)
    assert "tiny_st_fcn" in config_file.TRANSFORMER_MODELS
    config = config_file.get_config("model=tiny_st_fcn,transform=projective")
    assert config.model_kwargs.transform == "projective"
    model = models.from_config(config, (42, 42, 1))
    assert len(models.transformers(model)) == 1
    with pytest.raises(ValueError, match="'tiny_st_fcn' is registered"):
      models.register_model(
        "tiny_st_fcn", models.st_fcn, transformer=True, datasets=("mnist",)
      )
  finally:
    del registry.ENTRIES["tiny_st_fcn"], registry.MODELS["tiny_st_fcn"]
  with pytest.raises(ValueError, match="datasets must be some of mnist"):
    models.register_model(
      "x", models.FCN, transformer=False, datasets=("svhn",)
    )
  assert "x" not in models.MODELS
  with pytest.raises(ValueError, match="dataset must be one of mnist"):
    models.model_names(dataset="svhn")
