"""A workdir belongs to one run: config checks, the lock, unreadable and
damaged checkpoints, a full disk, clean command-line errors, sweeps."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import MNIST, REPO, tiny, write_mnist_config_with_sweep

import stn_jax
from stn_jax import checkpointing, sweep, train, workdir


def small(tfds_dir, arg="model=cnn,small=true", **overrides):
  return tiny(MNIST.get_config(arg), tfds_dir, **overrides)


@pytest.mark.parametrize(
  "change,field",
  [
    ({"model": "fcn"}, "model: 'cnn' -> 'fcn'"),
    ({"seed": 3}, "seed: 0 -> 3"),
    ({"learning_rate": 0.5}, "learning_rate: 0.001 -> 0.5"),
  ],
)
def test_another_config_in_a_workdir_is_refused(
  tiny_tfds, tmp_path, change, field
):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  before = (tmp_path / "metrics.jsonl").read_text()
  other = small(tiny_tfds)
  for key, value in change.items():
    other[key] = value
  with pytest.raises(workdir.WorkdirError, match="Differing fields") as error:
    train.train_and_evaluate(other, str(tmp_path))
  assert field in str(error.value) and "--overwrite" in str(error.value)
  assert (tmp_path / "metrics.jsonl").read_text() == before  # untouched
  assert checkpointing.Checkpoints(tmp_path).all_steps() == [2]


def test_overwrite_replaces_the_old_run(tiny_tfds, tmp_path):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  other = small(tiny_tfds, "model=fcn,small=true")
  train.train_and_evaluate(other, str(tmp_path), overwrite=True)
  assert stn_jax.restore(str(tmp_path)).config.model == "fcn"
  steps = [
    json.loads(line)["step"]
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert steps == [1, 2, 2]  # train 1, train 2, final eval: one run only


def test_safe_fields_extend_a_run(tiny_tfds, tmp_path, capsys):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  longer = small(tiny_tfds, num_steps=4, log_every=2)
  train.train_and_evaluate(longer, str(tmp_path))
  assert "resumed from step 2" in capsys.readouterr().out
  assert stn_jax.restore(str(tmp_path)).step == 4


def test_configs_of_older_versions_compare_with_implicit_defaults():
  config = MNIST.get_config("small=true")
  saved = json.loads(config.to_json_best_effort())
  for key in ("train_dataset", "mean", "std", "snapshot_every"):
    del saved[key]  # not recorded before they were common keys
  assert workdir.config_differences(saved, config) == []
  saved["train_split"] = "validation"
  assert workdir.config_differences(saved, config) == [
    "train_split: 'validation' -> 'train'"
  ]


def test_a_second_process_is_kept_out(tiny_tfds, tmp_path):
  busy = pytest.raises(workdir.WorkdirError, match=f"pid {os.getpid()}")
  with workdir.WorkdirLock(str(tmp_path)), busy:
    train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))  # free again


HOLD_LOCK = """
import os, sys, time
from stn_jax import workdir
with workdir.WorkdirLock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(60)
"""


def test_the_lock_of_a_killed_process_is_taken_over(tiny_tfds, tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
    stdout=subprocess.PIPE,
    text=True,
    cwd=REPO,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir.WorkdirError, match=f"pid {holder.pid}"):
      train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  lines = []
  train.fit([small(tiny_tfds)], str(tmp_path), log=lines.append)
  assert any(f"pid {holder.pid}" in line and "gone" in line for line in lines)


def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_finishes(
  tiny_tfds, tmp_path
):
  config = small(tiny_tfds, num_steps=8, checkpoint_every=4)
  train.train_and_evaluate(config, str(tmp_path))
  for path in (tmp_path / "checkpoints" / "8" / "model").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  config.num_steps = 10
  with pytest.warns(UserWarning, match="checkpoint 8 could not be restored"):
    train.train_and_evaluate(config, str(tmp_path))
  aside = list((tmp_path / "checkpoints_unreadable").iterdir())
  assert [p.name.split("-")[0] for p in aside] == ["8"]
  assert checkpointing.Checkpoints(tmp_path).all_steps() == [4, 8, 10]
  assert stn_jax.restore(str(tmp_path)).step == 10


def test_a_bit_flip_is_caught_by_the_checksums(tiny_tfds, tmp_path):
  config = small(tiny_tfds, num_steps=4, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path))
  files = sorted(
    p
    for p in (tmp_path / "checkpoints" / "4" / "model").rglob("*")
    if p.is_file() and p.stat().st_size > 64
  )
  data = bytearray(files[-1].read_bytes())
  data[len(data) // 2] ^= 0x01  # one bit
  files[-1].write_bytes(bytes(data))
  with pytest.warns(UserWarning, match="fails its sha256 check"):
    restored = stn_jax.restore(str(tmp_path))
  assert restored.step == 2  # not the damaged step 4
  predictions = restored.predict(np.zeros((2, 42, 42, 1), np.uint8))
  assert np.all(np.isfinite(predictions))


def test_a_full_disk_is_one_clear_error_and_older_checkpoints_stay(
  tiny_tfds, tmp_path, monkeypatch
):
  config = small(tiny_tfds, num_steps=6, checkpoint_every=2)
  real_save = checkpointing.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpointing.CheckpointError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert "could not write checkpoint 4" in message
  assert "No space left on device" in message
  assert "earlier checkpoints (2) are intact" in message
  monkeypatch.undo()
  assert stn_jax.restore(str(tmp_path)).step == 2


def run_main(*args):
  return subprocess.run(
    [sys.executable, "-m", "stn_jax.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "args,status,message",
  [
    (["--config.nosuch=1"], 2, "--config.nosuch: no such config field"),
    (["--config.max_checkpoints=0"], 1, "max_checkpoints must be a positive"),
    (["--config.lr_decay_factor=0.0"], 1, "lr_decay_factor must be a finite"),
    (["--config.learning_rate=inf"], 1, "learning_rate must be a finite"),
    (["--config.num_steps=-5"], 1, "num_steps must be a positive int"),
  ],
)
def test_command_line_errors_are_one_line(tmp_path, args, status, message):
  result = run_main(
    "--config=configs/mnist.py:small=true", f"--workdir={tmp_path}", *args
  )
  assert result.returncode == status
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 2
  assert not (tmp_path / "checkpoints").exists()


def test_a_changed_set_never_reports_old_results(tiny_tfds, tmp_path):
  config_file = write_mnist_config_with_sweep(
    tmp_path, 'def sweep_tiny(add):\n  add("model=cnn,small=true")\n'
  )
  overrides = dict(
    tfds_dir=str(tiny_tfds), batch_size=8, eval_batch_size=8, num_steps=2
  )
  quiet = dict(log=lambda *a: None)
  first = sweep.run_sweep(
    str(config_file), "tiny", str(tmp_path / "s"), overrides=overrides, **quiet
  )
  assert [r["status"] for r in first] == ["finished"]
  again = sweep.run_sweep(
    str(config_file), "tiny", str(tmp_path / "s"), overrides=overrides, **quiet
  )
  assert [r["status"] for r in again] == ["skipped"]
  changed = sweep.run_sweep(
    str(config_file),
    "tiny",
    str(tmp_path / "s"),
    overrides={**overrides, "learning_rate": 0.1},
    **quiet,
  )
  assert [r["status"] for r in changed] == ["failed"]
  assert "learning_rate: 0.001 -> 0.1" in changed[0]["error"]
  assert "results are not this point's" in changed[0]["error"]
  # The step budget counts too: safe to change when extending one run, but
  # a point finished at 2 steps is not a 3-step sweep's result.
  longer = sweep.run_sweep(
    str(config_file),
    "tiny",
    str(tmp_path / "s"),
    overrides={**overrides, "num_steps": 3},
    **quiet,
  )
  assert [r["status"] for r in longer] == ["failed"]
  assert "num_steps: 2 -> 3" in longer[0]["error"]
  # Neither refusal touched the finished point's record.
  back = sweep.run_sweep(
    str(config_file), "tiny", str(tmp_path / "s"), overrides=overrides, **quiet
  )
  assert [r["status"] for r in back] == ["skipped"]
  assert back[0]["end_time"] == first[0]["end_time"]


def test_a_signal_between_points_stops_the_sweep(tmp_path):
  before = signal.getsignal(signal.SIGTERM)

  def train_fn(config, point_dir):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives after the point's run
    return {"test_error": 0.5}

  records = sweep.run_sweep(
    str(REPO / "configs" / "mnist.py"),
    "tc",
    str(tmp_path),
    train_fn=train_fn,
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["finished", "interrupted"]
  assert records[1]["signal"] == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before  # handler restored
