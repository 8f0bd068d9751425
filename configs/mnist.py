r"""Distorted MNIST (Table 1 and TC of Jaderberg et al. 2015).

Command (CPU-sized default run, the one `make train` runs):

  python -m stn_jax.main \
    --config=configs/mnist.py:distortion=rts,model=st_cnn,transform=affine,small=true \
    --workdir=workdirs/rts_st_cnn_small

Expected result: test error <= 2.0% in about 10-15 minutes on 2 CPU cores
(ST-CNN affine on RTS); the same budget with model=cnn gives a clearly
higher error (see experiments/results/default_run.md).

Paper scale (omit small): SGD 0.01, x0.1 every 50k steps, 150k steps of
batch 256. Paper: ST-CNN Aff on RTS 0.5%, CNN 0.8% (Table 1).

Arguments (typed; unknown keys or values are rejected):
  distortion: plain, r, rts, p, e, tc        (default rts)
  model: fcn, cnn, st_fcn, st_cnn, ic_st_cnn, resnet, resnet_stn,
         preact_resnet, preact_resnet_stn    (default st_cnn)
  transform: affine, projective, tps, attention (default affine; ic_st_cnn
             takes affine and projective)
  recurrences: ic_st_cnn's number of inverse compositional updates
                                             (int >= 1, default 4)
  placement: preact_resnet_stn's transformers, joined by '+': input,
             stage1, stage2, stage3          (default input)
  shared_stem: preact_resnet_stn's input transformer localises from the
             stem's features                 (default false)
  small: size everything for a 2-core CPU     (default false)
  on_the_fly: fresh training distortions each epoch from the plain digits
  seed: int
  scale: cpu, cpu_long, fast or paper: a budget and recipe (SCALES below;
         the config arguments it implies give way to explicit ones)
"""

from stn_jax import TRANSFORMS, config_args, models

common = config_args.import_sibling(__file__, "common")

# Tied to the library's lists by tests/test_configs.py.
DISTORTIONS = ("plain", "r", "rts", "p", "e", "tc")
# The registered models offered here (stn_jax.models.register_model), and
# those with a spatial transformer (they take `transform`).
MODELS = models.model_names(dataset="mnist")
TRANSFORMER_MODELS = models.model_names(dataset="mnist", transformer=True)


# Scales: ``scale=NAME`` in the config argument applies one (and the
# table scripts run their points at one): (the config arguments it implies,
# the config keys it overrides, last). What each reaches:
# experiments/results/table1.md (cpu), long_runs.md (cpu_long),
# fast_runs.md (fast).
SCALES = {
  "paper": ("", {}),  # configs/common.py: the paper's protocol
  # the configs' CPU scale (configs/common.py CPU_SCALE: Adam 1e-3, batch
  # 128, narrow networks) with a shorter budget
  "cpu": ("small=true", {"num_steps": 1000, "lr_decay_every": 800}),
  "cpu_long": (
    "on_the_fly=true",
    {
      "optimizer": "adam",
      "learning_rate": 1e-3,
      "batch_size": 256,
      "num_steps": 12_000,
      "lr_decay_every": 6_000,
      "eval_every": 2_000,
      "checkpoint_every": 500,
    },
  ),
  # chosen on the validation split: experiments/results/fast_runs.md
  "fast": (
    "on_the_fly=true",
    {
      "optimizer": "adam",
      "learning_rate": 1e-3,
      "lr_schedule": "cosine",
      "warmup_steps": 500,
      "label_smoothing": 0.1,
      "batch_size": 256,
      # cpu_long's examples (3.1M): the same budget with another recipe
      "num_steps": 12_000,
      "train_split": "train_without_validation",
      "eval_splits": ("validation", "test"),
      "eval_every": 2_000,
      "checkpoint_every": 500,
    },
  ),
}


