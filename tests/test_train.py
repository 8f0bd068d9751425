"""Training: configs, every model end to end, crash/resume, corrupted
checkpoints, SIGTERM, NaN, data parallelism, restore/predict."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import FOUR_HOST_DEVICES, GTSRB, MNIST, REPO, tiny

import stn_jax
from stn_jax import models, train
from stn_jax import workdir as workdir_lib
from stn_jax.data import datasets, inputs

MODEL_CONFIGS = {
  "fcn": lambda: MNIST.get_config("model=fcn,small=true"),
  "cnn": lambda: MNIST.get_config("model=cnn,small=true"),
  "st_fcn": lambda: MNIST.get_config("model=st_fcn,small=true"),
  "st_cnn": lambda: MNIST.get_config("model=st_cnn,small=true"),
  "ic_st_cnn": lambda: MNIST.get_config(
    "model=ic_st_cnn,recurrences=2,small=true"
  ),
  "resnet": lambda: MNIST.get_config("model=resnet,small=true"),
  "resnet_stn": lambda: MNIST.get_config("model=resnet_stn,small=true"),
  "preact_resnet": lambda: GTSRB.get_config("model=preact_resnet,small=true"),
  "preact_resnet_stn": lambda: MNIST.get_config(
    "model=preact_resnet_stn,placement=input+stage2,shared_stem=true,small=true"
  ),
  "gtsrb_cnn": lambda: GTSRB.get_config("model=gtsrb_cnn,small=true"),
  "gtsrb_st_cnn": lambda: GTSRB.get_config("model=gtsrb_st_cnn,small=true"),
}


def test_every_registered_model_has_an_end_to_end_test():
  assert set(MODEL_CONFIGS) == set(models.MODELS)


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_one_step_train_and_evaluate(name, tiny_tfds, tmp_path):
  config = tiny(MODEL_CONFIGS[name](), tiny_tfds, num_steps=1)
  if name.startswith("gtsrb"):
    config.model_kwargs.width = 0.05
  results = train.train_and_evaluate(config, str(tmp_path))
  assert 0 <= results["test_error"] <= 1
  assert np.isfinite(results["test_loss"])
  for file in ("metrics.jsonl", "config.json", "results.json"):
    assert (tmp_path / file).is_file()
  assert list((tmp_path / "tensorboard").iterdir())
  assert (tmp_path / "checkpoints" / "1").is_dir()
  if name in models.TRANSFORMER_MODELS:
    assert (tmp_path / "transformer.png").is_file()


def test_restore_predict_and_transform(tiny_tfds, tmp_path):
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(tmp_path))
  restored = stn_jax.restore(str(tmp_path))
  assert restored.config.model == "st_cnn" and restored.step == 2
  images = datasets.load_arrays(
    "distorted_mnist/rts", "test", tfds_dir=tiny_tfds
  )["image"][:5]
  logits = restored.predict(images)
  assert logits.shape == (5, 10)
  np.testing.assert_allclose(
    restored.predict(images / 255.0), logits, atol=1e-5
  )
  assert restored.transform(images).shape == (5, 42, 42, 1)
  with pytest.raises(
    ValueError, match=r"images must have shape \(N, 42, 42, 1\)"
  ):
    restored.predict(np.zeros((2, 28, 28, 1), np.uint8))


@pytest.mark.parametrize(
  "arg,match",
  [
    ("model=vit", "config argument model must be one of fcn, cnn"),
    ("distortion=shear", "config argument distortion must be one of plain"),
    ("color=red", "unknown config argument 'color'; valid keys: distortion"),
    ("small=maybe", "small must be a bool"),
  ],
)
def test_bad_config_arguments(arg, match):
  with pytest.raises(ValueError, match=match):
    MNIST.get_config(arg)


@pytest.mark.parametrize(
  "override,match",
  [
    ({"learning_rate": -0.1}, "learning_rate must be a finite number > 0"),
    ({"model": "vit"}, "config.model must be one of"),
    ({"dataset": "distorted_mnist/shear"}, "has configs"),
    ({"num_steps": 0}, "num_steps must be a positive int"),
    ({"train_split": "test"}, "train_split 'test' is also in"),
    ({"snapshot_every": -1}, "snapshot_every must be an int >= 0"),
    (
      {"train_split": "validation", "on_the_fly": "rts"},
      "train_split must be 'train' or 'train_without_validation' with on_the_fly",
    ),
  ],
)
def test_bad_config_values_fail_before_anything_is_built(
  override, match, tmp_path, monkeypatch
):
  monkeypatch.setattr(inputs, "load_data", lambda *a: pytest.fail("loaded"))
  config = MNIST.get_config("small=true")
  for key, value in override.items():
    config[key] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_devices(monkeypatch, tmp_path):
  monkeypatch.setattr(jax, "device_count", lambda: 3)
  config = MNIST.get_config("small=true")
  with pytest.raises(
    ValueError, match=r"divisible by the number of devices \(3\)"
  ):
    train.train_and_evaluate(config, str(tmp_path))


def run_main(workdir, tfds_dir, *extra, env=None, check=True):
  """``python -m stn_jax.main`` on the tiny data (through
  tests/train_with_signal.py, which adds --signal_at_step/--signal)."""
  command = [
    sys.executable,
    str(REPO / "tests" / "train_with_signal.py"),
    "--config=configs/mnist.py:distortion=rts,model=st_cnn,small=true",
    f"--workdir={workdir}",
    f"--config.tfds_dir={tfds_dir}",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.num_steps=10",
    "--config.checkpoint_every=4",
    "--config.log_every=1",
    "--config.eval_every=1000",
    *extra,
  ]
  result = subprocess.run(
    command,
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, **(env or {})},
    timeout=600,
  )
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def final_params(workdir):
  restored = stn_jax.restore(str(workdir))
  return restored.step, jax.tree.leaves(restored.model)


def test_kill_9_then_rerun_gives_the_uninterrupted_result(tiny_tfds, tmp_path):
  """With checkpoints written in the background (the default) and waited
  for: a checkpoint being written when the run is killed is lost, never
  half read, and the rerun resumes from what was committed."""
  run_main(tmp_path / "straight", tiny_tfds)
  step_a, params_a = final_params(tmp_path / "straight")
  assert step_a == 10
  for background in (False, True):
    workdir = tmp_path / f"killed_{background}"
    flag = f"--config.async_checkpoints={background}"
    killed = run_main(
      workdir,
      tiny_tfds,
      "--signal_at_step=6",
      "--signal=SIGKILL",
      flag,
      check=False,
    )
    assert killed.returncode == -9
    saved = [p.name for p in (workdir / "checkpoints").iterdir()]
    resumed = run_main(workdir, tiny_tfds, flag)
    if not background:
      assert saved == ["4"]
      assert "resumed from step 4" in resumed.stdout
    else:  # 4 was written in the background: committed or still a tmp
      assert saved in (["4"], ["4.orbax-checkpoint-tmp"]), saved
      assert ("resumed from step 4" in resumed.stdout) == (saved == ["4"])
    step_b, params_b = final_params(workdir)
    assert step_b == 10
    for a, b in zip(params_a, params_b):
      np.testing.assert_array_equal(a, b)  # bitwise


@pytest.mark.parametrize("name,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_sigint_save_and_exit_then_resume(
  tiny_tfds, tmp_path, name, status
):
  stopped = run_main(
    tmp_path, tiny_tfds, "--signal_at_step=5", f"--signal={name}", check=False
  )
  assert stopped.returncode == status, stopped.stderr[-2000:]
  assert f"{name}: saved a checkpoint at step 5" in stopped.stdout
  assert "5" in os.listdir(tmp_path / "checkpoints")
  resumed = run_main(tmp_path, tiny_tfds)
  assert "resumed from step 5" in resumed.stdout
  assert final_params(tmp_path)[0] == 10


def test_corrupted_latest_checkpoint_falls_back_with_a_warning(
  tiny_tfds, tmp_path
):
  config = tiny(
    MNIST.get_config("model=st_cnn,small=true"),
    tiny_tfds,
    num_steps=8,
    checkpoint_every=4,
  )
  train.train_and_evaluate(config, str(tmp_path))
  latest = tmp_path / "checkpoints" / "8" / "model"
  assert latest.is_dir()
  for path in latest.rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  with pytest.warns(UserWarning, match="checkpoint 8 could not be restored"):
    restored = stn_jax.restore(str(tmp_path))
  assert restored.step == 4


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_tfds, tmp_path):
  config = tiny(
    MNIST.get_config("model=cnn,small=true"),
    tiny_tfds,
    num_steps=20,
    checkpoint_every=1,
    optimizer="sgd",
    learning_rate=1e38,
  )  # weights overflow to inf at once
  with pytest.raises(train.TrainingDiverged, match="loss is (nan|inf)"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert steps  # the good steps before the divergence were kept
  restored = stn_jax.restore(str(tmp_path))
  assert all(
    np.all(np.isfinite(x))
    for x in jax.tree.leaves(restored.model)
    if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)
  )


def test_four_devices_match_one_device(tiny_tfds, tmp_path):
  # Both on host devices, also on a GPU machine (where the 4-device run
  # would otherwise see the one GPU alone).
  one_run = run_main(
    tmp_path / "one",
    tiny_tfds,
    "--config.num_steps=3",
    env={"JAX_PLATFORMS": "cpu"},
  )
  four_run = run_main(
    tmp_path / "four",
    tiny_tfds,
    "--config.num_steps=3",
    env={
      "XLA_FLAGS": FOUR_HOST_DEVICES,
      "JAX_PLATFORMS": "cpu",
    },
  )
  assert "1 device(s)" in one_run.stdout
  assert "4 device(s)" in four_run.stdout
  _, one = final_params(tmp_path / "one")
  _, four = final_params(tmp_path / "four")
  for a, b in zip(one, four):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_train_split_selects_the_split_trained_on(monkeypatch):
  calls = []
  monkeypatch.setattr(
    datasets,  # where stn_jax.data.inputs.load_data reads them
    "load_arrays",
    lambda name, split, **kw: (
      calls.append(split) or {"image": np.zeros((4, 8, 8, 3), np.uint8)}
    ),
  )
  config = GTSRB.get_config("small=true")
  train.load_data(config)
  assert calls == ["train_without_validation", "test", "validation"]


RESTORE_ONLY = """
import sys
import stn_jax
run = stn_jax.restore(sys.argv[1])
heavy = sorted({m.split('.')[0] for m in sys.modules} & {
    'tensorflow_datasets', 'grain', 'array_record', 'tensorflow',
    'tensorboardX'})
