"""Keys every config shares, with their defaults, and the CPU scale.

The keys, defaults, checks and roles are one table in
:mod:`stn_jax.config_schema`; this module adds the CPU scale.

``configs/mnist.py`` and ``configs/gtsrb.py`` start from :func:`base` and
override only what differs. Import it from a config file with
``config_args.import_sibling(__file__, 'common')``.
"""

import ml_collections

from stn_jax import config_schema

# `small=true`: what sizes a run for a 2-core CPU (each config adds its own
# step budget and narrower networks).
CPU_SCALE = dict(
  batch_size=128,
  optimizer="adam",
  learning_rate=1e-3,
  log_every=50,
  eval_every=1000,
  checkpoint_every=250,
)


def base(arg: str) -> ml_collections.ConfigDict:
  """The shared keys with their defaults (one table:
  :data:`stn_jax.config_schema.SCHEMA`, where each key's check, role and
  meaning are); ``arg`` is the config's ``get_config`` argument.

  Paper protocol: SGD 0.01, x0.1 every 50k steps, 150k steps of 256; data
  on the device, augmentation drawn there, checkpoints in the background.
  """
  config = config_schema.defaults()
  config.arg = arg or ""
  return config


def apply_cpu_scale(config, *, num_steps: int, lr_decay_every: int) -> None:
  """Sets :data:`CPU_SCALE` and the config's step budget."""
  config.update(CPU_SCALE)
  config.num_steps = num_steps
  config.lr_decay_every = lr_decay_every
