"""Two CPU processes on localhost train one run (jax.distributed, gloo):
the same run as one process with the same global batch, one set of files
and metric lines, SIGTERM to one stopping both at the same step, and a
kill -9 of both resumed."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import MNIST, tiny

import stn_jax
from stn_jax import distributed, train
from stn_jax.data import datasets

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
CONFIG = "configs/mnist.py:distortion=rts,model=st_cnn,small=true"
SETTINGS = {
  "batch_size": 8,
  "eval_batch_size": 8,
  "num_steps": 8,
  "log_every": 2,
  "eval_every": 1000,
  "checkpoint_every": 4,
  "async_checkpoints": False,
}


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tfds_dir, workdir, processes=2, signals=None, **overrides):
  """Runs ``processes`` training processes (``signals``: {process id:
  (step, signal name)}) to their end; returns [(returncode, stdout,
  stderr)] by process id."""
  settings = {**SETTINGS, "tfds_dir": str(tfds_dir), **overrides}
  port = _port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  running = []
  for pid in range(processes):
    command = [
      sys.executable,
      str(TESTS / "train_with_signal.py"),
      f"--config={CONFIG}",
      f"--workdir={workdir}",
      *(f"--config.{k}={v}" for k, v in settings.items()),
    ]
    if processes > 1:
      command += [
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={processes}",
        f"--process_id={pid}",
      ]
    if signals and pid in signals:
      step, name = signals[pid]
      command += [f"--signal_at_step={step}", f"--signal={name}"]
    running.append(
      subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  out = []
  for process in running:
    try:
      stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for p in running:
        p.kill()
      raise
    out.append((process.returncode, stdout, stderr))
  return out


def _params(workdir):
  return jax.tree.leaves(stn_jax.restore(str(workdir)).model)


def _metric_steps(workdir):
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").open()]
  return [r["step"] for r in rows if "train_loss" in r]


@pytest.fixture(scope="module")
def straight(tiny_tfds, tmp_path_factory):
  """The uninterrupted 2-process run."""
  workdir = tmp_path_factory.mktemp("two") / "run"
  out = _launch(tiny_tfds, workdir)
  for code, _, stderr in out:
    assert code == 0, stderr[-3000:]
  return workdir, out


def test_two_processes_train_the_one_process_run(tiny_tfds, tmp_path, straight):
  workdir, out = straight
  # The one-process run of the same config, in this (one-device) process.
  config = tiny(
    MNIST.get_config("distortion=rts,model=st_cnn,small=true"),
    tiny_tfds,
    **{k: v for k, v in SETTINGS.items() if k != "tfds_dir"},
  )
  train.train_and_evaluate(config, str(tmp_path / "one"))
  # One set of files and metric lines, written and printed by process 0.
  assert (
    _metric_steps(workdir) == _metric_steps(tmp_path / "one") == [2, 4, 6, 8]
  )
  assert "2 device(s) in 2 processes" in out[0][1]
  assert "step 8/8" in out[0][1] and "final test error" in out[0][1]
  # (gloo itself prints a line when it connects)
  quiet = [x for x in out[1][1].splitlines() if not x.startswith("[Gloo]")]
  assert quiet == [], out[1][1]
  # The same run: the gradient of the global batch is summed across the
  # processes, in another order than in one process (float rounding).
  for a, b in zip(_params(workdir), _params(tmp_path / "one")):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  test = datasets.load_arrays(
    "distorted_mnist/rts", "test", tfds_dir=str(tiny_tfds)
  )
  predicted = [
    stn_jax.restore(str(w)).predict(test["image"])
    for w in (workdir, tmp_path / "one")
  ]
  # Logits within 1e-5 (they differ by about 1e-7), the same classes.
  np.testing.assert_allclose(predicted[0], predicted[1], atol=1e-5)
  np.testing.assert_array_equal(
    predicted[0].argmax(-1), predicted[1].argmax(-1)
  )


def test_sigterm_to_one_stops_both_and_kill_9_of_both_resumes(
  tiny_tfds, tmp_path, straight
):
  workdir = tmp_path / "run"
  # 1. Process 1 alone gets SIGTERM after step 3; the processes compare
  # notes at every log step (2, 4, ...), so both stop after step 4 and
  # save it. Batches are made by the host pipeline here (each process its
  # own rows); they are bitwise the device-gathered ones of the straight
  # run.
  stopped = _launch(
    tiny_tfds, workdir, signals={1: (3, "SIGTERM")}, data_on_device=False
  )
  assert [code for code, _, _ in stopped] == [143, 143], stopped[0][2][-2000:]
  assert "SIGTERM: saved a checkpoint at step 4 and stopped." in stopped[0][1]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4]
  # 2. Resumed, then both killed with -9 after step 6 (no checkpoint
  # there: checkpoint_every is 4).
  killed = _launch(
    tiny_tfds, workdir, signals={0: (6, "SIGKILL"), 1: (6, "SIGKILL")}
  )
  # Each kills itself after step 6; a process whose peer died first may be
  # taken down by JAX's coordination service instead (SIGABRT).
  assert killed[0][0] == -9 and killed[1][0] in (-9, -6), killed[1][2][-2000:]
  assert "resumed from step 4" in killed[0][1]
  # 3. The rerun resumes from 4 again and ends bitwise equal to the
  # uninterrupted run.
  resumed = _launch(tiny_tfds, workdir)
  for code, _, stderr in resumed:
    assert code == 0, stderr[-3000:]
  assert "resumed from step 4" in resumed[0][1]
  for a, b in zip(_params(straight[0]), _params(workdir)):
    np.testing.assert_array_equal(a, b)


def test_distributed_arguments_are_checked():
  with pytest.raises(ValueError, match="--coordinator_address must be"):
    distributed.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match="--process_id must be an int in"):
    distributed.initialize("localhost:1234", 2, 2)
  with pytest.raises(ValueError, match="--num_processes must be"):
    distributed.initialize("localhost:1234", 0, 0)
  with pytest.raises(ValueError, match="finds the coordinator"):
    distributed.initialize("localhost:1234", 2, 0, auto=True)
  assert distributed.initialize() is False  # one process: nothing to do
  assert distributed.local_rows(None, (8,)) == slice(0, 8)
