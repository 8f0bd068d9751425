"""The config schema: one table gives each key's default, check and role;
the workdir check, the population check and the defaults derive from it and
keep the rules stn_jax had before the table (written out here as they were
at commit 9f24987)."""

import glob
import json
import math
import os

import ml_collections
import pytest
from conftest import GTSRB, MNIST, REPO

from stn_jax import config_schema, population, recipe, train, workdir

# The rules as literal tables, as workdir.py, steps.py and population.py
# wrote them at 9f24987 (before the schema).
OLD_SAFE_TO_CHANGE = {
  "arg",
  "num_steps",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "snapshot_every",
  "max_checkpoints",
  "eval_batch_size",
  "tfds_dir",
  "source_dir",
  "data_mirror",
  "compilation_cache_dir",
  "data_on_device",
  "steps_per_dispatch",
  "conv_weight_gradient",
  "xla_cpu_library",
  "async_checkpoints",
}
OLD_IMPLICIT_DEFAULTS = {
  "train_dataset": "",
  "train_split": "train",
  "mean": 0.0,
  "std": 1.0,
  "snapshot_every": 0,
  "augment_rotation": 0.0,
  "augment_scale": 0.0,
  "augment_translate": 0.0,
  "model_kwargs.width": 1.0,
  "data_on_device": False,
  "steps_per_dispatch": 1,
  "conv_weight_gradient": "xla",
  "xla_cpu_library": "ynnpack",
  "async_checkpoints": False,
  "augment_on_device": False,
  "weight_decay": 0.0,
}
OLD_MAY_DIFFER = (
  "seed",
  "learning_rate",
  "localisation_lr_multiplier",
  "grad_clip_norm",
  "weight_decay",
  "arg",
)
# Keys added since 9f24987, with the value that reproduces the runs before
# them (their implicit value) and their role.
ADDED_KEYS = {
  "extra_hooks": ((), config_schema.Role.EXECUTION),
  "lr_schedule": ("step", config_schema.Role.IDENTITY),
  "warmup_steps": (0, config_schema.Role.IDENTITY),
  "label_smoothing": (0.0, config_schema.Role.IDENTITY),
  "ema_decay": (0.0, config_schema.Role.IDENTITY),
}
# Keys the schema gives an implicit value that the old table lacked: what
# the code already assumed when a config lacked them (config.get defaults
# in recipe.member_hyperparameters, evaluate.py, ...), or safe-to-change
# keys the check ignores anyway.
NEW_IMPLICIT_DEFAULTS = {
  "arg": "",
  "on_the_fly": "",
  "source_dir": "",
  "data_mirror": "",
  "tfds_dir": "",
  "compilation_cache_dir": "",
  "localisation_lr_multiplier": 1.0,
  "grad_clip_norm": 0.0,
}


def test_the_derived_tables_keep_the_old_rules():
  added_safe = {
    k for k, (_, role) in ADDED_KEYS.items() if role.value == "execution"
  }
  assert set(config_schema.SAFE_TO_CHANGE) == OLD_SAFE_TO_CHANGE | added_safe
  assert workdir.SAFE_TO_CHANGE == config_schema.SAFE_TO_CHANGE
  expected = {
    **OLD_IMPLICIT_DEFAULTS,
    **NEW_IMPLICIT_DEFAULTS,
    **{k: value for k, (value, _) in ADDED_KEYS.items()},
  }
  derived = dict(workdir.IMPLICIT_DEFAULTS)
  assert derived == expected
  for key, (_, role) in ADDED_KEYS.items():
    assert config_schema.KEYS[key].role is role
  assert set(workdir.ONLY_WITH) == {"augment_on_device"}
  assert set(workdir.IDENTITY_WHEN) == {"num_steps"}
  assert population.MAY_DIFFER == OLD_MAY_DIFFER
  assert list(recipe.MEMBER_HYPERPARAMETERS) == list(OLD_MAY_DIFFER[1:-1])


def test_only_with_ignores_augment_on_device_without_augmentation():
  config = MNIST.get_config("small=true")
  saved = json.loads(config.to_json_best_effort())
  saved["augment_on_device"] = not config.augment_on_device
  assert workdir.config_differences(saved, config) == []
  on_the_fly = MNIST.get_config("small=true,on_the_fly=true")
  saved = json.loads(on_the_fly.to_json_best_effort())
  saved["augment_on_device"] = False
  assert workdir.config_differences(saved, on_the_fly) == [
    "augment_on_device: False -> True"
  ]


def test_defaults_are_the_base_of_every_config():
  base = config_schema.defaults()
  listed = [k.name for k in config_schema.SCHEMA if k.default is not MISSING]
  assert set(base.keys()) == {n for n in listed if "." not in n}
  for name in ("mnist", "gtsrb"):
    module = MNIST if name == "mnist" else GTSRB
    config = module.get_config("small=true")
    assert set(base.keys()) == set(config.keys())
    config_schema.validate(config)
  assert base.data_on_device is True and base.conv_weight_gradient == "auto"


