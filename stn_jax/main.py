"""Train from a config file.

  python -m stn_jax.main --config=configs/mnist.py:distortion=rts,model=st_cnn \
      --workdir=DIR [--config.learning_rate=0.005 ...]

Rerunning the same command resumes from the workdir's last checkpoint. A
data error (a missing source that cannot be downloaded, a damaged built
dataset) is printed as one line, with exit status 1.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from stn_jax import train
from stn_jax.data.sources import SourceError

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (with :ARG).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and TensorBoard events go."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(argv, hooks=()):
  """The command's body; ``hooks`` are passed to ``train_and_evaluate``
  (tests inject crash hooks through it)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, hooks=hooks)
  except SourceError as error:
    sys.exit(f"python -m stn_jax.main: error: {error}")


if __name__ == "__main__":
  app.run(run)
