"""The moving average of the parameters (``ema_decay``): the step's average
against a NumPy recursion, what a run evaluates and restores, resume,
populations, and bad values."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST, tiny
from flax import nnx

import stn_jax
from stn_jax import checkpointing, models, population, recipe, steps, train
from stn_jax.data import datasets


def numpy_decay(ema_decay, t):
  """The decay after t updates, from the definition."""
  return min(ema_decay, (1 + t) / (10 + t))


def test_the_decay_ramps_up_to_ema_decay():
  for t in (1, 8, 80, 890, 10_000):
    got = float(steps.average_decay(0.99, t))
    assert got == pytest.approx(numpy_decay(0.99, t), rel=1e-6)
  assert float(steps.average_decay(0.99, 8)) == pytest.approx(0.5)
  assert float(steps.average_decay(0.9, 10_000)) == pytest.approx(0.9)


def test_update_average_is_the_recursion_and_keeps_integer_leaves():
  rng = np.random.default_rng(0)
  values = [
    {"w": rng.normal(size=(3, 2)).astype(np.float32), "n": np.int32(t)}
    for t in range(6)
  ]
  average = jax.tree.map(jnp.asarray, values[0])
  expected = values[0]["w"].astype(np.float64)
  update = jax.jit(steps.update_average)
  for t, value in enumerate(values[1:], start=1):
    decay = numpy_decay(0.7, t)
    expected = decay * expected + (1 - decay) * value["w"]
    average = update(average, value, steps.average_decay(0.7, t))
    assert int(average["n"]) == t  # not averaged: the model's own
  np.testing.assert_allclose(average["w"], expected, rtol=1e-5, atol=1e-6)
  # vmapped over a leading (member) axis: each member's own average
  stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), values[0])
  moved = jax.tree.map(lambda x: jnp.stack([x, -x]), values[1])
  out = jax.vmap(steps.update_average, in_axes=(0, 0, None))(
    stacked, moved, 0.25
  )
  for k, (start, new) in enumerate(
    [(values[0]["w"], values[1]["w"]), (2 * values[0]["w"], -values[1]["w"])]
  ):
    np.testing.assert_allclose(
      out["w"][k], 0.25 * start + 0.75 * new, rtol=1e-6
    )


def small_st_cnn():
  return models.get_model(
    "st_cnn",
    in_shape=(28, 28, 1),
    num_classes=10,
    rngs=nnx.Rngs(0),
    channels=(4, 8),
    localisation_channels=(4, 4),
    localisation_hidden=8,
  )


def test_the_step_averages_the_parameters_it_trains():
  """Five jitted steps with ``ema_decay``: the parameters are bitwise those
  of the same steps without it, and the average is the NumPy recursion
  over them."""
  config = MNIST.get_config("small=true")
  config.optimizer, config.learning_rate = "adam", 1e-2
  rng = np.random.default_rng(0)
  batches = [
    {
      "image": jnp.asarray(rng.uniform(0, 1, (8, 28, 28, 1)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
    }
    for _ in range(5)
  ]
  runs = {}
  for ema_decay in (0.0, 0.6):
    model = small_st_cnn()
    optimizer = recipe.make_optimizer(config, nnx.state(model))
    graphdef, state = steps.init_state(model, optimizer, ema_decay=ema_decay)
    step = jax.jit(
      functools.partial(
        steps.train_step,
        graphdef=graphdef,
        optimizer=optimizer,
        ema_decay=ema_decay,
      )
    )
    trajectory = [jax.tree.leaves(state.model)]
    for batch in batches:
      state, _ = step(state, batch)
      trajectory.append(jax.tree.leaves(state.model))
    runs[ema_decay] = (trajectory, state)
  plain, averaged = runs[0.0], runs[0.6]
  assert plain[1].average is None
  for a, b in zip(plain[0][-1], averaged[0][-1]):
    np.testing.assert_array_equal(a, b)
  expected = [np.asarray(x, np.float64) for x in plain[0][0]]
  for t, leaves in enumerate(plain[0][1:], start=1):
    decay = numpy_decay(0.6, t)
    expected = [
      decay * e + (1 - decay) * np.asarray(x) for e, x in zip(expected, leaves)
    ]
  got = jax.tree.leaves(averaged[1].average)
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert steps.evaluated_model(averaged[1]) is averaged[1].average
  assert steps.evaluated_model(plain[1]) is plain[1].model


def test_a_state_with_an_average_needs_a_decay():
  config = MNIST.get_config("small=true")
  model = small_st_cnn()
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer, ema_decay=0.9)
  batch = {
    "image": jnp.zeros((2, 28, 28, 1)),
    "label": jnp.zeros((2,), jnp.int32),
  }
  with pytest.raises(ValueError, match="ema_decay must be in"):
    jax.eval_shape(  # raised when traced
      functools.partial(
        steps.train_step, graphdef=graphdef, optimizer=optimizer
      ),
      state,
      batch,
    )


def ema_config(tfds_dir, **overrides):
  return tiny(
    MNIST.get_config("model=st_cnn,small=true"),
    tfds_dir,
    **{
      "num_steps": 4,
      "ema_decay": 0.5,
      "optimizer": "adam",
      "learning_rate": 1e-2,
      "checkpoint_every": 2,
      "async_checkpoints": False,
      **overrides,
    },
  )


@pytest.fixture(scope="module")
def ema_run(tiny_tfds, tmp_path_factory):
  """(workdir, results) of :func:`ema_config`'s run, shared by the tests
  that compare with it."""
  workdir = str(tmp_path_factory.mktemp("ema_run"))
  return workdir, train.train_and_evaluate(ema_config(tiny_tfds), workdir)


def test_a_run_evaluates_and_restores_its_average(tiny_tfds, ema_run):
  workdir, results = ema_run
  assert {"test_error", "test_raw_error", "test_raw_loss"} <= set(results)
  restored = stn_jax.restore(workdir)
  saved = checkpointing.Checkpoints(workdir)
  try:
    initial = nnx.state(restored.model)
    read = saved.restore_latest(initial, average=initial)
  finally:
    saved.close()
  # restore gives the average, and the average is not the parameters
  for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(read.average)):
    np.testing.assert_array_equal(a, b)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(read.model), jax.tree.leaves(read.average))
  )
  # the reported test error is the average's, the raw one the parameters'
  test = datasets.load_arrays("distorted_mnist/rts", "test", tfds_dir=tiny_tfds)
  for state, key in (
    (read.average, "test_error"),
    (read.model, "test_raw_error"),
  ):
    model = nnx.merge(nnx.split(restored.model)[0], state)
    logits = model(restored.normalization(test["image"]))
    error = float(np.mean(np.asarray(logits).argmax(-1) != test["label"]))
    assert results[key] == pytest.approx(error, abs=1e-6), key
  with open(f"{workdir}/results.json") as f:
    assert json.load(f)["test_error"] == pytest.approx(results["test_error"])


def test_a_resumed_run_keeps_its_average_bitwise(tiny_tfds, ema_run, tmp_path):
  whole = ema_run[0]
  parts = str(tmp_path / "parts")
  train.train_and_evaluate(ema_config(tiny_tfds, num_steps=2), parts)
  train.train_and_evaluate(ema_config(tiny_tfds), parts)
  states = []
  for workdir in (whole, parts):
    saved = checkpointing.Checkpoints(workdir)
    try:
      initial = nnx.state(stn_jax.restore(workdir).model)
      read = saved.restore_latest(initial, average=initial)
    finally:
      saved.close()
    assert read.meta["step"] == 4
    states.append(jax.tree.leaves((read.model, read.average)))
  for a, b in zip(*states):
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_an_average_is_refused_not_moved(
  tiny_tfds, tmp_path
):
  workdir = str(tmp_path / "plain")
  train.train_and_evaluate(ema_config(tiny_tfds, ema_decay=0.0), workdir)
  saved = checkpointing.Checkpoints(workdir)
  try:
    initial = nnx.state(stn_jax.restore(workdir).model)
    with pytest.raises(
      checkpointing.CheckpointMismatch, match="holds no moving average"
    ):
      saved.restore_latest(initial, average=initial, move_aside=True)
  finally:
    saved.close()
  assert checkpointing.saved_steps(workdir) == [2, 4]


def test_a_population_averages_each_member_as_its_separate_run(
  tiny_tfds, ema_run, tmp_path
):
  configs = []
  separate = []
  for seed, learning_rate in ((0, 1e-2), (1, 3e-3)):
    config = ema_config(tiny_tfds, seed=seed, learning_rate=learning_rate)
    configs.append(config)
    if seed == 0:  # ema_config's own run
      workdir, result = ema_run
    else:
      workdir = str(tmp_path / f"separate{seed}")
      result = train.train_and_evaluate(config, workdir)
    model = stn_jax.restore(workdir).model
    separate.append((result["test_error"], jax.tree.leaves(nnx.state(model))))
  folder = str(tmp_path / "pop")
  results = population.train_population(configs, folder, log=lambda *a: None)
  for k, (test_error, theirs) in enumerate(separate):
    assert results[k]["test_error"] == pytest.approx(test_error, abs=1e-6)
    for source in (
      results[k]["params"],
      nnx.state(stn_jax.restore(folder, member=k).model),
    ):
      ours = jax.tree.leaves(source)
      assert len(ours) == len(theirs)
      for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_a_bad_ema_decay_is_named(value, tmp_path):
  config = MNIST.get_config("small=true")
  config.ema_decay = value
  with pytest.raises(
    ValueError, match=r"ema_decay must be a number in \[0, 1\)"
  ):
    train.train_and_evaluate(config, str(tmp_path))


def test_another_ema_decay_is_another_run(tiny_tfds, ema_run):
  with pytest.raises(ValueError, match="ema_decay: 0.5 -> 0.9"):
    train.train_and_evaluate(ema_config(tiny_tfds, ema_decay=0.9), ema_run[0])
