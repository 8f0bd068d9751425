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


# Issue 38's placement study (experiments/resnet_stn.py): the
# pre-activation ResNet without a transformer, then the ResNet-STN with its
# transformer on the input, after stage 1, after stage 2, on the input
# localising from the shared stem, and at all three places. Each is a
# config argument; the sweeps `placement` of configs/gtsrb.py and
# configs/mnist.py add a seed (and, for MNIST, the distortion).
PLACEMENT_VARIANTS = (
  "model=preact_resnet",
  "model=preact_resnet_stn,placement=input",
  "model=preact_resnet_stn,placement=stage1",
  "model=preact_resnet_stn,placement=stage2",
  "model=preact_resnet_stn,placement=input,shared_stem=true",
  "model=preact_resnet_stn,placement=input+stage1+stage2",
)


def check_resnet_args(args: dict) -> None:
  """Refuses ``placement`` / ``shared_stem`` config arguments given to a
  model other than preact_resnet_stn (they would be silently unused)."""
  if args["model"] == "preact_resnet_stn":
    return
  for key, default in (("placement", "input"), ("shared_stem", False)):
    if args[key] != default:
      raise ValueError(
        f"{key} is only for model=preact_resnet_stn; got {key}="
        f"{args[key]!r} with model={args['model']}."
      )


def set_preact_resnet(config, args: dict) -> None:
  """The model_kwargs of preact_resnet(_stn): the paper-size widths and,
  for the STN, ``placement`` ('+'-joined places) and ``shared_stem``."""
  if not args["model"].startswith("preact"):
    return
  config.model_kwargs.widths = (32, 64, 128)
  config.model_kwargs.blocks_per_stage = 2
  if args["model"] == "preact_resnet_stn":
    config.model_kwargs.placement = tuple(args["placement"].split("+"))
    config.model_kwargs.shared_stem = args["shared_stem"]


def apply_cpu_scale(config, *, num_steps: int, lr_decay_every: int) -> None:
  """Sets :data:`CPU_SCALE` and the config's step budget."""
  config.update(CPU_SCALE)
  config.num_steps = num_steps
  config.lr_decay_every = lr_decay_every
