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


def test_transformer_model_lists_agree():
  """The library's TRANSFORMER_MODELS, the configs' lists and the models
  themselves (tests/test_models.py checks that exactly these models
  contain a SpatialTransformer)."""
  for module in (MNIST, GTSRB):
    assert set(module.TRANSFORMER_MODELS) == set(module.MODELS) & set(
      models.TRANSFORMER_MODELS
    ), module.__name__
    for name in module.TRANSFORMER_MODELS:  # they all take `transform`
      config = module.get_config(f"model={name},transform=projective")
      assert config.model_kwargs.transform == "projective"
  assert set(MNIST.TRANSFORMER_MODELS) | set(GTSRB.TRANSFORMER_MODELS) == set(
    models.TRANSFORMER_MODELS
  )


def test_ic_st_cnn_config():
  config = MNIST.get_config("model=ic_st_cnn,recurrences=2,small=true")
  train.validate_config(config)
  assert config.model_kwargs.recurrences == 2
  assert config.model_kwargs.pool_output  # RTS, as the ST-CNN
  model = models.from_config(config, (42, 42, 1))
  assert model.transformer.recurrences == 2
  assert "recurrences" not in MNIST.get_config("model=st_cnn").model_kwargs
  with pytest.raises(ValueError, match="affine or projective"):
    MNIST.get_config("model=ic_st_cnn,transform=tps")
  with pytest.raises(ValueError, match="recurrences must be >= 1"):
    MNIST.get_config("model=ic_st_cnn,recurrences=0")
  config.model_kwargs.recurrences = 0  # an override after get_config
  with pytest.raises(ValueError, match="recurrences .* must be an int >= 1"):
    train.validate_config(config)


@pytest.mark.parametrize(
  "module,point,scale",
  [
    ("mnist", "distortion=rts,model=st_cnn", "fast"),
    ("mnist", "distortion=rts,model=cnn", "cpu_long"),
    ("mnist", "distortion=p,model=st_cnn,transform=projective", "cpu"),
    ("gtsrb", "model=gtsrb_st_cnn", "cpu_long"),
    ("gtsrb", "model=gtsrb_cnn", "fast"),
  ],
)
def test_a_scale_argument_builds_the_table_scripts_config(module, point, scale):
  """``scale=NAME`` in a config argument gives the config the table
  scripts build for that scale (their arg appended, overrides set)."""
  from stn_jax import sweep

  config_module = {"mnist": MNIST, "gtsrb": GTSRB}[module]
  implied, overrides = config_module.SCALES[scale]
  by_arg = config_module.get_config(f"{point},scale={scale}").to_dict()
  by_table = sweep.build_config(
    config_module,
    {"arg": ",".join(a for a in (point, implied) if a), "overrides": {}},
    dict(overrides),
  ).to_dict()
  by_arg.pop("arg"), by_table.pop("arg")
  assert by_arg == by_table
  for key, value in overrides.items():
    node = by_arg
    for part in key.split("."):
      node = node[part]
    assert node == value, key


def test_explicit_arguments_win_over_a_scales_and_bad_scales_are_named():
  config = MNIST.get_config("scale=cpu_long,on_the_fly=false,model=cnn")
  assert config.on_the_fly == "" and config.num_steps == 12_000
  assert config.arg == "scale=cpu_long,on_the_fly=false,model=cnn"
  with pytest.raises(ValueError, match="scale must be one of paper, cpu"):
    MNIST.get_config("scale=huge")
  with pytest.raises(ValueError, match="scale is given twice"):
    MNIST.get_config("scale=cpu,scale=fast")
