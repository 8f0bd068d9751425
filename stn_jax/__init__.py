"""stn_jax: Spatial Transformer Networks in JAX.

The spatial ops are re-exported here; models, data and training live in
subpackages.
"""

from stn_jax import ops
from stn_jax.ops import (
  ALL_PADDING_MODES,
  MODES,
  PADDING_MODES,
  TRANSFORMS,
  ThinPlateSpline,
  affine_grid,
  attention_theta,
  base_coordinates,
  crop_and_resize,
  denormalize_points,
  fit_tps,
  get_affine_transform,
  get_perspective_transform,
  grid_sample,
  identity_params,
  invert_affine,
  normalize_points,
  normalized_to_pixel_homography,
  num_transform_params,
  params_to_grid,
  pixel_to_normalized_homography,
  pixel_to_theta,
  projective_grid,
  rotation_matrix,
  theta_to_pixel,
  tps_grid,
  tps_source_points,
  tps_warp_points,
  warp_affine,
  warp_perspective,
)

__version__ = "0.1.0"
# Every name of ops.__all__ (tests/test_api.py checks), ops and restore.
__all__ = [
  "ALL_PADDING_MODES",
  "MODES",
  "PADDING_MODES",
  "TRANSFORMS",
  "ThinPlateSpline",
  "affine_grid",
  "attention_theta",
  "base_coordinates",
  "crop_and_resize",
  "denormalize_points",
  "fit_tps",
  "get_affine_transform",
  "get_perspective_transform",
  "grid_sample",
  "identity_params",
  "invert_affine",
  "normalize_points",
  "normalized_to_pixel_homography",
  "num_transform_params",
  "params_to_grid",
  "pixel_to_normalized_homography",
  "pixel_to_theta",
  "projective_grid",
  "rotation_matrix",
  "theta_to_pixel",
  "tps_grid",
  "tps_source_points",
  "tps_warp_points",
  "warp_affine",
  "warp_perspective",
  "ops",
  "restore",
]


def restore(workdir):
  """The trained model of ``workdir``: ``.config``, ``.predict(images)``,
  ``.transform(images)``; see :mod:`stn_jax.inference`."""
  from stn_jax.inference import restore as _restore  # heavy imports, late

  return _restore(workdir)
