"""stn_jax: Spatial Transformer Networks in JAX.

The spatial ops are re-exported here; models, data and training live in
subpackages.
"""

from stn_jax import ops
from stn_jax.ops import *  # noqa: F403 - the ops API, by ops.__all__

__version__ = "0.1.0"
__all__ = [*ops.__all__, "ops", "pretrained", "restore"]


def restore(workdir, member=None):
  """The trained model of ``workdir``: ``.config``, ``.predict(images)``,
  ``.transform(images)``; ``member``: which member of a population's
  folder. See :func:`stn_jax.inference.restore`."""
  from stn_jax.inference import restore as _restore  # heavy imports, late

  return _restore(workdir, member)


def pretrained(name=None):
  """A trained model that ships with stn_jax, or the list of them.

  ``pretrained()`` returns ``{name: Card}``, every entry's
  :class:`stn_jax.model_zoo.Card` (config, measured test error, the
  command that trained it, ...). ``pretrained(name)`` returns that model
  as ``stn_jax.restore`` returns a run's (``.predict(images)``,
  ``.transform(images)``, ``.config``), its weights verified by sha256
  (and downloaded first if they are a release download); see
  :mod:`stn_jax.model_zoo`.

  Raises:
    ValueError: an unknown name (the message lists the known ones) or
      weights that fail their checksum.
  """
  from stn_jax import model_zoo  # heavy imports, late

  if name is None:
    return model_zoo.cards()
  return model_zoo.load(name)
