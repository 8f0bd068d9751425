"""restore(...).predict / .transform: accepted inputs, rejected ones, the
empty batch and batched processing."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST, tiny

import stn_jax
from stn_jax import models, train
from stn_jax.data import datasets
from stn_jax.inference import Restored

SHAPE = (42, 42, 1)  # distorted_mnist/rts


@pytest.fixture(scope="module")
def restored(tiny_tfds, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("st_cnn")
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(workdir))
  return stn_jax.restore(str(workdir))


@pytest.fixture(scope="module")
def images(tiny_tfds):
  test = datasets.load_arrays("distorted_mnist/rts", "test", tfds_dir=tiny_tfds)
  assert test["image"].dtype == np.uint8
  return test["image"][:7]


class _Recorder:
  """Wraps a jitted function and records the input shape of every call."""

  def __init__(self, function):
    self.function = function
    self.shapes = []

  def __call__(self, state, x):
    self.shapes.append(tuple(x.shape))
    return self.function(state, x)


def _fail(*_):
  pytest.fail("the model was run")


def test_uint8_and_unit_float_inputs_give_the_same_results(restored, images):
  logits = restored.predict(images)
  warped = restored.transform(images)
  assert logits.shape == (7, 10) and logits.dtype == np.float32
  for unit in (
    images / 255.0,  # float64
    (images / 255.0).astype(np.float32),
    jnp.asarray(images / 255.0, jnp.float32),
  ):
    np.testing.assert_allclose(restored.predict(unit), logits, atol=1e-5)
    np.testing.assert_allclose(restored.transform(unit), warped, atol=1e-5)
  # The bounds themselves are in range: 0.0 and 1.0 read as 0 and 255.
  edges = np.stack([np.zeros(SHAPE, np.uint8), np.full(SHAPE, 255, np.uint8)])
  np.testing.assert_allclose(
    restored.predict(edges.astype(np.float32) / 255),
    restored.predict(edges),
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "scale,offset,match",
  [
    (
      255.0,
      0.0,
      r"float32 values in \[0, 255\]\. Float images in 0-255 "
      r"must be divided by 255",
    ),
    (1.0, -0.25, r"float32 values in \[-0.25, 0.75\]\. Clip"),
    (1.0, 1e-3, r"float32 values in \[0.001, 1.001\]"),
  ],
)
@pytest.mark.parametrize("method", ["predict", "transform"])
def test_float_images_outside_the_unit_range_raise(
  restored, method, scale, offset, match
):
  ramp = np.linspace(0, 1, math.prod(SHAPE) * 2).reshape(2, *SHAPE)
  bad = (ramp * scale + offset).astype(np.float32)
  with pytest.raises(
    ValueError, match=r"images must be uint8 \(0-255\) or float in \[0, 1\]"
  ) as error:
    getattr(restored, method)(bad)
  assert error.match(match)


@pytest.mark.parametrize(
  "value,match",
  [
    (np.nan, r"1 nan and 0 inf values \(finite values in \[0.5, 0.5\]\)"),
    (np.inf, r"0 nan and 1 inf values"),
    (-np.inf, r"0 nan and 1 inf values"),
  ],
)
@pytest.mark.parametrize("method", ["predict", "transform"])
def test_non_finite_images_raise(restored, method, value, match):
  bad = np.full((3, *SHAPE), 0.5, np.float32)
  bad[1, 4, 5, 0] = value
  with pytest.raises(ValueError, match=r"images must be finite") as error:
    getattr(restored, method)(bad)
  assert error.match(match)


def test_other_dtypes_and_shapes_still_raise(restored):
  with pytest.raises(ValueError, match="got dtype int32"):
    restored.predict(np.zeros((2, *SHAPE), np.int32))
  with pytest.raises(
    ValueError, match=r"images must have shape \(N, 42, 42, 1"
  ):
    restored.predict(np.zeros((2, 28, 28, 1), np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_empty_batch_returns_an_empty_result_without_running_the_model(
  restored, images, dtype
):
  warped_shape = restored.transform(images[:1]).shape[1:]
  logits_fn, warp_fn = restored._logits, restored._warp
  restored._logits = restored._warp = _fail
  try:
    empty = np.zeros((0, *SHAPE), dtype)
    logits = restored.predict(empty)
    warped = restored.transform(empty)
  finally:
    restored._logits, restored._warp = logits_fn, warp_fn
  assert logits.shape == (0, 10) and logits.dtype == np.float32
  assert warped.shape == (0, *warped_shape) and warped.dtype == np.float32


@pytest.mark.parametrize("method", ["predict", "transform"])
def test_batches_equal_one_call_and_compile_one_shape(restored, images, method):
  attribute = {"predict": "_logits", "transform": "_warp"}[method]
  original = getattr(restored, attribute)
  normalize = restored._normalize
  normalized = []
  restored._normalize = lambda x: normalized.append(len(x)) or normalize(x)
  try:
    recorder = _Recorder(original)
    setattr(restored, attribute, recorder)
    whole = getattr(restored, method)(images)  # default batch_size 256
    assert recorder.shapes == [(7, *SHAPE)]
    recorder.shapes.clear()
    normalized.clear()
    batched = getattr(restored, method)(images, batch_size=3)
    # ceil(7 / 3) = 3 calls, the last padded: one shape, compiled once.
    assert recorder.shapes == [(3, *SHAPE)] * 3
    assert normalized == [3, 3, 1]  # memory bounded by the batch
    recorder.shapes.clear()
    assert getattr(restored, method)(images, batch_size=7).shape == whole.shape
    assert recorder.shapes == [(7, *SHAPE)]
  finally:
    setattr(restored, attribute, original)
    restored._normalize = normalize
  assert batched.shape == whole.shape
  np.testing.assert_allclose(batched, whole, atol=1e-5)
  np.testing.assert_allclose(
    getattr(restored, method)(images[6:]), whole[6:], atol=1e-5
  )


@pytest.mark.parametrize("batch_size", [0, -2, 2.5, True, None])
def test_bad_batch_size_raises(restored, images, batch_size):
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    restored.predict(images, batch_size=batch_size)


def test_transform_without_a_transformer_raises():
  config = MNIST.get_config("model=cnn,small=true")
  model = models.from_config(config, SHAPE)
  with pytest.raises(ValueError, match="'cnn' has no spatial transformer"):
    Restored(config, model, SHAPE, 0).transform(np.zeros((0, *SHAPE)))
