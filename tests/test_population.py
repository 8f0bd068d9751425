"""Population mode equals separate runs."""

import jax
import numpy as np
import pytest

import stn_jax
from stn_jax import population, train
import test_train

tiny_tfds = test_train.tiny_tfds


def member(tfds_dir, seed, learning_rate):
  config = test_train.tiny(test_train.MNIST.get_config(
      f"model=st_cnn,small=true,seed={seed}"), tfds_dir, num_steps=3)
  config.learning_rate = learning_rate
  return config


@pytest.mark.parametrize("method", ["vmap", "map"])
def test_population_of_three_matches_three_separate_runs(tiny_tfds,
                                                         tmp_path, method):
  settings = [(0, 1e-3), (1, 2e-3), (2, 5e-4)]
  configs = [member(tiny_tfds, s, lr) for s, lr in settings]
  results = population.train_population(configs, str(tmp_path / "pop"),
                                        method=method, log=lambda *a: None)
  for k, config in enumerate(configs):
    separate = train.train_and_evaluate(config, str(tmp_path / f"run{k}"))
    restored = stn_jax.restore(str(tmp_path / f"run{k}"))
    ours = jax.tree.leaves(results[k]["params"])
    theirs = jax.tree.leaves(restored.model)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert abs(results[k]["test_error"] - separate["test_error"]) < 1e-6


def test_members_must_share_the_architecture(tiny_tfds):
  a = member(tiny_tfds, 0, 1e-3)
  b = member(tiny_tfds, 1, 1e-3)
  b.batch_size = 16
  with pytest.raises(ValueError, match="differs in batch_size"):
    population.check_compatible([a, b])
