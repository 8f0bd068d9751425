"""What a model's first spatial transformer sees, its parameters, and the
input warped by it: ``models.transformer_input``, ``first_transform_params``
and ``warp_input``, checked against what the localisation net actually
receives in a real forward pass (recorded by wrapping its ``__call__``), and
the training step's transformer statistics computed from that."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stn_jax
from stn_jax import models, steps
from stn_jax.models import layers
from stn_jax.models.contrast import local_contrast_norm

RESNET = {"widths": (4, 8, 8), "blocks_per_stage": 1}
CASES = {
  "st_cnn": ("st_cnn", (28, 28, 1), {}),
  "st_fcn": ("st_fcn", (28, 28, 1), {}),
  "gtsrb_st_cnn": ("gtsrb_st_cnn", (32, 32, 3), {"width": 0.05}),
  # the first transformer sees the contrast-normalised image
  "gtsrb_st_cnn_lcn": (
    "gtsrb_st_cnn",
    (32, 32, 3),
    {"width": 0.05, "contrast_norm_input": True},
  ),
  "resnet_stn": ("resnet_stn", (32, 32, 3), RESNET),
  "resnet_stn_and_a_stage": (
    "resnet_stn",
    (32, 32, 3),
    {**RESNET, "transformer_after_stage": 1},
  ),
  # the only transformer sees stage 1's features
  "resnet_stage_only": (
    "resnet",
    (32, 32, 3),
    {**RESNET, "transformer_after_stage": 1},
  ),
}
PREACT = {"widths": (4, 8, 8), "blocks_per_stage": 1}
CASES.update(
  {
    "preact_input": ("preact_resnet_stn", (32, 32, 3), PREACT),
    "preact_everywhere": (
      "preact_resnet_stn",
      (32, 32, 3),
      {**PREACT, "placement": ("input", "stage1", "stage2")},
    ),
    # the localisation reads the stem's features; the image is warped
    "preact_shared_stem": (
      "preact_resnet_stn",
      (32, 32, 3),
      {**PREACT, "shared_stem": True},
    ),
    # the only transformer sees stage 2's features
    "preact_stage2": (
      "preact_resnet_stn",
      (32, 32, 3),
      {**PREACT, "placement": ("stage2",)},
    ),
  }
)
NOT_ON_THE_RAW_INPUT = (
  "gtsrb_st_cnn_lcn",
  "resnet_stage_only",
  "preact_shared_stem",
  "preact_stage2",
)


def _model_and_images(case):
  """The model, with every localisation head perturbed so that its
  parameters depend on the input (at the identity start they do not),
  and 4 random images."""
  name, in_shape, kwargs = CASES[case]
  model = models.get_model(
    name, in_shape=in_shape, num_classes=5, rngs=nnx.Rngs(0), **kwargs
  )
  rng = np.random.default_rng(1)
  for transformer in models.transformers(model):
    kernel = transformer.localisation.head.kernel
    kernel.set_value(
      jnp.asarray(0.05 * rng.normal(size=kernel.get_value().shape), jnp.float32)
    )
  images = jnp.asarray(rng.uniform(size=(4, *in_shape)), jnp.float32)
  return model, images


def _record_localisation_inputs(monkeypatch):
  """Every (localisation net, its input) of the calls that follow."""
  seen = []
  for cls in (layers.ConvLocalisation, layers.FCLocalisation):
    original = cls.__call__

    def recording(self, x, original=original):
      seen.append((self, x))
      return original(self, x)

    monkeypatch.setattr(cls, "__call__", recording)
  return seen


@pytest.mark.parametrize("case", list(CASES))
def test_transformer_input_is_what_the_first_transformer_receives(
  case, monkeypatch
):
  model, images = _model_and_images(case)
  first = models.transformers(model)[0]
  seen = _record_localisation_inputs(monkeypatch)
  model(images)
  localisation, received = seen[0]
  # transformers(model)[0] is the one the forward pass applies first
  assert localisation is first.localisation
  if case in NOT_ON_THE_RAW_INPUT:
    assert received.shape != images.shape or not np.allclose(received, images)
  np.testing.assert_allclose(
    models.transformer_input(model, images), received, rtol=1e-5, atol=1e-5
  )
  params = models.first_transform_params(model, images)
  np.testing.assert_allclose(
    params, first.localisation(received), rtol=1e-5, atol=1e-6
  )
  assert float(jnp.abs(params - stn_jax.identity_params("affine")).max()) > 1e-3


def test_the_contrast_normalised_input_is_the_local_contrast_norm():
  model, images = _model_and_images("gtsrb_st_cnn_lcn")
  np.testing.assert_allclose(
    models.transformer_input(model, images),
    local_contrast_norm(images),
    rtol=1e-6,
    atol=1e-6,
  )


@pytest.mark.parametrize("case", list(CASES))
def test_warp_input_samples_the_image_where_the_transformer_samples(
  case, monkeypatch
):
  """The image sampled (bilinear, zeros, as the layer) at the affine grid
  of the parameters the localisation net regressed from what it received;
  for a transformer on the raw input, its own output."""
  model, images = _model_and_images(case)
  first = models.transformers(model)[0]
  seen = _record_localisation_inputs(monkeypatch)
  model(images)
  theta = first.localisation(seen[0][1]).reshape(-1, 2, 3)
  want = stn_jax.grid_sample(images, stn_jax.affine_grid(theta, first.out_size))
  got = models.warp_input(model, images)
  assert got.shape == (4, *first.out_size, images.shape[-1])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if case not in NOT_ON_THE_RAW_INPUT:
    np.testing.assert_allclose(got, first(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", NOT_ON_THE_RAW_INPUT)
def test_training_step_statistics_come_from_what_the_transformer_receives(
  case, monkeypatch
):
  """The step's theta statistics (it once fed the raw image to the first
  transformer's localisation net, which for a ResNet's stage transformer
  failed and for input contrast normalisation gave wrong numbers)."""
  model, images = _model_and_images(case)
  seen = _record_localisation_inputs(monkeypatch)
  model(images)
  localisation, received = seen[0]
  want = steps.transform_statistics("affine", localisation(received))
  monkeypatch.undo()
  optimizer = optax.sgd(0.0)
  graphdef, state = steps.init_state(model, optimizer)
  batch = {"image": images, "label": jnp.arange(4) % 5}
  step = jax.jit(
    functools.partial(steps.train_step, graphdef=graphdef, optimizer=optimizer)
  )
  _, metrics = step(state, batch)
  assert set(want) <= set(metrics)
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("case", NOT_ON_THE_RAW_INPUT)
def test_under_jit_and_vmap(case):
  model, images = _model_and_images(case)
  graphdef, state = nnx.split(model)
  for function in (
    models.transformer_input,
    models.first_transform_params,
    models.warp_input,
  ):
    eager = function(model, images)
    jitted = jax.jit(lambda s, x, f=function: f(nnx.merge(graphdef, s), x))
    np.testing.assert_allclose(
      jitted(state, images), eager, rtol=1e-5, atol=1e-5
    )
    halves = images.reshape(2, 2, *images.shape[1:])
    mapped = jax.vmap(lambda x, f=function: f(nnx.merge(graphdef, state), x))
    np.testing.assert_allclose(
      mapped(halves).reshape(eager.shape), eager, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
  "function",
  [models.transformer_input, models.first_transform_params, models.warp_input],
)
def test_a_model_without_a_transformer_is_refused_by_name(function):
  model = models.get_model(
    "cnn", in_shape=(28, 28, 1), num_classes=5, rngs=nnx.Rngs(0)
  )
  with pytest.raises(
    ValueError, match="model must contain a SpatialTransformer; CNN has none"
  ):
    function(model, jnp.ones((1, 28, 28, 1)))