MISSING = config_schema.MISSING


def test_a_config_json_written_before_the_schema_still_resumes():
  """tests/data/config_written_by_9f24987.json: the config.json of `make
  train`'s run (30 steps) written by the code before the schema."""
  with open(
    os.path.join(REPO, "tests/data/config_written_by_9f24987.json")
  ) as f:
    saved = json.load(f)
  config = MNIST.get_config(saved["arg"])
  assert workdir.config_differences(saved, config) == []
  train.validate_config(ml_collections.ConfigDict(saved))
  config.learning_rate = 0.5
  assert workdir.config_differences(saved, config) == [
    "learning_rate: 0.001 -> 0.5"
  ]


def _old_differences(saved, config):
  """workdir.config_differences as it was at 9f24987, for configs of
  today (which hold the keys added since: at their implicit values, those
  compare equal to a config without them)."""
  flat = workdir._flatten
  old, new = flat(saved), flat(json.loads(config.to_json_best_effort()))
  for key, (value, _) in ADDED_KEYS.items():
    assert new.get(key) == json.loads(json.dumps(value)), key
    new.pop(key)
  augments = lambda f: (
    bool(f.get("on_the_fly"))
    or any(
      f.get(k, 0.0)
      for k in ("augment_rotation", "augment_scale", "augment_translate")
    )
  )
  missing = object()
  lines = []
  for key in sorted(set(old) | set(new)):
    if key in OLD_SAFE_TO_CHANGE:
      continue
    before = old.get(key, OLD_IMPLICIT_DEFAULTS.get(key, missing))
    after = new.get(key, missing)
    if key == "augment_on_device" and not (augments(old) or augments(new)):
      continue
    if before != after:
      show = lambda v: "(absent)" if v is missing else repr(v)
      lines.append(f"{key}: {show(before)} -> {show(after)}")
  return lines


def test_archived_runs_compare_as_before():
  """Every config.json under experiments/results/runs (written by older
  versions) against today's config of its argument, and against a copy
  with keys removed (as older versions wrote them): the same differences
  as the old rules found."""
  paths = sorted(
    glob.glob(
      os.path.join(REPO, "experiments/results/runs/**/config.json"),
      recursive=True,
    )
    + glob.glob(
      os.path.join(REPO, "experiments/results/runs/**/manifest.json"),
      recursive=True,
    )
  )
  assert paths
  for path in paths:
    with open(path) as f:
      saved = json.load(f)
    if path.endswith("manifest.json"):
      saved = saved["config"]
    if "lr_schedule" in saved:  # written after the old rules (recipe keys)
      continue
    module = GTSRB if saved["dataset"].startswith("gtsrb") else MNIST
    config = module.get_config(saved["arg"])
    assert workdir.config_differences(saved, config) == _old_differences(
      saved, config
    ), path
    for key in OLD_IMPLICIT_DEFAULTS:
      shorter = {k: v for k, v in saved.items() if k != key}
      assert workdir.config_differences(shorter, config) == _old_differences(
        shorter, config
      ), (path, key)


@pytest.mark.parametrize(
  "key,value,expected",
  [
    ("batch_size", 0, "a positive int"),
    ("batch_size", 2.5, "a positive int"),
    ("num_classes", -1, "a positive int"),
    ("seed", -1, r"an int in \[0, 2\*\*31\)"),
    ("learning_rate", math.nan, "a finite number > 0.0"),
    ("std", 0.0, "a finite number > 0.0"),
    ("mean", math.inf, "a finite number"),
    ("optimizer", "lbfgs", "one of sgd, momentum, adam"),
    ("data_on_device", "yes", "a bool"),
    ("eval_splits", (), "a non-empty sequence of str"),
    ("conv_weight_gradient", "fast", "one of"),
    ("xla_cpu_library", "mkl", "one of auto, eigen, ynnpack"),
    ("model_kwargs.recurrences", 0, "an int >= 1"),
  ],
)
def test_each_bad_value_is_named(key, value, expected):
  config = MNIST.get_config("model=ic_st_cnn,small=true")
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[last] = value
  with pytest.raises(ValueError, match=f"config.{key}.* must be {expected}"):
    config_schema.validate(config)


def test_a_missing_key_without_a_default_is_named():
  config = MNIST.get_config("small=true")
  del config["num_classes"]
  with pytest.raises(ValueError, match="config.num_classes is missing"):
    config_schema.validate(config)
  del config["weight_decay"]  # older configs lack it: its implicit 0.0
  assert config_schema.get(config, "weight_decay") == 0.0


def test_every_key_has_a_check_a_role_and_words():
  names = [k.name for k in config_schema.SCHEMA]
  assert len(names) == len(set(names))
  for key in config_schema.SCHEMA:
    assert isinstance(key.role, config_schema.Role)
    assert key.doc
    if key.default is not MISSING and key.name != "model":  # files set it
      assert key.check(key.default) is None, key.name
  assert "learning_rate" in config_schema.describe()
