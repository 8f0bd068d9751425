"""Pure-functional spatial transformer ops: grid generators and samplers,
plus a pixel-coordinate geometry toolkit built on them.

No Flax here. See :mod:`stn_jax.ops.grids` for the normalised coordinate
convention and :mod:`stn_jax.ops.geometry` for the pixel one.
"""

from stn_jax.ops.affine_matrices import (
  get_affine_matrix2d,
  get_rotation_matrix2d,
  get_shear_matrix2d,
)
from stn_jax.ops.crops import (
  center_crop,
  crop_by_boxes,
  crop_by_indices,
  crop_by_transform_mat,
)
from stn_jax.ops.fitting import (
  ThinPlateSpline,
  fit_tps,
  get_affine_transform,
  get_perspective_transform,
  rotation_matrix,
  tps_warp_points,
)
from stn_jax.ops.geometry import (
  crop_and_resize,
  denormalize_points,
  invert_affine,
  normalize_points,
  normalized_to_pixel_homography,
  pixel_to_normalized_homography,
  pixel_to_theta,
  theta_to_pixel,
  warp_affine,
  warp_perspective,
)
from stn_jax.ops.grids import (
  affine_grid,
  attention_theta,
  base_coordinates,
  projective_grid,
  tps_grid,
  tps_source_points,
)
from stn_jax.ops.remap import PIXEL_PADDING_MODES, remap
from stn_jax.ops.sampling import (
  ALL_PADDING_MODES,
  MODES,
  PADDING_MODES,
  grid_sample,
)
from stn_jax.ops.transforms import (
  MATRIX_TRANSFORMS,
  TRANSFORMS,
  identity_params,
  matrix_to_params,
  num_transform_params,
  params_to_grid,
  params_to_matrix,
)
from stn_jax.ops.volumetric import (
  VOLUMETRIC_MODES,
  affine_grid_3d,
  grid_sample_3d,
)
from stn_jax.ops.warp3d import (
  VOLUMETRIC_PADDING_MODES,
  get_perspective_transform3d,
  get_projective_transform,
  warp_affine3d,
  warp_perspective3d,
)

__all__ = [
  "ALL_PADDING_MODES",
  "MATRIX_TRANSFORMS",
  "MODES",
  "PADDING_MODES",
  "PIXEL_PADDING_MODES",
  "TRANSFORMS",
  "VOLUMETRIC_MODES",
  "VOLUMETRIC_PADDING_MODES",
  "ThinPlateSpline",
  "affine_grid",
  "affine_grid_3d",
  "attention_theta",
  "base_coordinates",
  "center_crop",
  "crop_and_resize",
  "crop_by_boxes",
  "crop_by_indices",
  "crop_by_transform_mat",
  "denormalize_points",
  "fit_tps",
  "get_affine_matrix2d",
  "get_affine_transform",
  "get_perspective_transform",
  "get_perspective_transform3d",
  "get_projective_transform",
  "get_rotation_matrix2d",
  "get_shear_matrix2d",
  "grid_sample",
  "grid_sample_3d",
  "identity_params",
  "invert_affine",
  "matrix_to_params",
  "normalize_points",
  "normalized_to_pixel_homography",
  "num_transform_params",
  "params_to_grid",
  "params_to_matrix",
  "pixel_to_normalized_homography",
  "pixel_to_theta",
  "projective_grid",
  "remap",
  "rotation_matrix",
  "theta_to_pixel",
  "tps_grid",
  "tps_source_points",
  "tps_warp_points",
  "warp_affine",
  "warp_affine3d",
  "warp_perspective",
  "warp_perspective3d",
]
