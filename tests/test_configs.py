"""Config files: shared keys from configs/common.py, lists tied to the
library, the CPU scale defined once."""

import pytest
from conftest import GTSRB, MNIST, REPO

from stn_jax import TRANSFORMS, models, train
from stn_jax.data import distortions


def test_config_lists_match_the_library():
  assert MNIST.DISTORTIONS == distortions.VARIANTS
  assert set(MNIST.MODELS) | set(GTSRB.MODELS) == set(models.MODELS)
  assert set(MNIST.MODELS) <= set(models.MODELS)
  assert set(GTSRB.MODELS) <= set(models.MODELS)


@pytest.mark.parametrize(
  "module,arg",
  [
    (MNIST, ""),
    (MNIST, "small=true"),
    (MNIST, "on_the_fly=true,model=cnn"),
    (GTSRB, ""),
    (GTSRB, "small=true,model=resnet"),
  ],
)
def test_every_config_has_exactly_the_common_keys(module, arg):
  common = MNIST.common.base("")
  config = module.get_config(arg)
  assert set(config.keys()) == set(common.keys())
  train.validate_config(config)


def test_the_cpu_scale_is_one_definition():
  for module in (MNIST, GTSRB):
    config = module.get_config("small=true")
    for key, value in MNIST.common.CPU_SCALE.items():
      assert config[key] == value, (module.__name__, key)
  assert MNIST.common is GTSRB.common


def test_transforms_come_from_the_library():
  with pytest.raises(
    ValueError, match="transform must be one of " + ", ".join(TRANSFORMS)
  ):
    MNIST.get_config("transform=shear")


def test_config_files_import_common_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  from stn_jax import config_args

  module = config_args.load_config_module(str(REPO / "configs" / "gtsrb.py"))
  assert module.get_config("").dataset == "gtsrb/32"
