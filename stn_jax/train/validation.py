"""A run config's validation, before anything is built or compiled."""

from __future__ import annotations

import jax
import ml_collections

from stn_jax import config_schema
from stn_jax.data import inputs


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before anything is built or compiled: each key's
  own check (:func:`stn_jax.config_schema.validate`), the data keys'
  checks against each other and the registered datasets
  (:func:`stn_jax.data.inputs.check_config`), and the batch sizes against
  the devices.

  Raises:
    ValueError: naming the key, what it must be and what it is.
  """
  config_schema.validate(config)
  inputs.check_config(config)
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ValueError(
        f"config.{key} must be divisible by the number of "
        f"devices ({devices}); got {config[key]}."
      )
