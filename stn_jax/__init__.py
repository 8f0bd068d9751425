"""stn_jax: Spatial Transformer Networks in JAX.

The spatial ops are re-exported here; models, data and training live in
subpackages.
"""

from stn_jax import ops
from stn_jax.ops import (MODES, PADDING_MODES, TRANSFORMS, affine_grid,
                         attention_theta, base_coordinates, grid_sample,
                         identity_params, num_transform_params, params_to_grid,
                         projective_grid, tps_grid, tps_source_points)

__version__ = "0.1.0"


def restore(workdir):
  """The trained model of ``workdir``: ``.config``, ``.predict(images)``,
  ``.transform(images)``; see :mod:`stn_jax.inference`."""
  from stn_jax.inference import restore as _restore  # heavy imports, late
  return _restore(workdir)