print(run.step, heavy)
"""


def test_restore_needs_no_data_stack_and_no_optimizer(
  tiny_tfds, tmp_path, monkeypatch
):
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(tmp_path))
  result = subprocess.run(
    [sys.executable, "-c", RESTORE_ONLY, str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split("\n")[-2] == "2 []"
  from stn_jax import recipe

  monkeypatch.setattr(
    recipe, "make_optimizer", lambda *a: pytest.fail("built an optimiser")
  )
  assert stn_jax.restore(str(tmp_path)).step == 2


def write_format_1_checkpoint(workdir, config, in_shape, step):
  """A checkpoint as stn_jax wrote it before the structured state: flat
  leaf lists of the parameters and optimiser state."""
  import orbax.checkpoint as ocp
  from flax import nnx

  from stn_jax import checkpointing, recipe

  checkpointing.write_run_files(str(workdir), config, in_shape)
  model = models.from_config(config, in_shape)
  params = nnx.state(model)
  params = jax.tree.map(lambda x: x + 0.25, params)  # not the init values
  opt_state = recipe.make_optimizer(config, params).init(params)
  manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(
        {
          "params": jax.tree.leaves(params),
          "opt_state": jax.tree.leaves(opt_state),
        }
      ),
      meta=ocp.args.JsonSave(
        {"step": step, "data_state": None, "seed": config.seed}
      ),
    ),
  )
  manager.wait_until_finished()
  manager.close()
  return params


def test_checkpoints_of_the_previous_format_still_restore(tiny_tfds, tmp_path):
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  params = write_format_1_checkpoint(tmp_path, config, (42, 42, 1), step=7)
  restored = stn_jax.restore(str(tmp_path))
  assert restored.step == 7
  from flax import nnx

  for a, b in zip(
    jax.tree.leaves(nnx.state(restored.model)), jax.tree.leaves(params)
  ):
    np.testing.assert_array_equal(a, b)


def test_normalization_is_the_definition():
  from stn_jax.normalization import Normalization

  images = np.random.default_rng(0).integers(
    0, 256, (4, 5, 5, 3), dtype=np.uint8
  )
  norm = Normalization((0.3, 0.4, 0.5), (0.2, 0.25, 0.5))
  want = (images / 255.0 - np.array([0.3, 0.4, 0.5])) / np.array(
    [0.2, 0.25, 0.5]
  )
  np.testing.assert_allclose(norm(images), want, rtol=1e-6, atol=1e-6)
  assert norm(images).dtype == np.float32
  np.testing.assert_allclose(norm.from_unit(images / 255.0), want, atol=1e-6)
  np.testing.assert_array_equal(norm.to_uint8(norm(images)), images)
  config = GTSRB.get_config("small=true")
  assert Normalization.from_config(config) == Normalization(0.33, 0.27)


def test_compilation_cache_is_filled_and_reused(tiny_tfds, tmp_path):
  cache = tmp_path / "xla_cache"
  # The cache keeps compilations of at least a second: the runs compile
  # optimised code, as a user's do (the suite's cheap settings, conftest.py,
  # can bring the step's compilation under a second).
  optimised = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}
  first = run_main(
    tmp_path / "a",
    tiny_tfds,
    f"--config.compilation_cache_dir={cache}",
    env=optimised,
  )
  entries = {p.name for p in cache.iterdir()}
  steps = {e for e in entries if e.startswith("jit_train_steps")}
  assert steps, (entries, first.stderr[-2000:])
  # a second run of the same shapes finds its train step there (the same
  # key: no second entry; small jits may join if they compile slower now)
  run_main(
    tmp_path / "b",
    tiny_tfds,
    f"--config.compilation_cache_dir={cache}",
    env=optimised,
  )
  again = {p.name for p in cache.iterdir()}
  assert entries <= again
  assert {e for e in again if e.startswith("jit_train_steps")} == steps
  # the cache may be pointed elsewhere later (it is safe to change)
  config = MNIST.get_config("small=true")
  saved = json.loads(config.to_json_best_effort())
  config.compilation_cache_dir = str(cache)
  assert workdir_lib.config_differences(saved, config) == []


@pytest.mark.skipif(
  jax.default_backend() != "cpu", reason="the CPU backend's choice"
)
def test_the_xla_cpu_library_is_named_and_changes_only_rounding(
  tiny_tfds, tmp_path, capsys
):
  """config.xla_cpu_library: 'auto' is 'eigen' (no YNNPACK fusions),
  named on the start line; 'ynnpack' (XLA's default) trains to the same losses up
  to float rounding."""
  losses = {}
  for library in ("auto", "ynnpack"):
    config = tiny(MNIST.get_config("model=cnn,small=true"), tiny_tfds)
    config.xla_cpu_library = library
    results = train.train_and_evaluate(config, str(tmp_path / library))
    first = capsys.readouterr().out.splitlines()[0]
    name = "eigen" if library == "auto" else library
    assert first.endswith(f", XLA CPU library {name}"), first
    losses[library] = results["test_loss"]
  np.testing.assert_allclose(losses["auto"], losses["ynnpack"], rtol=1e-4)