def get_config(arg=None):
  given = arg
  arg, scale_overrides = config_args.expand_scale(arg, SCALES)
  args = config_args.parse_arg(
    arg,
    dict(
      distortion="rts",
      model="st_cnn",
      transform="affine",
      small=False,
      on_the_fly=False,
      seed=0,
      recurrences=4,
      placement="input",
      shared_stem=False,
    ),
    choices=dict(distortion=DISTORTIONS, model=MODELS, transform=TRANSFORMS),
  )
  common.check_resnet_args(args)
  config = common.base(given)
  config.dataset = f"distorted_mnist/{args['distortion']}"
  if args["on_the_fly"]:  # undistorted digits, distorted afresh each epoch
    config.train_dataset = "distorted_mnist/plain"
    config.on_the_fly = args["distortion"]
  config.seed = args["seed"]
  config.model = args["model"]
  if args["model"] in TRANSFORMER_MODELS:
    config.model_kwargs.transform = args["transform"]
  common.set_preact_resnet(config, args)
  if args["model"] == "ic_st_cnn":
    if args["transform"] not in ("affine", "projective"):
      raise ValueError(
        "transform must be affine or projective for model=ic_st_cnn; got "
        f"{args['transform']!r}."
      )
    if args["recurrences"] < 1:
      raise ValueError(f"recurrences must be >= 1; got {args['recurrences']}.")
    config.model_kwargs.recurrences = args["recurrences"]
  if args["model"] in ("st_fcn", "st_cnn", "ic_st_cnn") and args[
    "distortion"
  ] in (
    "rts",
    "tc",
  ):
    config.model_kwargs.pool_output = True  # as in the paper
  # The rest of the paper's protocol is common.base: SGD 0.01, x0.1 every
  # 50k steps, 150k steps of 256.
  if args["small"]:
    common.apply_cpu_scale(config, num_steps=3000, lr_decay_every=2000)
    if args["model"] in ("cnn", "st_cnn", "ic_st_cnn"):
      config.model_kwargs.channels = (16, 32)
    if args["model"] in ("st_cnn", "ic_st_cnn"):
      config.model_kwargs.localisation_channels = (8, 16)
      config.model_kwargs.localisation_hidden = 32
    if args["model"] in ("fcn", "st_fcn"):
      config.model_kwargs.hidden = 128
    if args["model"] in ("resnet", "resnet_stn"):
      config.model_kwargs.widths = (8, 16, 32)
      config.model_kwargs.blocks_per_stage = 1
    if args["model"].startswith("preact"):
      config.model_kwargs.widths = (16, 32, 64)
      config.model_kwargs.blocks_per_stage = 1
  config_args.set_overrides(config, scale_overrides)
  return config


# Sweeps: python -m stn_jax.sweep --config=configs/mnist.py --sweep=NAME ...

TABLE1_MODELS = (
  ("fcn", "affine"),
  ("cnn", "affine"),
  ("st_fcn", "affine"),
  ("st_fcn", "projective"),
  ("st_fcn", "tps"),
  ("st_cnn", "affine"),
  ("st_cnn", "projective"),
  ("st_cnn", "tps"),
)


def sweep_table1(add):
  """Table 1: 8 models x R, RTS, P, E x 3 seeds (96 points)."""
  for distortion in ("r", "rts", "p", "e"):
    for model, transform in TABLE1_MODELS:
      for seed in range(3):
        add(
          f"distortion={distortion},model={model},transform={transform},"
          f"seed={seed}"
        )


def sweep_tc(add):
  """The cluttered (TC) row: FCN, CNN, ST-FCN, ST-CNN (affine) x 3 seeds."""
  for model in ("fcn", "cnn", "st_fcn", "st_cnn"):
    for seed in range(3):
      add(f"distortion=tc,model={model},seed={seed}")


BEYOND_MODELS = (
  ("cnn", ""),
  ("st_cnn", ""),
  ("ic_st_cnn", "recurrences=1"),
  ("ic_st_cnn", "recurrences=2"),
  ("ic_st_cnn", "recurrences=4"),
)


def sweep_beyond(add):
  """Invariance and calibration study (experiments/beyond.py): CNN,
  ST-CNN and IC-STN with K = 1, 2, 4 recurrences on RTS (affine) and P
  (projective) x 3 seeds (30 points)."""
  for distortion, transform in (("rts", "affine"), ("p", "projective")):
    for model, extra in BEYOND_MODELS:
      for seed in range(3):
        arg = f"distortion={distortion},model={model},seed={seed}"
        if model != "cnn":
          arg += f",transform={transform}"
        add(arg + (f",{extra}" if extra else ""))


def sweep_placement(add):
  """Where the transformer goes in the pre-activation ResNet-STN on RTS
  (common.PLACEMENT_VARIANTS, affine transformers) x 3 seeds (issue 38's
  study, experiments/resnet_stn.py)."""
  for variant in common.PLACEMENT_VARIANTS:
    for seed in range(3):
      add(f"distortion=rts,{variant},seed={seed}")


def sweep_localisation_lr(add):
  """The localisation-net learning-rate multiplier on RTS ST-CNN (small)."""
  for multiplier in (1.0, 0.1, 0.01):
    add(
      "distortion=rts,model=st_cnn,small=true",
      localisation_lr_multiplier=multiplier,
    )
