"""Keys every config shares, with their defaults, and the CPU scale.

``configs/mnist.py`` and ``configs/gtsrb.py`` start from :func:`base` and
override only what differs. Import it from a config file with
``config_args.import_sibling(__file__, 'common')``.
"""

import ml_collections

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
  """The shared keys; ``arg`` is the config's ``get_config`` argument."""
  config = ml_collections.ConfigDict()
  config.arg = arg or ""
  # Data: evaluated on `dataset`'s eval_splits, trained on
  # `train_dataset` (default: `dataset`) split `train_split`.
  config.dataset = ""
  config.train_dataset = ""
  config.train_split = "train"
  config.eval_splits = ("test",)
  config.on_the_fly = ""  # a distortion drawn afresh per epoch, or ""
  # Random affine jitter of training images (stn_jax.data.augment), fresh
  # per epoch: max rotation (degrees), max relative scale change, max shift
  # (fraction of the image size). All 0: none.
  config.augment_rotation = 0.0
  config.augment_scale = 0.0
  config.augment_translate = 0.0
  config.source_dir = (
    ""  # data dir with mnist/, gtsrb/; "" = $STN_DATA_DIR or ../shared/data
  )
  # Base URL for source downloads (holding mnist/, gtsrb/); "" =
  # $STN_DATA_MIRROR or the official URLs.
  config.data_mirror = ""
  config.tfds_dir = ""  # built datasets; "" = TFDS default
  # Persistent XLA compilation cache shared by runs (e.g. ~/.cache/stn_jax/
  # xla): a rerun, a resumed run or another sweep point of the same shapes
  # skips compilation. "" = off (unless JAX_COMPILATION_CACHE_DIR is set).
  config.compilation_cache_dir = ""
  config.mean = 0.0  # inputs are (pixels / 255 - mean) / std
  config.std = 1.0
  config.num_classes = 10
  config.seed = 0
  config.model = ""
  config.model_kwargs = ml_collections.ConfigDict()
  # Optimisation.
  config.batch_size = 256
  config.num_steps = 150_000
  config.optimizer = "sgd"
  config.learning_rate = 0.01
  config.lr_decay_every = 50_000
  config.lr_decay_factor = 0.1
  # 'step': x lr_decay_factor every lr_decay_every steps (the paper's);
  # 'cosine': to 0 along half a cosine over num_steps (lr_decay_* unused).
  config.lr_schedule = "step"
  # A linear ramp of the learning rate over the first steps (0: none).
  config.warmup_steps = 0
  # Cross-entropy against (1 - s) * one-hot + s / classes (0: none).
  config.label_smoothing = 0.0
  config.localisation_lr_multiplier = 1.0
  config.grad_clip_norm = 0.0
  # Decoupled weight decay (AdamW's form, for every optimiser): the update
  # is -lr * (direction + weight_decay * param). 0: none.
  config.weight_decay = 0.0
  # Cadences.
  config.log_every = 100
  config.eval_every = 10_000
  # Transformer output on 16 fixed test images for the viz GIF, every this
  # many steps (0: only at evaluations).
  config.snapshot_every = 0
  config.checkpoint_every = 2_000
  # Execution (neither changes what is trained; both may change between
  # invocations of a run). The uint8 training split is kept on the device
  # and batches are gathered and normalised inside the step.
  config.data_on_device = True
  # With data_on_device, on_the_fly distortion and augment_* jitter are
  # drawn (jax.random) and rendered inside the step too
  # (stn_jax.data.device_augment); False: on the host, with NumPy. The two
  # draw different streams, so this is part of a run's identity.
  config.augment_on_device = True
  # Steps run per dispatch (lax.scan); the log, eval and checkpoint steps
  # stay exact.
  config.steps_per_dispatch = 1
  # How convolutions' gradients are computed: 'patches' (matrix products,
  # several times faster on a CPU; float rounding differs from XLA's),
  # 'xla' (XLA's own; what runs used before the key existed) or 'auto'
  # (patches on the CPU, xla elsewhere). stn_jax.models.convolution.
  config.conv_weight_gradient = "auto"
  # Periodic checkpoints are written in the background while training goes
  # on (a run killed during a write resumes from the checkpoint before).
  config.async_checkpoints = True
  config.max_checkpoints = 3
  config.eval_batch_size = 1000
  return config


def apply_cpu_scale(config, *, num_steps: int, lr_decay_every: int) -> None:
  """Sets :data:`CPU_SCALE` and the config's step budget."""
  config.update(CPU_SCALE)
  config.num_steps = num_steps
  config.lr_decay_every = lr_decay_every


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
