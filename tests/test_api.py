"""Public API conventions: re-exports, docstrings, keyword-only options."""

import inspect

import stn_jax
import stn_jax.ops


def test_every_public_function_is_exported_and_documented():
  for name in stn_jax.ops.__all__:
    obj = getattr(stn_jax, name)
    assert obj is getattr(stn_jax.ops, name)
    if callable(obj):
      assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_options_are_keyword_only():
  for name in ("affine_grid", "projective_grid", "tps_grid", "grid_sample",
               "base_coordinates", "params_to_grid", "warp_affine",
               "warp_perspective", "crop_and_resize", "pixel_to_theta",
               "theta_to_pixel", "pixel_to_normalized_homography",
               "normalized_to_pixel_homography", "normalize_points",
               "denormalize_points", "fit_tps"):
    parameters = inspect.signature(getattr(stn_jax, name)).parameters
    for option in ("mode", "padding_mode", "align_corners", "source_points",
                   "fill_value", "regularization"):
      if option in parameters:
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY, (
            name, option)


def test_ops_layer_has_no_flax():
  import sys
  for module in list(sys.modules):
    if module.startswith("stn_jax.ops"):
      source = inspect.getsource(sys.modules[module])
      assert "import flax" not in source and "from flax" not in source
