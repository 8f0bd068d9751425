"""stn_jax: Spatial Transformer Networks in JAX.

The spatial ops are re-exported here; models, data and training live in
subpackages.
"""

from stn_jax import ops
from stn_jax.ops import *  # noqa: F403 - the ops API, by ops.__all__

__version__ = "0.1.0"
__all__ = [*ops.__all__, "ops", "restore"]


def restore(workdir, member=None):
  """The trained model of ``workdir``: ``.config``, ``.predict(images)``,
  ``.transform(images)``; ``member``: which member of a population's
  folder. See :func:`stn_jax.inference.restore`."""
  from stn_jax.inference import restore as _restore  # heavy imports, late

  return _restore(workdir, member)
