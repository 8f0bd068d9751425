"""The pre-activation ResNet(-STN): its block against a reference written
from the definition, transformers that start as the identity and sit where
``placement`` says, and clear errors."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GTSRB, REPO, tiny
from flax import nnx

import stn_jax
from stn_jax import models, train, viz
from stn_jax.data import datasets
from stn_jax.models import resnet


def _group_norm(x, scale, bias, groups, eps=1e-6):
  """NumPy GroupNorm over (H, W, channels of a group), per example."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(n, h, w, c) * np.asarray(scale) + np.asarray(bias)


def _conv(x, layer, stride):
  """SAME convolution of ``x`` with ``layer``'s kernel and bias (lax)."""
  kernel = jnp.asarray(layer.kernel.get_value())
  y = jax.lax.conv_general_dilated(
    jnp.asarray(x, jnp.float32),
    kernel,
    (stride, stride),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return np.asarray(y) + np.asarray(layer.bias.get_value())


@pytest.mark.parametrize("in_c,out_c,stride", [(8, 8, 1), (4, 8, 2)])
def test_preact_block_against_its_definition(in_c, out_c, stride):
  block = resnet.PreActBlock(in_c, out_c, stride, rngs=nnx.Rngs(0))
  for norm in (block.norm1, block.norm2):  # not the init's 1 and 0
    shape = norm.scale.get_value().shape
    norm.scale.set_value(jnp.linspace(0.5, 1.5, shape[0]))
    norm.bias.set_value(jnp.linspace(-0.2, 0.3, shape[0]))
  x = np.random.default_rng(0).normal(size=(2, 8, 8, in_c)).astype(np.float32)
  relu = lambda v: np.maximum(v, 0)
  pre = relu(
    _group_norm(
      x,
      block.norm1.scale.get_value(),
      block.norm1.bias.get_value(),
      resnet._groups(in_c),
    )
  )
  y = _conv(pre, block.conv1, stride)
  y = relu(
    _group_norm(
      y,
      block.norm2.scale.get_value(),
      block.norm2.bias.get_value(),
      resnet._groups(out_c),
    )
  )
  y = _conv(y, block.conv2, 1)
  shortcut = x if block.shortcut is None else _conv(pre, block.shortcut, stride)
  np.testing.assert_allclose(block(jnp.asarray(x)), y + shortcut, atol=2e-4)
  assert (block.shortcut is None) == (in_c == out_c and stride == 1)


def _backbone_only(model, x):
  """The model's forward pass with every transformer skipped."""
  x = model.stem(x)
  for s in range(len(model.stages)):
    x = model._stage(s, x)
  return model.out(nnx.relu(model.final_norm(x)).mean(axis=(1, 2)))


@pytest.mark.parametrize(
  "placement,shared_stem",
  [
    (("input",), False),
    (("input",), True),
    (("stage1",), False),
    (("input", "stage1", "stage2", "stage3"), False),
  ],
)
def test_transformers_start_as_the_identity_where_placed(
  placement, shared_stem
):
  model = models.get_model(
    "preact_resnet_stn",
    in_shape=(32, 32, 3),
    num_classes=7,
    rngs=nnx.Rngs(0),
    widths=(8, 8, 16),
    blocks_per_stage=1,
    placement=placement,
    shared_stem=shared_stem,
  )
  assert len(model.transformers) == len(placement)
  assert models.transformers(model) == list(model.transformers)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 32, 32, 3)))
  np.testing.assert_allclose(model(x), _backbone_only(model, x), atol=1e-5)
  # each transformer sees the feature map of its place
  shapes = {"input": (32, 32, 8 if shared_stem else 3)}
  shapes.update({"stage1": (32, 32, 8), "stage2": (16, 16, 8)})
  shapes["stage3"] = (8, 8, 16)
  first = models.transformer_input(model, x)
  assert first.shape == (3, *shapes[placement[0]])
  # the jitted and vmapped model agree with the eager one
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda s, im: nnx.merge(graphdef, s)(im))
  np.testing.assert_allclose(apply(state, x), model(x), atol=1e-5)
  per_example = jax.vmap(lambda im: apply(state, im[None])[0])(x)
  np.testing.assert_allclose(per_example, model(x), atol=1e-5)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"placement": ("stage4",)}, "placement must hold 'input' and/or"),
    ({"placement": ("middle",)}, "got 'middle'"),
    ({"placement": ("stage2", "input")}, "in network order"),
    ({"placement": ("input", "input")}, "each place once"),
    ({"placement": ("stage1",), "shared_stem": True}, "shared_stem needs"),
  ],
)
def test_bad_placements_are_refused_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.get_model(
      "preact_resnet_stn",
      in_shape=(32, 32, 3),
      num_classes=3,
      rngs=nnx.Rngs(0),
      widths=(4, 4, 4),
      blocks_per_stage=1,
      **kwargs,
    )
  with pytest.raises(ValueError, match="at least one place"):
    models.get_model(
      "preact_resnet_stn",
      in_shape=(32, 32, 3),
      num_classes=3,
      rngs=nnx.Rngs(0),
      placement=(),
    )


def _common_configs_module():
  spec = importlib.util.spec_from_file_location(
    "configs_common", REPO / "configs" / "common.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


PLACEMENT_VARIANTS = _common_configs_module().PLACEMENT_VARIANTS
# The 16x16 stage-2 grid, else the 32x32 input's.
WARP_SIZE = {"stage2": 16}


@pytest.mark.parametrize("variant", PLACEMENT_VARIANTS)
def test_every_placement_variant_trains_restores_predicts_and_draws(
  variant, tiny_tfds, tmp_path
):
  """Each variant of the placement study, end to end on GTSRB: training
  (transformer.png), restore (its predictions give the run's own test
  error), transform at the first transformer's grid size, and every viz
  figure."""
  config = tiny(
    GTSRB.get_config(f"{variant},small=true"), tiny_tfds, snapshot_every=1
  )
  run = tmp_path / "run"
  results = train.train_and_evaluate(config, str(run))
  restored = stn_jax.restore(str(run))
  test = datasets.load_arrays("gtsrb/32", "test", tfds_dir=tiny_tfds)
  logits = restored.predict(test["image"])
  assert logits.shape == (len(test["label"]), 43)
  error = float(np.mean(np.asarray(logits).argmax(-1) != test["label"]))
  assert error == pytest.approx(results["test_error"], abs=1e-6)
  has_transformer = variant != "model=preact_resnet"
  assert (run / "transformer.png").is_file() == has_transformer
  figures = viz.FIGURES if has_transformer else ("saliency", "error")
  paths = viz.make_figures(str(run), str(tmp_path / "figures"), figures=figures)
  assert len(paths) == len(figures)
  if not has_transformer:
    with pytest.raises(ValueError, match="has no spatial transformer"):
      restored.transform(test["image"][:2])
    return
  first = variant.split("placement=")[1].split(",")[0].split("+")[0]
  size = WARP_SIZE.get(first, 32)
  assert restored.transform(test["image"][:2]).shape == (2, size, size, 3)
