"""The split on the device and several steps per dispatch: the same batches,
the same cadences, the same run."""

import json

import jax
import numpy as np
import pytest
from conftest import MNIST, tiny

import stn_jax
from stn_jax import hooks, train
from stn_jax.data import pipeline
from stn_jax.normalization import Normalization


def _split(n=50, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.integers(0, 256, (n, 6, 5, 2), dtype=np.uint8),
    "label": rng.integers(0, 10, n),
  }


def test_device_input_gives_the_host_pipelines_batches_bitwise():
  arrays = _split()
  normalization = Normalization(mean=(0.1, 0.2), std=(0.3, 0.5))
  host = pipeline.InputPipeline(
    arrays, batch_size=8, seed=3, normalization=normalization, sharding=False
  )
  device = pipeline.DeviceInput(
    arrays, batch_size=8, seed=3, normalization=normalization
  )
  data = device.device_arrays(arrays)
  gather = jax.jit(device.gather)
  # 6 batches per epoch: 15 batches cross two epoch boundaries, fetched one
  # at a time and in blocks of several steps.
  got = [gather(data, device.indices()) for _ in range(4)]
  for block in (5, 6):
    stacked = gather(data, device.indices(block))
    got += [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(block)]
  for batch in got:
    want = next(host)
    np.testing.assert_array_equal(batch["image"], want["image"])
    np.testing.assert_array_equal(batch["label"], want["label"])
  assert device.get_state() == host.get_state() == {"next_index": 15}
  # The state is interchangeable: a run may switch at a checkpoint.
  other = pipeline.DeviceInput(arrays, batch_size=8, seed=3)
  other.set_state(host.get_state())
  resumed = other.indices()
  straight = pipeline.DeviceInput(arrays, batch_size=8, seed=3).indices(16)
  for key in ("index", "epoch", "seed"):
    np.testing.assert_array_equal(resumed[key], straight[key][15])
  # batch 15 is in epoch 2 (6 batches per epoch)
  np.testing.assert_array_equal(resumed["epoch"], np.full(8, 2))
  np.testing.assert_array_equal(resumed["seed"], np.full(8, 3))


def test_dispatch_length_ends_at_every_hook_step():
  class At(hooks.Hook):
    def __init__(self, every):
      self.every_steps = every

  cadences = [At(4), At(6), hooks.SignalAtStep(7, 0)]
  steps, step = [], 0
  while step < 20:
    step += train.dispatch_length(step, 20, 5, cadences)
    steps.append(step)
  # The grid of 5 cut at multiples of 4 and 6, at 7 and at the end.
  assert steps == [4, 5, 6, 7, 8, 10, 12, 15, 16, 18, 20]
  assert train.dispatch_length(0, 3, 1, cadences) == 1


def _config(tfds_dir, **overrides):
  config = MNIST.get_config("distortion=rts,model=st_cnn,small=true")
  return tiny(
    config,
    tfds_dir,
    num_steps=12,
    log_every=4,
    checkpoint_every=6,
    eval_every=8,
    **overrides,
  )


def _params(workdir):
  return jax.tree.leaves(stn_jax.restore(str(workdir)).model)


def _logged_steps(workdir):
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").open()]
  train_steps = [r["step"] for r in rows if "train_loss" in r]
  eval_steps = [r["step"] for r in rows if "test_error" in r]
  return train_steps, eval_steps


@pytest.fixture(scope="module")
def host_run(tiny_tfds, tmp_path_factory):
  """The run with batches made on the host, one step per dispatch."""
  workdir = tmp_path_factory.mktemp("host")
  train.train_and_evaluate(
    _config(tiny_tfds, data_on_device=False), str(workdir)
  )
  return workdir


@pytest.mark.parametrize("steps_per_dispatch", [1, 5])
def test_device_data_and_dispatch_keep_the_run_and_its_cadences(
  tiny_tfds, tmp_path, host_run, steps_per_dispatch
):
  run = tmp_path / "run"
  results = train.train_and_evaluate(
    _config(
      tiny_tfds, data_on_device=True, steps_per_dispatch=steps_per_dispatch
    ),
    str(run),
  )
  assert results["test_error"] >= 0
  assert _logged_steps(run) == _logged_steps(host_run) == ([4, 8, 12], [8, 12])
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [
    6,
    12,
  ]
  for a, b in zip(_params(host_run), _params(run)):
    if steps_per_dispatch == 1:  # the same computation: bitwise
      np.testing.assert_array_equal(a, b)
    else:  # lax.scan compiles the step differently: float rounding
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  if steps_per_dispatch == 1:
    return
  # Stopped at a checkpoint step and resumed, the run ends bitwise equal
  # to the uninterrupted one: the chunk grid is in absolute steps, so the
  # rerun dispatches 6-8, 8-10, 10-12 as the uninterrupted run did.
  stopped = tmp_path / "stopped"
  config = lambda: _config(tiny_tfds, steps_per_dispatch=5)
  out = train.train_and_evaluate(
    config(),
    str(stopped),
    hooks=[hooks.SignalAtStep(6, 15)],  # SIGTERM
  )
  assert out == {"interrupted_at_step": 6, "signal": "SIGTERM"}
  train.train_and_evaluate(config(), str(stopped))
  for a, b in zip(_params(run), _params(stopped)):
    np.testing.assert_array_equal(a, b)
