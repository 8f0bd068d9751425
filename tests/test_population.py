"""Population mode equals separate runs."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import FOUR_HOST_DEVICES, MNIST, tiny

import stn_jax
from stn_jax import checkpointing, population, train


def member(tfds_dir, seed, learning_rate, **overrides):
  config = tiny(
    MNIST.get_config(f"model=st_cnn,small=true,seed={seed}"),
    tfds_dir,
    **{"num_steps": 3, **overrides},
  )
  config.learning_rate = learning_rate
  return config


THREE_MEMBERS = [(0, 1e-3), (1, 2e-3), (2, 5e-4)]  # (seed, learning rate)


@pytest.fixture(scope="module")
def three_separate_runs(tiny_tfds, tmp_path_factory):
  """[(test error, parameter leaves)] of THREE_MEMBERS run one by one
  (shared by every population method's test)."""
  runs = []
  for seed, learning_rate in THREE_MEMBERS:
    workdir = str(tmp_path_factory.mktemp(f"separate{seed}"))
    config = member(tiny_tfds, seed, learning_rate)
    result = train.train_and_evaluate(config, workdir)
    leaves = jax.tree.leaves(stn_jax.restore(workdir).model)
    runs.append((result["test_error"], leaves))
  return runs


@pytest.mark.parametrize("method", ["vmap", "map", "unroll"])
def test_population_of_three_matches_three_separate_runs(
  tiny_tfds, tmp_path, method, three_separate_runs
):
  configs = [member(tiny_tfds, s, lr) for s, lr in THREE_MEMBERS]
  results = population.train_population(
    configs, str(tmp_path / "pop"), method=method, log=lambda *a: None
  )
  for k, (test_error, theirs) in enumerate(three_separate_runs):
    ours = jax.tree.leaves(results[k]["params"])
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert abs(results[k]["test_error"] - test_error) < 1e-6


def test_members_must_share_the_architecture(tiny_tfds):
  a = member(tiny_tfds, 0, 1e-3)
  b = member(tiny_tfds, 1, 1e-3)
  b.batch_size = 16
  with pytest.raises(ValueError, match="differs in batch_size"):
    population.check_compatible([a, b])


RUN_POPULATION = """
import json, signal, sys
sys.path.insert(0, sys.argv[1])
import test_population
from stn_jax import hooks, population
configs = [test_population.member(sys.argv[2], s, lr, num_steps=6,
                                  checkpoint_every=2, async_checkpoints=False)
           for s, lr in ((0, 1e-3), (1, 2e-3))]
kill_at = int(sys.argv[4])
extra = [hooks.SignalAtStep(kill_at, signal.SIGKILL)] if kill_at else []
results = population.train_population(configs, sys.argv[3], hooks=extra)
print(json.dumps([r["test_error"] for r in results]))
"""


def run_population(tfds_dir, workdir, kill_at=0):
  import pathlib
  import subprocess
  import sys

  tests = pathlib.Path(__file__).resolve().parent
  return subprocess.run(
    [
      sys.executable,
      "-c",
      RUN_POPULATION,
      str(tests),
      str(tfds_dir),
      str(workdir),
      str(kill_at),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=tests.parent,
  )


def test_killed_population_resumes_to_the_uninterrupted_result(
  tiny_tfds, tmp_path
):
  straight = run_population(tiny_tfds, tmp_path / "straight")
  assert straight.returncode == 0, straight.stderr[-2000:]
  killed = run_population(tiny_tfds, tmp_path / "killed", kill_at=5)
  assert killed.returncode == -9
  assert sorted(
    p.name
    for p in (tmp_path / "killed" / "checkpoints").iterdir()
    if p.name.isdigit()
  ) == ["2", "4"]
  resumed = run_population(tiny_tfds, tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step 4" in resumed.stdout
  assert resumed.stdout.splitlines()[-1] == straight.stdout.splitlines()[-1]
  states = {}
  for name in ("straight", "killed"):
    holder = checkpointing.Checkpoints(tmp_path / name)
    assert max(holder.all_steps()) == 6
    states[name] = holder.manager.restore(
      6,
      args=ocp.args.Composite(
        model=ocp.args.StandardRestore(), opt_state=ocp.args.StandardRestore()
      ),
    )
  for part in ("model", "opt_state"):
    a, b = (jax.tree.leaves(states[n][part]) for n in ("straight", "killed"))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)  # bitwise


def test_a_workdir_of_another_population_is_refused(tiny_tfds, tmp_path):
  configs = [
    member(tiny_tfds, s, 1e-3, num_steps=2, checkpoint_every=2) for s in (0, 1)
  ]
  population.train_population(configs, str(tmp_path), log=lambda *a: None)
  configs[1].seed = 5
  with pytest.raises(ValueError, match="seed: 1 -> 5"):
    population.train_population(configs, str(tmp_path), log=lambda *a: None)


def test_population_gets_the_single_run_hooks(tiny_tfds, tmp_path):
  """Per-member metrics.jsonl and TensorBoard, periodic evaluation and
  results, from the same loop and hooks as a single run."""
  configs = [
    member(tiny_tfds, s, 1e-3, num_steps=4, eval_every=2, log_every=2)
    for s in (0, 1)
  ]
  lines = []
  population.train_population(configs, str(tmp_path), log=lines.append)
  for k in (0, 1):
    folder = tmp_path / f"member_{k}"
    records = [
      json.loads(line)
      for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "train_loss" in r] == [2, 4]
    assert [r["step"] for r in records if "test_error" in r] == [2, 4]
    assert list((folder / "tensorboard").iterdir())
    assert json.loads((folder / "results.json").read_text())["step"] == 4
    assert (folder / "config.json").is_file()
  assert sum(line.startswith("member 1 step 2:") for line in lines) == 1
  assert json.loads((tmp_path / "population.json").read_text())["steps"] == 4


def test_sigterm_stops_a_population_with_a_checkpoint(tiny_tfds, tmp_path):
  import signal

  from stn_jax import hooks

  configs = [member(tiny_tfds, s, 1e-3, num_steps=6) for s in (0, 1)]
  results = population.train_population(
    configs,
    str(tmp_path),
    log=lambda *a: None,
    hooks=[hooks.SignalAtStep(3, signal.SIGTERM)],
  )
  assert results == [{"interrupted_at_step": 3, "signal": "SIGTERM"}] * 2
  assert checkpointing.Checkpoints(tmp_path).all_steps() == [3]
  lines = []
  results = population.train_population(
    configs, str(tmp_path), log=lines.append
  )
  assert "resumed from step 3" in lines
  assert all(0 <= r["test_error"] <= 1 for r in results)


def test_a_diverging_member_stops_the_population(tiny_tfds, tmp_path):
  configs = [
    member(tiny_tfds, s, lr, num_steps=6, optimizer="sgd", checkpoint_every=1)
    for s, lr in ((0, 1e-3), (1, 1e38))
  ]
  with pytest.raises(train.TrainingDiverged, match=r"member\(s\) 1 is nan"):
    population.train_population(configs, str(tmp_path), log=lambda *a: None)


def test_members_differing_in_every_member_hyperparameter_match_separate_runs(
  tiny_tfds, tmp_path
):
  settings = [
    dict(localisation_lr_multiplier=0.1),
    dict(grad_clip_norm=0.05, learning_rate=2e-2),  # clips (norms ~0.5-2)
    dict(weight_decay=0.5, localisation_lr_multiplier=0.5),
  ]
  configs = []
  for seed, extra in enumerate(settings):
    # Plain SGD: unlike Adam, its updates scale with clipped gradients.
    config = member(tiny_tfds, seed, 1e-2, num_steps=4, optimizer="sgd")
    config.update(extra)
    configs.append(config)
  results = population.train_population(
    configs, str(tmp_path / "pop"), log=lambda *a: None
  )
  for k, config in enumerate(configs):
    assert results[k]["weight_decay"] == config.weight_decay
    train.train_and_evaluate(config, str(tmp_path / f"run{k}"))
    theirs = jax.tree.leaves(stn_jax.restore(str(tmp_path / f"run{k}")).model)
    ours = jax.tree.leaves(results[k]["params"])
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  # (The separate runs check the population because each setting moves
  # the parameters far beyond the tolerance: 4 SGD steps of weight decay
  # 0.5 at lr 1e-2 move p by 2e-2 p; clipping at 0.05 scales the updates
  # down 10-40x; the multipliers scale the localisation updates.)


def test_weight_decay_is_decoupled_and_named_when_bad(tiny_tfds):
  import optax
  from flax import nnx

  from stn_jax import models, recipe

  config = member(tiny_tfds, 0, 0.1)
  config.optimizer = "sgd"
  config.weight_decay = 0.5
  model = models.from_config(config, (42, 42, 1))
  params = nnx.state(model)
  optimizer = recipe.make_optimizer(config, params)
  grads = jax.tree.map(lambda p: np.ones_like(p), params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  applied = optax.apply_updates(params, updates)
  assert config.localisation_lr_multiplier == 1.0
  for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(applied)):
    # plain SGD: p - lr * (g + wd * p)
    np.testing.assert_allclose(
      after, before - 0.1 * (1 + 0.5 * before), rtol=1e-5, atol=1e-6
    )
  config.weight_decay = -1.0
  with pytest.raises(ValueError, match="config.weight_decay must be"):
    train.validate_config(config)


SHARDED_POPULATION = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
import test_population
from stn_jax import hooks, population

class Where(hooks.Hook):
  every_steps = 1
  def after_step(self, context):
    leaf = jax.tree.leaves(context.state.model)[0]
    self.devices = sorted(
      (s.device.id, s.index[0].start or 0) for s in leaf.addressable_shards
    )

where = Where()
configs = test_population.sharded_configs(sys.argv[2])
results = population.train_population(configs, sys.argv[3], hooks=[where])
np.savez(sys.argv[4], *[np.asarray(x) for r in results
                        for x in jax.tree.leaves(r["params"])])
print(json.dumps({"devices": jax.device_count(), "shards": where.devices}))
"""


def sharded_configs(tfds_dir):
  return [
    member(tfds_dir, seed, lr, num_steps=3, localisation_lr_multiplier=m)
    for seed, lr, m in (
      (0, 1e-3, 1.0),
      (1, 2e-3, 0.1),
      (2, 5e-4, 1.0),
      (3, 1e-3, 0.5),
    )
  ]


def test_population_is_split_over_four_devices_and_matches_one_device(
  tiny_tfds, tmp_path
):
  import os
  import pathlib
  import subprocess
  import sys

  tests = pathlib.Path(__file__).resolve().parent

  def run(name, **env):
    # Host devices, also on a GPU machine: both runs on the same backend.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run(
      [
        sys.executable,
        "-c",
        SHARDED_POPULATION,
        str(tests),
        str(tiny_tfds),
        str(tmp_path / name),
        str(tmp_path / f"{name}.npz"),
      ],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=tests.parent,
      env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(tmp_path / f"{name}.npz") as saved:
      params = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return out.stdout, params

  stdout, theirs = run("sharded", XLA_FLAGS=FOUR_HOST_DEVICES)
  assert "4 device(s) (members split over 4)" in stdout
  report = json.loads(stdout.splitlines()[-1])
  # Each of the 4 devices holds one whole member (rows 0, 1, 2, 3).
  assert report == {"devices": 4, "shards": [[0, 0], [1, 1], [2, 2], [3, 3]]}
  if jax.default_backend() == "cpu":  # one device here: compare in-process
    here = population.train_population(
      sharded_configs(tiny_tfds), str(tmp_path / "one"), log=lambda *a: None
    )
    ours = [np.asarray(x) for r in here for x in jax.tree.leaves(r["params"])]
  else:  # the same population on one host device
    stdout, ours = run("one")
    assert json.loads(stdout.splitlines()[-1])["devices"] == 1
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_auto_unrolls_members_on_one_cpu_device_and_vmaps_otherwise(
  monkeypatch,
):
  assert jax.default_backend() == "cpu" and jax.local_device_count() == 1
  assert population.resolve_method("auto", 3) == "unroll"
  for method in ("vmap", "map", "unroll"):
    assert population.resolve_method(method, 3) == method
  # Members split over 4 devices, or an accelerator: vmap.
  four = jax.sharding.Mesh(np.array(jax.local_devices() * 4), ("members",))
  monkeypatch.setattr(train, "population_mesh", lambda k: four)
  assert population.resolve_method("auto", 4) == "vmap"
  with pytest.raises(ValueError, match="split over 4 devices; use 'vmap'"):
    population.resolve_method("unroll", 4)
  monkeypatch.undo()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert population.resolve_method("auto", 3) == "vmap"


def test_population_mesh_uses_the_devices_that_divide_the_members():
  mesh = train.population_mesh(3)
  assert mesh.axis_names == ("members",) and mesh.size == 1  # one device here


@pytest.mark.parametrize(
  "arg",
  [
    "model=ic_st_cnn,recurrences=2",
    "model=preact_resnet_stn,placement=input+stage1,shared_stem=true",
    "model=preact_resnet_stn,placement=stage2",
  ],
)
def test_an_ic_stn_or_resnet_stn_population_matches_separate_runs(
  arg, tiny_tfds, tmp_path
):
  """The recurrent transformer and the ResNet-STN train as populations
  like the others. SGD, as in the tests above: Adam's first steps move a
  parameter whose gradient is float noise by about the learning rate, so
  two exact computations that round differently (on another CPU) would
  disagree by more than float tolerance."""

  def config(seed, learning_rate):
    config = tiny(
      MNIST.get_config(f"{arg},small=true,seed={seed}"),
      tiny_tfds,
      num_steps=2,
      optimizer="sgd",
    )
    config.learning_rate = learning_rate
    return config

  members = [(0, 1e-2), (1, 2e-2)]
  results = population.train_population(
    [config(s, lr) for s, lr in members],
    str(tmp_path / "pop"),
    method="vmap",
    log=lambda *a: None,
  )
  for k, (seed, learning_rate) in enumerate(members):
    workdir = str(tmp_path / f"separate{seed}")
    result = train.train_and_evaluate(config(seed, learning_rate), workdir)
    theirs = jax.tree.leaves(stn_jax.restore(workdir).model)
    ours = jax.tree.leaves(results[k]["params"])
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert abs(results[k]["test_error"] - result["test_error"]) < 1e-6


def _test_error(run, tfds_dir):
  from stn_jax.data import datasets

  test = datasets.load_arrays("distorted_mnist/rts", "test", tfds_dir=tfds_dir)
  predicted = np.asarray(run.predict(test["image"])).argmax(-1)
  return float(np.mean(predicted != test["label"]))


def test_a_member_is_restored_from_the_stacked_checkpoint(
  tiny_tfds, tmp_path, three_separate_runs
):
  configs = [member(tiny_tfds, s, lr) for s, lr in THREE_MEMBERS[:2]]
  folder = str(tmp_path / "pop")
  results = population.train_population(configs, folder, log=lambda *a: None)
  for k in range(2):
    run = stn_jax.restore(folder, member=k)
    ours = jax.tree.leaves(run.model)
    # bitwise the member's final parameters, and a separate run's up to
    # float rounding
    for a, b in zip(ours, jax.tree.leaves(results[k]["params"])):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(ours, three_separate_runs[k][1]):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert run.config.seed == THREE_MEMBERS[k][0] and run.step == 3
    assert _test_error(run, tiny_tfds) == results[k]["test_error"]
  with pytest.raises(ValueError, match=r"member must be an int in \[0, 2\)"):
    stn_jax.restore(folder)
  with pytest.raises(ValueError, match="got 2"):
    stn_jax.restore(folder, member=2)


def test_member_is_refused_for_a_single_run(tiny_tfds, tmp_path):
  config = member(tiny_tfds, 0, 1e-3, num_steps=1)
  train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match="member is only for a population"):
    stn_jax.restore(str(tmp_path), member=0)


def test_a_sweep_point_trained_in_a_population_restores_its_member(
  tiny_tfds, tmp_path
):
  from conftest import write_mnist_config_with_sweep

  from stn_jax import sweep

  path = write_mnist_config_with_sweep(
    tmp_path,
    "def sweep_tiny(add):\n"
    "  for seed in (0, 1):\n"
    "    add(f'distortion=rts,model=st_cnn,small=true,seed={seed}')\n",
  )
  overrides = dict(
    tfds_dir=str(tiny_tfds),
    batch_size=8,
    eval_batch_size=8,
    num_steps=2,
    log_every=1,
    eval_every=1000,
    checkpoint_every=1000,
  )
  records = sweep.run_sweep(
    str(path),
    "tiny",
    str(tmp_path / "runs"),
    overrides=overrides,
    train_population=True,
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["finished", "finished"]
  for k, record in enumerate(records):
    assert record["population"]["index"] == k
    run = stn_jax.restore(str(tmp_path / "runs" / record["name"]))
    assert run.config.seed == k
    assert _test_error(run, tiny_tfds) == record["results"]["test_error"]
  # a record written before the index was kept: found by its results
  point = tmp_path / "runs" / records[1]["name"]
  record = json.loads((point / "record.json").read_text())
  del record["population"]["index"]
  (point / "record.json").write_text(json.dumps(record))
  assert stn_jax.restore(str(point)).config.seed == 1
