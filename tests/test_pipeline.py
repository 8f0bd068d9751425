"""Input pipeline: order, epochs, checkpointable state, on-the-fly
distortion, sharding."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import FOUR_HOST_DEVICES

from stn_jax.data import augment, distortions, pipeline
from stn_jax.normalization import Normalization


def toy_arrays(n=50, size=28):
  rng = np.random.default_rng(0)
  return {
    "image": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
    "label": np.arange(n) % 10,
    "index": np.arange(n),
  }


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_every_epoch_is_a_new_permutation_of_all_examples():
  arrays = toy_arrays(50)
  batches = take(
    pipeline.InputPipeline(
      arrays, batch_size=10, seed=1, drop_remainder=False, sharding=False
    ),
    15,
  )
  epochs = [
    np.concatenate([b["index"] for b in batches[5 * e : 5 * e + 5]])
    for e in range(3)
  ]
  for e, order in enumerate(epochs):
    assert sorted(order) == list(range(50))
    assert np.all(batches[5 * e]["epoch"] == e)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_seeded_and_normalised():
  arrays = toy_arrays(40)
  a = take(
    pipeline.InputPipeline(arrays, batch_size=8, seed=3, sharding=False), 3
  )
  b = take(
    pipeline.InputPipeline(arrays, batch_size=8, seed=3, sharding=False), 3
  )
  c = next(pipeline.InputPipeline(arrays, batch_size=8, seed=4, sharding=False))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["index"], c["index"])
  batch = a[0]
  assert batch["image"].dtype == np.float32
  np.testing.assert_allclose(
    batch["image"], arrays["image"][batch["index"]] / 255.0
  )
  standardised = next(
    pipeline.InputPipeline(
      arrays,
      batch_size=8,
      seed=3,
      normalization=Normalization(0.5, 0.25),
      sharding=False,
    )
  )
  np.testing.assert_allclose(
    standardised["image"], (batch["image"] - 0.5) / 0.25, atol=1e-6
  )


def test_evaluation_order_is_the_split_once():
  arrays = toy_arrays(23)
  evaluation = pipeline.InputPipeline(
    arrays,
    batch_size=10,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    sharding=False,
  )
  indices = np.concatenate([b["index"] for b in evaluation])
  np.testing.assert_array_equal(indices, np.arange(23))


@pytest.mark.parametrize("step", [None, "rts", "jitter"])
def test_restored_state_continues_with_the_identical_batch(step):
  arrays = toy_arrays(30)
  preprocess = {
    None: None,
    "rts": distortions.OnTheFly("rts"),
    "jitter": augment.RandomAffine(10, 0.1, 0.1),
  }[step]
  first = pipeline.InputPipeline(
    arrays, batch_size=4, seed=0, preprocess=preprocess, sharding=False
  )
  take(first, 9)  # into the second epoch
  state = first.get_state()
  expected = take(first, 4)
  resumed = pipeline.InputPipeline(
    arrays, batch_size=4, seed=0, preprocess=preprocess, sharding=False
  )
  resumed.set_state(state)
  for want, got in zip(expected, take(resumed, 4)):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_on_the_fly_distortions_are_fresh_each_epoch():
  arrays = toy_arrays(8)
  stream = pipeline.InputPipeline(
    arrays,
    batch_size=8,
    seed=0,
    preprocess=distortions.OnTheFly("rts"),
    shuffle=False,
    sharding=False,
  )
  epoch0, epoch1 = take(stream, 2)
  assert epoch0["image"].shape == (8, 42, 42, 1)
  assert not np.allclose(epoch0["theta"], epoch1["theta"])
  want = distortions.sample_params(
    "rts", distortions.example_rng(0, "train", 3, epoch=1)
  )
  np.testing.assert_array_equal(epoch1["theta"][3], want["theta"])
  with pytest.raises(ValueError, match="needs 28x28x1 undistorted digits"):
    pipeline.InputPipeline(
      toy_arrays(8, size=42),
      batch_size=4,
      preprocess=distortions.OnTheFly("rts"),
    )


def test_batches_land_on_the_devices():
  batch = next(pipeline.InputPipeline(toy_arrays(16), batch_size=8))
  assert batch["image"].sharding == pipeline.data_sharding()
  assert batch["image"].shape == (8, 28, 28, 1)


def test_global_batch_is_split_over_four_devices():
  script = textwrap.dedent("""
      import numpy as np, jax, pytest
      from stn_jax.data import pipeline
      arrays = {"image": np.zeros((32, 4, 4, 1), np.uint8),
                "label": np.arange(32)}
      batch = next(pipeline.InputPipeline(arrays, batch_size=8))
      shards = batch["label"].addressable_shards
      assert len(jax.local_devices()) == 4 and len(shards) == 4
      assert sorted(s.data.shape[0] for s in shards) == [2, 2, 2, 2]
      try:
        pipeline.InputPipeline(arrays, batch_size=6)
      except ValueError as error:
        assert "divisible by the number of devices (4)" in str(error)
      else:
        raise AssertionError("no error")
      print("ok")
  """)
  env = dict(
    os.environ,
    XLA_FLAGS=FOUR_HOST_DEVICES,
    JAX_PLATFORMS="cpu",
  )
  result = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "ok" in result.stdout


def test_bad_arguments():
  with pytest.raises(ValueError, match="'image' and 'label'"):
    pipeline.InputPipeline({"x": np.zeros(3)}, batch_size=1)
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    pipeline.InputPipeline(toy_arrays(4), batch_size=0)
  with pytest.raises(ValueError, match="larger than the split"):
    pipeline.InputPipeline(toy_arrays(4), batch_size=8, sharding=False)
