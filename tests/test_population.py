"""Population mode equals separate runs."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import stn_jax
from stn_jax import population, train
import test_train

tiny_tfds = test_train.tiny_tfds


def member(tfds_dir, seed, learning_rate, **overrides):
  config = test_train.tiny(test_train.MNIST.get_config(
      f"model=st_cnn,small=true,seed={seed}"), tfds_dir,
      **{"num_steps": 3, **overrides})
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


RUN_POPULATION = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_population
from stn_jax import population
configs = [test_population.member(sys.argv[2], s, lr, num_steps=6,
                                  checkpoint_every=2)
           for s, lr in ((0, 1e-3), (1, 2e-3))]
results = population.train_population(configs, sys.argv[3])
print(json.dumps([r["test_error"] for r in results]))
"""


def run_population(tfds_dir, workdir, env=None):
  import os
  import pathlib
  import subprocess
  import sys
  tests = pathlib.Path(__file__).resolve().parent
  return subprocess.run(
      [sys.executable, "-c", RUN_POPULATION, str(tests), str(tfds_dir),
       str(workdir)], capture_output=True, text=True, timeout=600,
      cwd=tests.parent, env={**os.environ, **(env or {})})


def test_killed_population_resumes_to_the_uninterrupted_result(tiny_tfds,
                                                               tmp_path):
  straight = run_population(tiny_tfds, tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-2000:]
  killed = run_population(tiny_tfds, tmp_path / "killed",
                          env={"STN_JAX_KILL_AT_STEP": "5"})
  assert killed.returncode == -9
  assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints")
                .iterdir() if p.name.isdigit()) == ["2", "4"]
  resumed = run_population(tiny_tfds, tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step 4" in resumed.stdout
  assert resumed.stdout.splitlines()[-1] == straight.stdout.splitlines()[-1]
  params = {}
  for name in ("straight", "killed"):
    holder = population.train.Checkpoints(tmp_path / name,
                                          member(tiny_tfds, 0, 1e-3))
    assert holder.manager.latest_step() == 6
    params[name] = holder.manager.restore(6, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]["params"]
  for a, b in zip(params["straight"], params["killed"]):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_a_workdir_of_another_population_is_refused(tiny_tfds, tmp_path):
  configs = [member(tiny_tfds, s, 1e-3, num_steps=2, checkpoint_every=2)
             for s in (0, 1)]
  population.train_population(configs, str(tmp_path), log=lambda *a: None)
  configs[1].seed = 5
  with pytest.raises(ValueError, match="holds a population of"):
    population.train_population(configs, str(tmp_path), log=lambda *a: None)
