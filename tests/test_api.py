"""Public API conventions: re-exports, docstrings, keyword-only options."""

import inspect

import stn_jax
import stn_jax.ops

OPTIONS = (
  "mode",
  "padding_mode",
  "align_corners",
  "source_points",
  "fill_value",
  "regularization",
)


def test_every_public_name_is_exported_and_documented():
  assert set(stn_jax.ops.__all__) <= set(stn_jax.__all__)
  for name in stn_jax.__all__:
    obj = getattr(stn_jax, name)
    if name in stn_jax.ops.__all__:
      assert obj is getattr(stn_jax.ops, name)
    if callable(obj):
      assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_options_are_keyword_only():
  functions = [
    name
    for name in stn_jax.__all__
    if inspect.isfunction(getattr(stn_jax, name))
  ]
  assert len(functions) > 20
  for name in functions:
    parameters = inspect.signature(getattr(stn_jax, name)).parameters
    for option in OPTIONS:
      if option in parameters:
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY, (
          name,
          option,
        )


def test_ops_layer_has_no_flax():
  import sys

  for module in list(sys.modules):
    if module.startswith("stn_jax.ops"):
      source = inspect.getsource(sys.modules[module])
      assert "import flax" not in source and "from flax" not in source
