"""The training recipe's keys: learning-rate schedules, warmup, label
smoothing, and distorted MNIST's validation split."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import MNIST, tiny

from stn_jax import recipe, train
from stn_jax.data import datasets, distorted_mnist


def _config(**keys):
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=0.01,
      lr_decay_every=100,
      lr_decay_factor=0.1,
      num_steps=1000,
    )
  )
  config.update(keys)
  return config


def test_step_schedule_without_the_new_keys_is_the_papers():
  schedule = recipe.learning_rate_schedule(_config())
  for step, expected in ((0, 0.01), (99, 0.01), (100, 0.001), (250, 1e-4)):
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-6)


@pytest.mark.parametrize("warmup", [0, 50])
def test_cosine_schedule_with_warmup_against_its_definition(warmup):
  config = _config(lr_schedule="cosine", warmup_steps=warmup)
  schedule = recipe.learning_rate_schedule(config)
  for step in (0, 1, 10, 49, 50, 100, 500, 999, 1000):
    expected = 0.01 * 0.5 * (1 + math.cos(math.pi * step / 1000))
    if warmup:
      expected *= min(1.0, (step + 1) / warmup)
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-9)
  # traced steps (the optimiser's count) give the same values
  values = jax.jit(jax.vmap(schedule))(jnp.arange(0, 1000, 7))
  np.testing.assert_allclose(
    values, [schedule(s) for s in range(0, 1000, 7)], rtol=1e-5, atol=1e-9
  )


def test_warmup_also_ramps_the_step_schedule():
  schedule = recipe.learning_rate_schedule(_config(warmup_steps=10))
  np.testing.assert_allclose(schedule(0), 0.001, rtol=1e-6)
  np.testing.assert_allclose(schedule(9), 0.01, rtol=1e-6)
  np.testing.assert_allclose(schedule(150), 0.001, rtol=1e-6)


def _numpy_smoothed_loss(logits, labels, s):
  logits = np.asarray(logits, np.float64)
  k = logits.shape[-1]
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  targets = np.full_like(log_p, s / k)
  targets[np.arange(len(labels)), labels] += 1 - s
  return -(targets * log_p).sum(-1).mean()


def test_label_smoothing_against_numpy_and_bitwise_off():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(16, 10)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 16))
  for s in (0.0, 0.1, 0.5):
    np.testing.assert_allclose(
      recipe.classification_loss(logits, labels, s),
      _numpy_smoothed_loss(logits, labels, s),
      rtol=1e-5,
    )
  # 0 is the loss runs used before the key existed, bit for bit
  import optax

  assert np.array_equal(
    recipe.classification_loss(logits, labels, 0.0),
    optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
  )


def test_label_smoothing_gradient_numerically_under_jit_and_vmap():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 5)).astype(np.float64)
  labels = np.array([0, 3, 4, 1])
  grad = jax.jit(jax.grad(recipe.classification_loss), static_argnums=2)(
    jnp.asarray(logits, jnp.float32), jnp.asarray(labels), 0.2
  )
  eps = 1e-6
  numeric = np.zeros_like(logits)
  for idx in np.ndindex(logits.shape):
    plus, minus = logits.copy(), logits.copy()
    plus[idx] += eps
    minus[idx] -= eps
    numeric[idx] = (
      _numpy_smoothed_loss(plus, labels, 0.2)
      - _numpy_smoothed_loss(minus, labels, 0.2)
    ) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-6)
  # vmapped over a leading axis of batches: one loss per batch
  stacked = jnp.asarray(np.stack([logits, -logits]), jnp.float32)
  losses = jax.vmap(lambda x: recipe.classification_loss(x, labels, 0.2))(
    stacked
  )
  np.testing.assert_allclose(
    losses,
    [_numpy_smoothed_loss(x, labels, 0.2) for x in np.asarray(stacked)],
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  "key,value,expected",
  [
    ("lr_schedule", "linear", "config.lr_schedule must be one of step, cosine"),
    ("warmup_steps", -1, "config.warmup_steps must be an int >= 0; got -1"),
    ("label_smoothing", 1.0, "must be a number in \\[0, 1\\); got 1.0"),
    ("label_smoothing", -0.1, "label_smoothing must be a number in"),
  ],
)
def test_bad_recipe_keys_are_refused_naming_them(key, value, expected):
  config = MNIST.get_config("small=true")
  config[key] = value
  with pytest.raises(ValueError, match=expected):
    train.validate_config(config)


@pytest.fixture
def small_validation(monkeypatch):
  """A third of the tiny training digits as validation (the real fraction
  would leave the 32-digit tiny split with 2)."""
  monkeypatch.setattr(distorted_mnist, "VALIDATION_FRACTION", 3)


def test_validation_split_is_the_last_digits_of_train(
  tiny_tfds, small_validation
):
  full = datasets.load_arrays(
    "distorted_mnist/rts", "train", tfds_dir=tiny_tfds
  )
  held = datasets.load_arrays(
    "distorted_mnist/rts", "validation", tfds_dir=tiny_tfds
  )
  rest = datasets.load_arrays(
    "distorted_mnist/plain", "train_without_validation", tfds_dir=tiny_tfds
  )
  n = len(full["index"])
  start = n - n // 3
  assert held["index"].tolist() == list(range(start, n))
  assert rest["index"].tolist() == list(range(start))
  np.testing.assert_array_equal(held["image"], full["image"][start:])
  with pytest.raises(ValueError, match="train_without_validation.*got 'val'"):
    datasets.load_arrays("distorted_mnist/rts", "val", tfds_dir=tiny_tfds)


def test_mnist_validation_start_is_55000():
  assert distorted_mnist.validation_start(60_000) == 55_000


def test_a_run_on_the_fly_with_validation_and_the_fast_recipe(
  tiny_tfds, small_validation, tmp_path
):
  config = tiny(
    MNIST.get_config("model=st_cnn,small=true,on_the_fly=true"),
    tiny_tfds,
    num_steps=3,
    train_split="train_without_validation",
    eval_splits=("validation", "test"),
    lr_schedule="cosine",
    warmup_steps=2,
    label_smoothing=0.1,
  )
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0 <= results["validation_error"] <= 1
  assert 0 <= results["test_error"] <= 1


def test_num_steps_is_part_of_a_cosine_runs_identity():
  from stn_jax import workdir

  for schedule, refused in (("step", False), ("cosine", True)):
    saved = MNIST.get_config("small=true")
    saved.lr_schedule = schedule
    longer = saved.copy_and_resolve_references()
    longer.num_steps = saved.num_steps * 2
    saved_json = json.loads(saved.to_json_best_effort())
    differences = workdir.config_differences(saved_json, longer)
    assert bool(differences) == refused, (schedule, differences)
  assert differences == ["num_steps: 3000 -> 6000"]
