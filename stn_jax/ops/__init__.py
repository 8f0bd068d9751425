"""Pure-functional spatial transformer ops: grid generators and samplers.

No Flax here. See :mod:`stn_jax.ops.grids` for the coordinate convention.
"""

from stn_jax.ops.grids import (affine_grid, attention_theta, base_coordinates,
                               projective_grid, tps_grid, tps_source_points)
from stn_jax.ops.sampling import MODES, PADDING_MODES, grid_sample
from stn_jax.ops.transforms import (TRANSFORMS, identity_params,
                                    num_transform_params, params_to_grid)

__all__ = [
    "MODES", "PADDING_MODES", "TRANSFORMS", "affine_grid", "attention_theta",
    "base_coordinates", "grid_sample", "identity_params",
    "num_transform_params", "params_to_grid", "projective_grid", "tps_grid",
    "tps_source_points",
]
