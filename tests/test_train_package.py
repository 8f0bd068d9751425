"""The train package's structure: hooks by name (defaults and
``config.extra_hooks``), the placement objects, and the training code's
independence from datasets and distortions."""

import ast
import os
import signal

import pytest
from conftest import MNIST, REPO, tiny

from stn_jax import hooks, train
from stn_jax.train import hook_registry, placement

# The public names stn_jax.train had as one module (at 9f24987) that other
# modules, tests and experiments use.
OLD_PUBLIC_NAMES = (
  "OPTIMIZERS",
  "SNAPSHOT_COUNT",
  "TrainingDiverged",
  "batches_on_device",
  "close_all",
  "device_preprocessing",
  "dispatch_length",
  "evaluate",
  "fit",
  "load_data",
  "population_mesh",
  "preprocessing",
  "run_loop",
  "save_snapshot",
  "train_and_evaluate",
  "train_dataset",
  "train_split",
  "transformer_outputs",
  "use_compilation_cache",
  "validate_config",
  "write_transformer_png",
)


def test_the_old_public_names_are_still_there():
  for name in OLD_PUBLIC_NAMES:
    assert hasattr(train, name), name


def _parts(**overrides):
  config = MNIST.get_config("small=true")
  for key, value in overrides.items():
    config[key] = value
  return hook_registry.RunParts(
    config, [config], None, [], lambda c: None, lambda c: None, print
  )


def test_the_default_hooks_are_those_the_loop_had():
  built = hook_registry.build_hooks(_parts())
  assert list(built) == [
    "log_metrics",
    "checkpoint",
    "preemption",
    "evaluation",
  ]
  kinds = [type(h) for h in built.values()]
  assert kinds == [
    hooks.LogMetrics,
    hooks.Checkpoint,
    hooks.Preemption,
    hooks.Periodic,
  ]
  assert built["preemption"].signals == (signal.SIGTERM, signal.SIGINT)
  assert built["checkpoint"].every_steps == 250
  with_snapshots = hook_registry.build_hooks(_parts(snapshot_every=7))
  assert list(with_snapshots)[-1] == "snapshots"
  assert with_snapshots["snapshots"].every_steps == 7


class _CountSteps(hooks.Hook):
  def __init__(self):
    self.steps = []

  def after_step(self, context):
    self.steps.append(context.step)


def test_a_registered_hook_is_switched_on_from_the_config(
  tiny_tfds, tmp_path, monkeypatch
):
  made = []

  def factory(run):
    made.append(_CountSteps())
    return made[-1]

  monkeypatch.setitem(hook_registry.HOOKS, "count_steps", factory)
  config = tiny(
    MNIST.get_config("model=cnn,small=true"), tiny_tfds, num_steps=3
  )
  config.extra_hooks = ("count_steps",)
  train.train_and_evaluate(config, str(tmp_path))
  assert [h.steps for h in made] == [[1, 2, 3]]
  # extra_hooks is safe to change: the run resumes with another list
  config.extra_hooks = ()
  config.num_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  assert [h.steps for h in made] == [[1, 2, 3]]


@pytest.mark.parametrize(
  "names", [("no_such_hook",), ("checkpoint",), "count_steps"]
)
def test_bad_extra_hooks_are_refused_by_name(names, tmp_path):
  config = MNIST.get_config("small=true")
  with config.ignore_type():
    config.extra_hooks = names
  with pytest.raises(ValueError, match="config.extra_hooks must"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def test_register_hook_refuses_a_second_entry_of_a_name():
  with pytest.raises(ValueError, match="'checkpoint' is registered already"):
    hook_registry.register_hook("checkpoint")(lambda run: None)


def test_placements_own_the_member_folders(tmp_path):
  config = MNIST.get_config("small=true")
  single = placement.make_placement([config], str(tmp_path))
  assert isinstance(single, placement.SingleRun)
  assert single.folders == [str(tmp_path)] and not single.population
  configs = [MNIST.get_config(f"small=true,seed={k}") for k in range(3)]
  members = placement.make_placement(configs, str(tmp_path), "unroll")
  assert isinstance(members, placement.Population)
  assert members.folders == [str(tmp_path / f"member_{k}") for k in range(3)]
  assert members.identity[2]["seed"] == 2
  with pytest.raises(ValueError, match="member_dirs must differ"):
    placement.make_placement(configs, str(tmp_path), "vmap", ["a", "a", "b"])
  with pytest.raises(ValueError, match="member_dirs needs a population"):
    placement.make_placement([config], str(tmp_path), None, ["a"])


def _source(path):
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def test_the_training_code_names_no_dataset_and_no_distortion():
  folder = os.path.join(REPO, "stn_jax", "train")
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py"):
      continue
    text = _source(os.path.join("stn_jax", "train", name))
    tree = ast.parse(text)
    imported = {
      alias.name
      for node in ast.walk(tree)
      if isinstance(node, ast.ImportFrom)
      for alias in node.names
    }
    assert not {"distortions", "augment", "device_augment", "datasets"} & (
      imported
    ), name
    for word in ("distorted_mnist", "gtsrb", "mnist"):
      assert word not in text.lower(), (name, word)


def test_the_loop_has_no_population_branch_and_short_functions():
  tree = ast.parse(_source("stn_jax/train/loop.py"))
  for node in ast.walk(tree):
    if isinstance(node, ast.If):
      assert "population" not in ast.unparse(node.test), ast.unparse(node.test)
    if isinstance(node, ast.FunctionDef):
      assert node.end_lineno - node.lineno < 80, node.name
