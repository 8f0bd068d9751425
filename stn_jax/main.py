"""Train from a config file.

  python -m stn_jax.main --config=configs/mnist.py:distortion=rts,model=st_cnn \\
      --workdir=DIR [--config.learning_rate=0.005 ...] [--overwrite]

Several processes (hosts) train one run when each is started with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or
``--distributed=auto`` where jax.distributed finds them itself: SLURM, Open
MPI, TPU slices); see :mod:`stn_jax.distributed`.

Rerunning the same command resumes from the workdir's last checkpoint. A
workdir holding a run of another config is refused (``--overwrite`` deletes
that run first). SIGTERM and Ctrl-C (SIGINT) save a checkpoint and exit with
status 143 and 130. Bad input (flags, config values, missing data, a busy
or mismatched workdir, a full disk) ends in one line on stderr and status 1
(2 for flag errors), without a traceback.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from stn_jax import checkpointing, cli, distributed, hooks, train, workdir
from stn_jax.data.sources import SourceError

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (with :ARG).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and TensorBoard events go."
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "If the workdir holds a run of another config, delete it and start this one.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  "",
  "Multi-process runs: HOST:PORT of process 0's coordinator.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-process runs: how many processes."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-process runs: this process's index."
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "off",
  ["off", "auto"],
  "auto: jax.distributed finds the coordinator, the process count and id "
  "(SLURM, Open MPI, TPU slices, Kubernetes).",
)
flags.mark_flags_as_required(["config", "workdir"])

# Errors that are the user's input, reported in one line.
USER_ERRORS = (
  ValueError,
  OSError,  # a missing, unwritable or full place (cli.error_line)
  SourceError,
  hooks.TrainingDiverged,
  checkpointing.CheckpointError,
  checkpointing.CheckpointMismatch,
  workdir.WorkdirError,
)


def run(argv, hooks=()) -> int:
  """The command's body after flag parsing; returns the exit status.
  ``hooks`` are passed to ``train_and_evaluate`` (tests inject crash hooks
  through it)."""
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}.")
  if not _WORKDIR.value.strip():
    raise ValueError("--workdir is empty; give the run's folder.")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cli.quiet_orbax_errors()  # its failures reach us and get one line
  distributed.initialize(
    _COORDINATOR.value,
    _NUM_PROCESSES.value,
    _PROCESS_ID.value,
    auto=_DISTRIBUTED.value == "auto",
  )
  results = train.train_and_evaluate(
    _CONFIG.value, _WORKDIR.value, hooks=hooks, overwrite=_OVERWRITE.value
  )
  return exit_status(results)


def exit_status(results: dict) -> int:
  """The command's exit status for a run's ``results``: 0 if it finished,
  else the signal's that stopped it (one map for every command:
  :data:`stn_jax.cli.EXIT_STATUS`)."""
  if "interrupted_at_step" in results:
    return cli.exit_status(results.get("signal"))
  return cli.EXIT_OK


def main(argv=None, hooks=()) -> int:
  """Parses flags, runs, and turns bad input into one line on stderr."""
  argv = list(sys.argv if argv is None else argv)
  prog = "python -m stn_jax.main"
  try:
    argv = flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001 - flag and --config.x errors
    message = str(error).strip().strip("\"'")
    if isinstance(error, (AttributeError, KeyError)):  # --config.<unknown>
      message = f"--config.{message}: no such config field"
    elif "Failed loading config file" in message:  # a mistyped path
      message = cli.error_line(error)
    elif "Traceback (most recent call last)" in message:  # get_config raised
      lines = [line.strip() for line in message.splitlines() if line.strip()]
      message = f"{lines[0]} {lines[-1]}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    print("Pass --helpshort for the flags.", file=sys.stderr)
    return cli.EXIT_USAGE
  try:
    return run(argv, hooks=hooks)
  except USER_ERRORS as error:
    print(f"{prog}: error: {cli.error_line(error)}", file=sys.stderr)
    return cli.EXIT_FAILED
  except KeyboardInterrupt:  # Ctrl-C outside the training loop
    print(f"{prog}: interrupted (nothing to save yet).", file=sys.stderr)
    return cli.exit_status("SIGINT")


if __name__ == "__main__":
  sys.exit(main())
