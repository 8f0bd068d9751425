"""The pure step, the optimiser options and the hook-driven loop."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import MNIST, requires_torch
from flax import nnx

from stn_jax import checkpointing, hooks, models, recipe, steps, train
from stn_jax.data import pipeline


def optimizer_config(**overrides):
  config = ml_collections.ConfigDict(
    dict(
      optimizer="sgd",
      learning_rate=0.1,
      lr_decay_every=1000,
      lr_decay_factor=0.1,
      localisation_lr_multiplier=1.0,
      grad_clip_norm=0.0,
    )
  )
  config.update(overrides)
  return config


def st_cnn(seed=0):
  return models.get_model(
    "st_cnn",
    in_shape=(28, 28, 1),
    num_classes=10,
    rngs=nnx.Rngs(seed),
    channels=(4, 8),
    localisation_channels=(4, 4),
    localisation_hidden=8,
  )


def fixed_batch(n=16, size=28, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.uniform(0, 1, (n, size, size, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  }


def one_step(model, config, batch):
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer)
  step = jax.jit(
    functools.partial(steps.train_step, graphdef=graphdef, optimizer=optimizer)
  )
  new_state, metrics = step(state, batch)
  return state, new_state, metrics, graphdef


def is_localisation(path):
  return any(getattr(k, "key", None) == "localisation" for k in path)


def updates_by_part(old, new):
  """{'localisation': [update arrays], 'other': [...]} of one step."""
  parts = {"localisation": [], "other": []}
  jax.tree_util.tree_map_with_path(
    lambda path, a, b: parts[
      "localisation" if is_localisation(path) else "other"
    ].append(np.asarray(b - a)),
    old.model,
    new.model,
  )
  return parts


def test_a_tiny_model_overfits_a_fixed_batch():
  model = models.get_model(
    "cnn",
    in_shape=(28, 28, 1),
    num_classes=10,
    rngs=nnx.Rngs(0),
    channels=(4, 8),
  )
  config = optimizer_config(optimizer="adam", learning_rate=3e-3)
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer)
  step = jax.jit(
    functools.partial(steps.train_step, graphdef=graphdef, optimizer=optimizer)
  )
  batch = fixed_batch()  # random labels: only memorising can fit them
  losses = []
  for _ in range(150):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 150
  assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])
  assert float(metrics["error"]) == 0.0


def test_the_step_is_pure_and_counts():
  model = st_cnn()
  state, new_state, metrics, _ = one_step(
    model, optimizer_config(), fixed_batch()
  )
  _, again, metrics_again, _ = one_step(
    st_cnn(), optimizer_config(), fixed_batch()
  )
  assert int(state.step) == 0 and int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert set(metrics) == {
    "loss",
    "error",
    "theta_scale",
    "theta_rotation_deg",
    "theta_translation",
  }
  # The transformer starts at the identity.
  np.testing.assert_allclose(metrics["theta_scale"], 1.0, atol=1e-6)


def test_localisation_learning_rate_multiplier():
  batch = fixed_batch()
  old, full, _, _ = one_step(st_cnn(), optimizer_config(), batch)
  _, half, _, _ = one_step(
    st_cnn(), optimizer_config(localisation_lr_multiplier=0.5), batch
  )
  _, frozen, _, _ = one_step(
    st_cnn(), optimizer_config(localisation_lr_multiplier=0.0), batch
  )
  full, half, frozen = (updates_by_part(old, s) for s in (full, half, frozen))
  assert len(full["localisation"]) == 8 and len(full["other"]) == 6
  # Plain SGD: the update is -rate * gradient, so it scales exactly.
  assert any(np.abs(u).max() > 0 for u in full["localisation"])
  for f, h, z in zip(
    full["localisation"], half["localisation"], frozen["localisation"]
  ):
    np.testing.assert_allclose(h, 0.5 * f, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(z, 0.0)
  for f, h in zip(full["other"], half["other"]):
    np.testing.assert_allclose(h, f, rtol=1e-6, atol=1e-9)


def test_gradient_clipping_caps_the_global_norm():
  batch = fixed_batch()
  model = st_cnn()
  graphdef, params = nnx.split(model)

  def loss(params):  # written again from the definition, not the step
    logits = nnx.merge(graphdef, params)(batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]
    ).mean()

  grads = jax.jit(jax.grad(loss))(params)
  norm = float(optax.tree.norm(grads))
  clip = norm / 4
  old, new, _, _ = one_step(
    model, optimizer_config(learning_rate=1.0, grad_clip_norm=clip), batch
  )
  updates = jax.tree.map(lambda a, b: b - a, old.model, new.model)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), clip, rtol=1e-4)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
    np.testing.assert_allclose(u, -g * clip / norm, rtol=1e-3, atol=1e-7)
  # A bound above the norm changes nothing.
  _, unclipped, _, _ = one_step(
    st_cnn(),
    optimizer_config(learning_rate=1.0, grad_clip_norm=10 * norm),
    batch,
  )
  for g, a, b in zip(
    jax.tree.leaves(grads),
    jax.tree.leaves(unclipped.model),
    jax.tree.leaves(old.model),
  ):
    np.testing.assert_allclose(a - b, -g, rtol=1e-4, atol=1e-7)


def test_accumulate_flags_the_first_nonfinite_loss():
  metrics = {"loss": jnp.float32(1.0), "error": jnp.float32(0.5)}
  shapes = jax.eval_shape(lambda: metrics)
  acc = steps.empty_accumulator(shapes)
  for step, loss in enumerate([1.0, np.nan, np.inf, 2.0], 1):
    acc = steps.accumulate(
      acc, {**metrics, "loss": jnp.float32(loss)}, jnp.int32(step)
    )
  assert int(acc["count"]) == 4
  assert int(acc["first_nonfinite_step"]) == 2
  with pytest.raises(hooks.TrainingDiverged, match="nan or inf at step 2"):
    hooks._raise_if_diverged(np.atleast_1d(acc["first_nonfinite_step"]), "w")


class _Guard(hooks.Hook):
  """First and last hook of the test loop. From the end of one log step's
  hooks until the hooks of the next log step (every step dispatch and every
  non-log step) device-to-host transfers are disallowed, even explicit ones,
  and ``fetches['between']`` counts host reads of device arrays.

  On a CPU the transfer guard is inert (CPU arrays already live on the
  host), so the count, which hooks JAX's Python path from device arrays to
  NumPy (``float``, ``int``, ``bool``, ``jax.device_get``), is what checks
  the loop here; on an accelerator the guard raises as well.
  """

  def __init__(self, every_steps, first, stack, fetches):
    self.every_steps, self.first, self.stack = every_steps, first, stack
    self.fetches = fetches

  def _between(self):
    self.fetches["phase"] = "between"
    self.stack.enter_context(
      jax.transfer_guard_device_to_host("disallow_explicit")
    )

  def begin(self, context):
    if self.first:
      self._between()

  def after_step(self, context):
    if context.step % self.every_steps:
      return
    if self.first:  # the log step's hooks may fetch
      self.stack.close()
      self.fetches["phase"] = "log"
    else:
      self._between()

  def close(self, context):
    self.stack.close()
    self.fetches["phase"] = "after"


class _Leak(hooks.Hook):
  """What the old loop did: read the loss on the host every step."""

  def after_step(self, context):
    float(context.accumulator["sums"]["loss"])


@pytest.mark.parametrize(
  "leak, steps_per_dispatch", [(False, 1), (True, 1), (False, 5)]
)
def test_the_loop_fetches_nothing_between_log_steps(
  tmp_path, monkeypatch, leak, steps_per_dispatch
):
  """With ``steps_per_dispatch`` 5 the split is on the device too (only
  indices go in)."""
  import contextlib

  from jax._src import array

  fetches = {"phase": "before", "between": 0, "log": 0, "after": 0, "before": 0}
  value = array.ArrayImpl._value

  def counted(self):
    fetches[fetches["phase"]] += 1
    return value.fget(self)

  model = st_cnn()
  config = optimizer_config(optimizer="adam", learning_rate=1e-3)
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer)
  rng = np.random.default_rng(0)
  arrays = {
    "image": rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
    "label": rng.integers(0, 10, 64),
  }
  stream = pipeline.InputPipeline(arrays, batch_size=8, seed=0)
  first_batch = {
    k: v for k, v in next(stream).items() if k in ("image", "label")
  }
  shapes = jax.eval_shape(
    lambda s, b: steps.train_step(s, b, graphdef=graphdef, optimizer=optimizer)[
      1
    ],
    state,
    first_batch,
  )
  if steps_per_dispatch == 1:
    batches = lambda n: {
      k: v for k, v in next(stream).items() if k in ("image", "label")
    }
    step_fn = steps.make_train_step(graphdef, optimizer)
  else:
    stream = pipeline.DeviceInput(arrays, batch_size=8, seed=0)
    data = stream.device_arrays(arrays)
    batches = lambda n: jax.tree.map(jnp.asarray, stream.indices(n))
    step = steps.make_train_step(
      graphdef, optimizer, multi_step=True, gather=stream.gather
    )
    step_fn = lambda s, a, x: step(s, a, x, data)
  context = hooks.LoopContext(
    workdir=str(tmp_path),
    num_steps=20,
    step=0,
    state=state,
    accumulator=steps.empty_accumulator(shapes),
    population=False,
    data_state=stream.get_state,
  )
  writer = hooks.MetricWriter(str(tmp_path))
  every = 10
  saves = checkpointing.Checkpoints(str(tmp_path))
  stack = contextlib.ExitStack()
  evaluated = []
  loop_hooks = [
    _Guard(every, True, stack, fetches),
    hooks.LogMetrics(every, [writer], lambda s: [1e-3], 8, log=lambda *a: None),
    hooks.Checkpoint(every, saves),
    hooks.Preemption(),
    hooks.Periodic(
      every, lambda c: evaluated.append(float(c.accumulator["count"]))
    ),
    *([_Leak()] if leak else []),
    _Guard(every, False, stack, fetches),
  ]
  monkeypatch.setattr(array.ArrayImpl, "_value", property(counted))
  train.run_loop(
    context, step_fn, batches, loop_hooks, steps_per_dispatch=steps_per_dispatch
  )
  monkeypatch.undo()
  writer.close()
  assert context.step == 20 and int(context.state.step) == 20
  assert saves.all_steps() == [10, 20]
  assert evaluated == [0.0]  # at step 10, after LogMetrics reset the sums
  if leak:  # the check would catch a per-step sync
    assert fetches["between"] == 18, fetches
    return
  assert fetches["between"] == 0, fetches
  assert fetches["log"] > 0, fetches  # the counter does see the log steps'


def test_a_run_config_never_trains_on_its_test_split():
  config = MNIST.get_config("small=true")
  config.train_split = "test"
  with pytest.raises(ValueError, match="also in config.eval_splits"):
    train.validate_config(config)


@requires_torch
def test_metric_writer_does_not_import_torch_and_leaves_it_importable(tmp_path):
  """tensorboardX would import torch (seconds) to recognise its tensors."""
  script = f"""
import json, os, sys
from stn_jax import hooks
writer = hooks.MetricWriter({str(tmp_path)!r})
writer.write(3, {{"train_loss": 0.5}})
writer.close()
assert "torch" not in sys.modules, "torch was imported"
import torch
torch.zeros(1)
rows = [json.loads(x) for x in open(os.path.join({str(tmp_path)!r}, "metrics.jsonl"))]
assert rows == [{{"step": 3, "train_loss": 0.5}}], rows
events = os.listdir(os.path.join({str(tmp_path)!r}, "tensorboard"))
assert len(events) == 1 and events[0].startswith("events.out.tfevents"), events
size = os.path.getsize(os.path.join({str(tmp_path)!r}, "tensorboard", events[0]))
assert size > 0
"""
  result = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
