"""Issue 33 ("Careless hands 2"): a careless or unlucky user's cases, each
held here: nothing silently wrong, nothing lost, one clear line."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
  MNIST,
  REPO,
  pythonpath,
  tiny,
  write_mnist_config_with_sweep,
)

import stn_jax
from stn_jax import (
  checkpointing,
  cli,
  evaluate,
  hooks,
  sweep,
  train,
  viz,
  workdir,
)
from stn_jax.data import download, sources
from stn_jax.data.sources import SourceError
from stn_jax.sweep import launchers as sweep_launchers
from stn_jax.sweep import records as sweep_records

THREE = (
  "def sweep_tiny(add):\n"
  "  for seed in (0, 1, 2):\n"
  "    add('model=cnn,small=true', seed=seed)\n"
)
OTHER = "def sweep_other(add):\n  add('model=fcn,small=true')\n"


def quiet(*_):
  pass


def fake_train(config, point_dir):
  """A point's run without training: its config.json and a result."""
  os.makedirs(point_dir, exist_ok=True)
  with open(os.path.join(point_dir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  return {"test_error": 0.25}


@pytest.fixture
def sweep_config(tmp_path):
  return str(write_mnist_config_with_sweep(tmp_path, THREE + OTHER))


def run(config, workdir, **kwargs):
  kwargs.setdefault("log", quiet)
  return sweep.run_sweep(
    config,
    kwargs.pop("name", "tiny"),
    str(workdir),
    train_fn=fake_train,
    **kwargs,
  )


def table_statuses(workdir):
  rows = (workdir / "results.md").read_text().splitlines()[2:]
  return [row.split(" | ")[3] for row in rows]


# Case 1: a changed --set is not shown as finished, in place or via --archive.
def test_a_changed_set_is_never_listed_as_finished(sweep_config, tmp_path):
  work, archive = tmp_path / "s", tmp_path / "archive"
  first = run(sweep_config, work, archive=str(archive))
  assert [r["status"] for r in first] == ["finished"] * 3
  changed = run(sweep_config, work, overrides={"learning_rate": 0.1})
  assert [r["status"] for r in changed] == ["failed"] * 3
  statuses = table_statuses(work)
  assert all(s.startswith("failed: ") for s in statuses), statuses
  assert "25.00%" not in (work / "results.md").read_text()  # not its results
  lines = (work / "results.jsonl").read_text().splitlines()
  assert all(json.loads(line)["status"] == "failed" for line in lines)
  # --collect agrees.
  collected = run(
    sweep_config, work, overrides={"learning_rate": 0.1}, report_only=True
  )
  assert [r["status"] for r in collected] == ["failed"] * 3
  # Through the archive into a new workdir: the old points are not restored
  # as this sweep's; they train afresh with the new config.
  fresh = tmp_path / "fresh"
  again = run(
    sweep_config, fresh, overrides={"learning_rate": 0.1}, archive=str(archive)
  )
  assert [r["status"] for r in again] == ["finished"] * 3
  saved = json.loads((fresh / again[0]["name"] / "config.json").read_text())
  assert saved["learning_rate"] == 0.1
  # The unchanged sweep still restores and skips them.
  back = run(sweep_config, tmp_path / "back", archive=str(archive))
  assert [r["status"] for r in back] == ["skipped"] * 3


# Case 10: a point refused before training is printed, not only tabulated.
def test_refused_points_are_printed(sweep_config, tmp_path):
  run(sweep_config, tmp_path / "s")
  lines = []
  run(
    sweep_config,
    tmp_path / "s",
    overrides={"learning_rate": 0.1},
    log=lines.append,
  )
  failed = [line for line in lines if "failed" in line]
  assert len(failed) == 3
  assert all("learning_rate: 0.001 -> 0.1" in line for line in failed)
  lines = []
  run(sweep_config, tmp_path / "t", overrides={"nosuch": 1}, log=lines.append)
  assert sum("override 'nosuch': no such config field" in x for x in lines) == 3


# Case 4: --collect with the wrong --sweep, or on a misspelled folder.
def test_collect_refuses_another_sweeps_folder_and_a_missing_one(
  sweep_config, tmp_path
):
  work = tmp_path / "s"
  run(sweep_config, work)
  before = (work / "results.md").read_text()
  with pytest.raises(ValueError, match="holds none of the 1 points of sweep"):
    run(sweep_config, work, name="other", report_only=True)
  assert (work / "results.md").read_text() == before
  with pytest.raises(ValueError, match="is not a folder"):
    run(sweep_config, tmp_path / "typo", report_only=True)
  assert not (tmp_path / "typo").exists()
  # At the command line: one line, exit 1.
  status = sweep.main(
    [
      f"--config={sweep_config}",
      "--sweep=other",
      f"--workdir={work}",
      "--collect",
    ]
  )
  assert status == 1
  assert (work / "results.md").read_text() == before


# Case 4 again (found by experiments/hostile_cases.py): --collect on a
# folder that holds no sweep point at all (a training run's workdir).
def test_collect_refuses_a_folder_without_points_and_prints_why(
  sweep_config, tmp_path
):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="holds no sweep point folder but"):
    run(sweep_config, run_dir, report_only=True)
  assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
  # Collecting points that are not the plan's result prints why, as a
  # training rerun does (case 10), not only inside results.md.
  work = tmp_path / "s"
  run(sweep_config, work)
  lines = []
  run(
    sweep_config,
    work,
    overrides={"learning_rate": 0.1},
    report_only=True,
    log=lines.append,
  )
  failed = [line for line in lines if " failed: " in line]
  assert len(failed) == 3
  assert all("learning_rate: 0.001 -> 0.1" in line for line in failed)


def test_max_concurrent_below_one_is_refused():
  for value in (0, -1, True, 1.5):
    with pytest.raises(
      ValueError, match="--max_concurrent must be a positive int"
    ):
      sweep_launchers.make_launcher("local", max_concurrent=value)
  sweep_launchers.make_launcher("ray", max_concurrent=2)  # starts no Ray


# Case 9: a truncated record.json names its file and blocks nothing else.
def test_a_truncated_record_names_the_file_and_blocks_nothing(
  sweep_config, tmp_path
):
  work = tmp_path / "s"
  first = run(sweep_config, work)
  damaged = work / first[1]["name"] / "record.json"
  damaged.write_text(damaged.read_text()[:40])
  collected = run(sweep_config, work, report_only=True)
  assert [r["status"] for r in collected] == ["skipped", "damaged", "skipped"]
  assert str(damaged) in collected[1]["error"]
  assert "| damaged: " in (work / "results.md").read_text()
  # A shard that does not own the point runs; the owner trains it again.
  other = run(sweep_config, work, shard=(0, 3))
  assert [r["status"] for r in other] == ["skipped"]
  owner = run(sweep_config, work, shard=(1, 3))
  assert [r["status"] for r in owner] == ["finished"]
  assert sweep_records.read_record(str(damaged.parent))["status"] == "finished"


# ---------------------------------------------------------------------------
# Workdirs and checkpoints (tiny training runs).


def small(tfds_dir, arg="model=cnn,small=true", **overrides):
  return tiny(MNIST.get_config(arg), tfds_dir, **overrides)


# Case 2: checkpoints without a config.json are not claimed by another run.
def test_checkpoints_without_config_json_are_refused(tiny_tfds, tmp_path):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  (tmp_path / "config.json").unlink()
  other = small(tiny_tfds, seed=3, learning_rate=0.5)
  with pytest.raises(workdir.WorkdirError, match="but no config.json"):
    train.train_and_evaluate(other, str(tmp_path))
  assert not (tmp_path / "config.json").exists()  # nothing claimed
  assert checkpointing.saved_steps(str(tmp_path)) == [2]
  train.train_and_evaluate(other, str(tmp_path), overwrite=True)
  assert stn_jax.restore(str(tmp_path)).config.seed == 3


# Case 9: a damaged config.json names itself, and --overwrite clears it.
def test_a_damaged_config_json_is_named_and_overwrite_clears_it(
  tiny_tfds, tmp_path
):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": "cn')
  with pytest.raises(workdir.WorkdirError, match="config.json is damaged"):
    train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path), overwrite=True)
  assert json.loads((tmp_path / "config.json").read_text())["model"] == "cnn"


# Case 3: intact checkpoints of other parameter shapes are a refusal.
def test_checkpoints_of_other_shapes_are_refused_not_moved(tiny_tfds, tmp_path):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  # A code change: the same config now builds a narrower first layer
  # (here: config.json edited to say so, so that the config check passes).
  narrower = small(tiny_tfds)
  narrower.model_kwargs.channels = (8, 32)
  saved = json.loads((tmp_path / "config.json").read_text())
  saved["model_kwargs"]["channels"] = [8, 32]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(checkpointing.CheckpointMismatch) as error:
    train.train_and_evaluate(narrower, str(tmp_path))
  assert "(16,) -> (8,)" in str(error.value)
  assert "Nothing was moved" in str(error.value)
  assert not (tmp_path / "checkpoints_unreadable").exists()
  assert checkpointing.saved_steps(str(tmp_path)) == [2]


# Case 5: a partial last line of metrics.jsonl is cut off before appending.
def test_a_partial_metrics_line_is_repaired_on_resume(tiny_tfds, tmp_path):
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))
  metrics = tmp_path / "metrics.jsonl"
  whole = metrics.read_text()
  metrics.write_text(whole + '{"step": 3, "train_lo')  # killed mid-write
  with pytest.warns(UserWarning, match="removed a partial last line"):
    train.train_and_evaluate(small(tiny_tfds, num_steps=4), str(tmp_path))
  lines = metrics.read_text().splitlines()
  records = [json.loads(line) for line in lines]  # every line is JSON
  assert [r["step"] for r in records][-3:] == [3, 4, 4]
  assert metrics.read_text().startswith(whole)
  assert len(viz._errors(str(tmp_path))) == 2


# Case 5 (viz) and case 12: a damaged line or no evaluation yet names the
# file, before any figure is written.
def test_viz_names_the_metrics_file_and_writes_nothing_first(
  tiny_tfds, tmp_path
):
  run = tmp_path / "run"
  train.train_and_evaluate(small(tiny_tfds), str(run))
  metrics = run / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  metrics.write_text("\n".join(lines[:1] + ['{"step": 2, "te'] + lines[1:]))
  with pytest.raises(ValueError, match="metrics.jsonl line 2 is not a JSON"):
    viz.make_figures(str(run), str(tmp_path / "out"))
  unevaluated = [line for line in lines if "test_error" not in line]
  metrics.write_text("\n".join(unevaluated) + "\n")
  with pytest.raises(ValueError, match="metrics.jsonl has no test_error yet"):
    viz.make_figures(str(run), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# A really full disk (case 7): a small tmpfs filled by the test.


@pytest.fixture
def small_disk(tmp_path):
  """A 64 MiB tmpfs mounted at tmp_path/disk (root only; skipped with the
  reason where it cannot be mounted), unmounted afterwards."""
  disk = tmp_path / "disk"
  disk.mkdir()
  result = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
    capture_output=True,
    text=True,
  )
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(folder, name="filler"):
  """Fills the filesystem of ``folder`` up to its last byte."""
  with open(os.path.join(folder, name), "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0" * (1 << 16))
    except OSError as error:
      assert error.errno == errno.ENOSPC
  with open(os.path.join(folder, name + "_small"), "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0")
    except OSError:
      pass


class FillDiskAt(hooks.Hook):
  def __init__(self, step, folder):
    self.step, self.folder = step, folder

  def after_step(self, context):
    if context.step == self.step:
      fill(self.folder)


def test_a_full_disk_is_a_checkpoint_error_and_a_fresh_run_one_line(
  tiny_tfds, small_disk
):
  work = small_disk / "run"
  config = small(
    tiny_tfds,
    num_steps=6,
    checkpoint_every=2,
    log_every=1000,
    async_checkpoints=False,
  )
  with pytest.raises(checkpointing.CheckpointError) as error:
    train.train_and_evaluate(
      config, str(work), hooks=[FillDiskAt(3, small_disk)]
    )
  message = str(error.value)
  assert "could not write checkpoint 4" in message
  assert "No space left on device" in message
  assert "earlier checkpoints (2) are intact" in message
  assert stn_jax.restore(str(work)).step == 2
  # A fresh run on the full disk (filled again: the failed save's
  # temporary files were removed): one line at the command line.
  fill(small_disk, "filler_again")
  result = run_main(
    "--config=configs/mnist.py:model=cnn,small=true",
    f"--workdir={small_disk / 'fresh'}",
    f"--config.tfds_dir={tiny_tfds}",
  )
  assert result.returncode == 1, result.stderr
  assert "No space left on device" in result.stderr
  # It names the file that could not be written (the workdir's lock).
  assert str(small_disk / "fresh") in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  # Space freed: the same command resumes from checkpoint 2 and finishes.
  os.remove(small_disk / "filler")
  os.remove(small_disk / "filler_again")
  train.train_and_evaluate(config, str(work))
  assert stn_jax.restore(str(work)).step == 6


def test_full_disk_writes_name_their_file(small_disk):
  """A failed write names no file (its OSError has no filename): the
  sweep's records and the workdir lock name theirs."""
  from stn_jax import workdir as workdir_lib

  fill(small_disk)
  path = small_disk / "point" / "record.json"
  (small_disk / "point").mkdir()
  with pytest.raises(OSError) as error:
    sweep_records.write_json_atomically(str(path), "x" * 100_000)
  assert error.value.filename == str(path)
  assert str(path) in cli.error_line(error.value)
  assert sorted(os.listdir(small_disk / "point")) == []
  with pytest.raises(OSError) as error:
    workdir_lib.try_lock(str(small_disk / "point" / ".lock"), "x" * 100_000)
  assert error.value.filename == str(small_disk / "point" / ".lock")


def test_tfds_not_enough_disk_space_is_a_full_disk():
  # TFDS checks the space before a build and raises an OSError without an
  # errno; the command lines say what to do about it.
  error = OSError("Not enough disk space. Needed: Unknown size")
  assert cli.is_full_disk(error)
  line = cli.error_line(error)
  assert line.startswith("no space left on device (Not enough disk space")
  assert "free space" in line


def run_main(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "stn_jax.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": pythonpath(REPO), **(env or {})},
  )


# ---------------------------------------------------------------------------
# Filesystem errors (case 6): one line naming the path and the way out.


def test_error_line_names_the_file_and_the_way_out():
  line = cli.error_line(
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "/a/f")
  )
  assert line.startswith("/a/f: Not a directory; a part of that path is a file")
  line = cli.error_line(OSError(errno.EROFS, "Read-only file system", "/ro"))
  assert (
    line
    == "/ro: Read-only file system; that filesystem is read-only: "
    + ("choose a writable folder.")
  )
  full = ValueError("RESOURCE_EXHAUSTED: Failed writing: x\nmore")
  assert cli.error_line(full).startswith("no space left on device (RESOURCE")
  assert "\n" not in cli.error_line(full)
  damaged = json.JSONDecodeError("Unterminated string", '{"a', 1)
  assert "a JSON file is damaged" in cli.error_line(damaged)


@pytest.fixture
def read_only_disk(small_disk):
  """``(disk, make_read_only)``: a small tmpfs and a function that remounts
  it read-only."""

  def make_read_only():
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)

  return small_disk, make_read_only


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_an_unusable_workdir_is_one_line(tmp_path, read_only_disk, where):
  disk, make_read_only = read_only_disk
  (tmp_path / "f").write_text("")
  workdir = {
    "file": tmp_path / "f",
    "under_file": tmp_path / "f" / "run",
    "read_only": disk / "run",
  }[where]
  if where == "read_only":
    make_read_only()
  result = run_main(
    "--config=configs/mnist.py:small=true", f"--workdir={workdir}"
  )
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert str(workdir) in result.stderr or str(tmp_path / "f") in result.stderr


def test_a_mistyped_config_path_is_one_line(tmp_path):
  result = run_main(
    "--config=configs/mnst.py:small=true", f"--workdir={tmp_path}"
  )
  assert result.returncode in (1, 2)
  lines = result.stderr.strip().splitlines()
  assert lines[0].startswith("python -m stn_jax.main: error: --config: cannot")
  assert "configs/mnst.py" in lines[0] and len(lines) <= 2  # + a --help hint


def test_a_read_only_dataset_folder_trains_and_viz_refuses_in_one_line(
  tiny_tfds, tmp_path, read_only_disk
):
  disk, make_read_only = read_only_disk
  shutil.copytree(tiny_tfds, disk / "tfds")
  run = disk / "run"
  train.train_and_evaluate(small(tiny_tfds), str(run))
  make_read_only()
  # A built dataset in a read-only folder is read without its build lock.
  results = train.train_and_evaluate(
    small(disk / "tfds"), str(tmp_path / "elsewhere")
  )
  assert "test_error" in results
  # viz into the read-only workdir: one line, status 1.
  assert viz.main([f"--workdir={run}", "--figures=transformer"]) == 1


def test_a_sweep_archive_that_is_a_file_is_refused_first(
  sweep_config, tmp_path
):
  (tmp_path / "archive").write_text("")
  with pytest.raises(ValueError, match="--archive .* is a file, not a folder"):
    run(sweep_config, tmp_path / "s", archive=str(tmp_path / "archive"))
  assert not (tmp_path / "s").exists()


def test_a_damaged_gzip_from_a_mirror_is_the_checksum_message(tmp_path):
  import gzip

  data = bytearray(gzip.compress(bytes(range(256)) * 64))
  data[20:40] = b"\xff" * 20  # damaged deflate data behind a valid header
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(bytes(data))
  verify = sources._verify_mnist("train-images-idx3-ubyte", None, "MIRROR")
  with pytest.raises(SourceError, match="is not a valid gzip file"):
    verify(path)


# ---------------------------------------------------------------------------
# Case 8: config values refused before anything is written; no unbounded
# evaluation batch.


def test_a_batch_larger_than_the_split_leaves_no_config_behind(
  tiny_tfds, tmp_path
):
  with pytest.raises(ValueError, match="larger than the"):
    train.train_and_evaluate(small(tiny_tfds, batch_size=100000), str(tmp_path))
  assert not (tmp_path / "config.json").exists()
  # The corrected rerun is not refused as "another config".
  train.train_and_evaluate(small(tiny_tfds), str(tmp_path))


@pytest.mark.parametrize("seed", [-1, 2**31, 2**40])
def test_a_seed_out_of_range_is_refused_before_anything(
  tiny_tfds, tmp_path, seed
):
  with pytest.raises(ValueError, match=r"config.seed must be an int in \[0"):
    train.train_and_evaluate(small(tiny_tfds, seed=seed), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_huge_eval_batch_evaluates_in_one_split_sized_batch(
  tiny_tfds, tmp_path
):
  results = train.train_and_evaluate(
    small(tiny_tfds, eval_batch_size=10**8), str(tmp_path)
  )
  again = train.train_and_evaluate(small(tiny_tfds), str(tmp_path / "same"))
  assert results["test_error"] == again["test_error"]


# ---------------------------------------------------------------------------
# Case 11: a population member's folder says where its checkpoint is.


def test_restore_of_a_population_member_names_the_population_checkpoint(
  tmp_path,
):
  point = tmp_path / "sweep" / "000_seed=0"
  config = MNIST.get_config("model=cnn,small=true")
  checkpointing.write_run_files(str(point), config, (42, 42, 1))
  sweep_records.write_record(
    str(point),
    {
      "status": "finished",
      "population": {"name": "population_ab", "members": 2},
    },
  )
  with pytest.raises(FileNotFoundError) as error:
    stn_jax.restore(str(point))
  message = str(error.value)
  assert str(tmp_path / "sweep" / "populations" / "population_ab") in message
  assert "one of the 2 members" in message
  assert viz.main([f"--workdir={point}"]) == 1  # one line, no traceback


# ---------------------------------------------------------------------------
# Case 12: the smaller ones.


def test_divergence_before_any_checkpoint_does_not_claim_one(tmp_path):
  with pytest.raises(hooks.TrainingDiverged) as error:
    hooks._raise_if_diverged(np.array([1]), str(tmp_path))
  assert "No checkpoint was saved before it" in str(error.value)
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  with pytest.raises(hooks.TrainingDiverged, match="last good checkpoint"):
    hooks._raise_if_diverged(np.array([5]), str(tmp_path))


def test_a_repeated_config_argument_is_refused():
  with pytest.raises(ValueError, match="distortion is given twice"):
    MNIST.get_config("distortion=rts,distortion=r")


def test_an_empty_workdir_flag_is_refused(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "stn_jax.main",
      f"--config={REPO / 'configs' / 'mnist.py'}:small=true",
      "--workdir=",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": pythonpath(REPO)},
  )
  assert result.returncode == 1
  assert "--workdir is empty" in result.stderr
  assert not (tmp_path / ".lock").exists()
  with pytest.raises(ValueError, match="--workdir is empty"):
    sweep.run_sweep(str(REPO / "configs" / "mnist.py"), "tc", "", log=quiet)


def test_a_garbage_mirror_says_the_expected_form(monkeypatch):
  monkeypatch.setenv("STN_DATA_MIRROR", "garbage")
  with pytest.raises(ValueError, match="must be a URL of one of the forms"):
    download.source_url("mnist", "train-images-idx3-ubyte.gz")
  assert (
    download.source_url("mnist", "t.gz", mirror="file:///m")
    == "file:///m/mnist/t.gz"
  )


def test_rotation_matrix_under_jit_takes_a_number_scale():
  import jax

  center = np.array([[10.0, 12.0], [3.0, 4.0]], np.float32)
  angle = np.array([30.0, -45.0], np.float32)
  eager = stn_jax.rotation_matrix(center, angle, 0.5)
  jitted = jax.jit(stn_jax.rotation_matrix)(center, angle, 0.5)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  single = jax.jit(stn_jax.rotation_matrix)(center[0], angle[0], 2.0)
  np.testing.assert_allclose(
    single, stn_jax.rotation_matrix(center[0], angle[0], 2.0), rtol=1e-6
  )


def _run_saving_one_checkpoint(tmp_path):
  """``(state, writer)``: a small FCN run's files in ``tmp_path`` and a
  checkpoint writer keeping one step (``max_to_keep=1``), step 1 saved."""
  from flax import nnx

  from stn_jax import models, recipe, steps

  config = MNIST.get_config("model=fcn,small=true")
  checkpointing.write_run_files(str(tmp_path), config, (42, 42, 1))
  model = models.from_config(config, (42, 42, 1))
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  _, state = steps.init_state(model, optimizer)
  writer = checkpointing.Checkpoints(str(tmp_path), max_to_keep=1)
  writer.save(1, state, {})
  return state, writer


def test_restore_while_a_run_saves_with_one_checkpoint_kept(tmp_path):
  """A writer saving with max_to_keep=1 (deleting the step a reader just
  listed) while restore() reads: every restore succeeds."""
  import threading

  state, writer = _run_saving_one_checkpoint(tmp_path)
  stop = threading.Event()

  def save_forever():
    step = 2
    while not stop.is_set():
      writer.save(step, state, {})
      step += 1

  thread = threading.Thread(target=save_forever)
  thread.start()
  try:
    steps_read = [stn_jax.restore(str(tmp_path)).step for _ in range(8)]
  finally:
    stop.set()
    thread.join()
    writer.close()
  assert all(step >= 1 for step in steps_read)


@pytest.mark.parametrize("error", [FileNotFoundError, NotADirectoryError])
def test_restore_reads_again_when_a_listed_step_goes(
  tmp_path, monkeypatch, error
):
  """The race above, made certain: orbax reads the metadata of a step that
  a saving run has just deleted and raises (``NotADirectoryError``, "Path
  is not a directory", in CI once; or ``FileNotFoundError``); restore()
  lists the steps again and reads the new one."""
  state, writer = _run_saving_one_checkpoint(tmp_path)
  writer.wait()
  opened = checkpointing.Checkpoints.__init__
  calls = []

  def open_after_a_save(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 1:  # the run saves step 2 and deletes step 1
      writer.save(2, state, {})
      writer.wait()
      raise error(f"Path is not a directory: {tmp_path}/checkpoints/1")
    return opened(self, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpoints, "__init__", open_after_a_save)
  try:
    assert stn_jax.restore(str(tmp_path)).step == 2
  finally:
    writer.close()
  assert len(calls) == 2


@pytest.mark.parametrize("variable", ["TFDS_DATA_DIR", "STN_DATA_DIR"])
def test_a_data_folder_variable_naming_a_file_is_one_line(variable, tmp_path):
  """Case 6: the dataset folder (TFDS_DATA_DIR) or the source folder
  (STN_DATA_DIR) set to a file, nothing built: one line naming it."""
  file = tmp_path / "not_a_folder"
  file.write_text("")
  env = {variable: str(file)}
  if variable == "STN_DATA_DIR":  # a fresh TFDS folder, so a build is needed
    env["TFDS_DATA_DIR"] = str(tmp_path / "tfds")
    env["STN_DATA_MIRROR"] = "file:///nonexistent_mirror"
  result = run_main(
    "--config=configs/mnist.py:distortion=rts,model=cnn,small=true",
    f"--workdir={tmp_path / 'run'}",
    env=env,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if "error:" in line]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith(
    "python -m stn_jax.main: error:"
  ), lines
  # TFDS_DATA_DIR: "...: Not a directory; a part of that path is a file,
  # not a folder"; STN_DATA_DIR (downloads off in the tests): "Missing
  # MNIST file ...: looked in <it>/mnist ..."
  assert str(file) in errors[0], errors[0]


FILL_AND_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
from test_careless_hands import FillDiskAt
from stn_jax import main
sys.exit(main.main(sys.argv[3:], hooks=[FillDiskAt(3, sys.argv[2])]))
"""


def test_a_disk_filled_during_a_run_is_one_line_at_the_command_line(
  tiny_tfds, small_disk
):
  """Case 7 at the command line: a checkpoint save that meets a full disk
  ends in the one CheckpointError line, without orbax's own log lines from
  its background threads."""
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      FILL_AND_RUN,
      str(REPO / "tests"),
      str(small_disk),
      "python -m stn_jax.main",
      "--config=configs/mnist.py:model=cnn,small=true",
      f"--workdir={small_disk / 'run'}",
      f"--config.tfds_dir={tiny_tfds}",
      "--config.batch_size=8",
      "--config.eval_batch_size=8",
      "--config.num_steps=6",
      "--config.checkpoint_every=2",
      "--config.log_every=1000",
      "--config.eval_every=1000",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": pythonpath(REPO)},
  )
  assert result.returncode == 1, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr[-3000:]
  # (with asynchronous saves, the save that meets the full disk is 2 or 4)
  assert re.search(r"could not write checkpoint [24] ", lines[0]), lines[0]
  assert "No space left on device" in lines[0]


@pytest.mark.parametrize(
  "name, damage",
  [("config.json", '{"model": "cn'), ("in_shape.json", "[42, 4")],
)
def test_a_damaged_run_file_is_named_by_restore_and_the_tools(
  tmp_path, name, damage
):
  """Case 9 on the other commands (found by experiments/hostile_cases.py):
  restore(), and so viz, evaluate, export and model_zoo package, said "a
  JSON file is damaged" without naming it (restore() raised a bare
  JSONDecodeError)."""
  run = tmp_path / "run"
  config = MNIST.get_config("model=cnn,small=true")
  checkpointing.write_run_files(str(run), config, (42, 42, 1))
  (run / name).write_text(damage)
  with pytest.raises(ValueError) as error:
    stn_jax.restore(str(run))
  message = str(error.value)
  assert message.startswith(f"{run / name} is damaged ("), message
  assert "train the run again" in message
  assert viz.main([f"--workdir={run}", "--figures=transformer"]) == 1


def test_figures_and_reports_on_a_full_disk_leave_no_partial_file(
  tiny_tfds, small_disk, capsys
):
  """Case 7 on viz and evaluate (found by experiments/hostile_cases.py):
  on a full disk they left a truncated PNG or calibration.md behind, and
  the message said "a file: No space left on device" without naming it."""
  run = small_disk.parent / "run"
  train.train_and_evaluate(small(tiny_tfds), str(run))
  fill(small_disk)
  for command, out in (
    (viz.main, [f"--workdir={run}", "--figures=error"]),
    (evaluate.main, ["calibration", f"--workdir={run}"]),
  ):
    folder = small_disk / command.__module__
    assert command([*out, f"--out={folder}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert f"{folder}/" in err and "No space left on device" in err, err
    assert list(folder.iterdir()) == [], err


def test_the_command_lines_drop_closed_event_loop_callbacks_only(
  monkeypatch,
):
  """After a failed checkpoint save, TensorStore's threads can call back
  into orbax's closed event loop: those unraisable "Event loop is closed"
  errors are not printed at the command line (the command's one line
  says what happened); every other unraisable exception is."""
  import types

  from stn_jax import cli as stn_cli

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  stn_cli.quiet_orbax_errors()
  stn_cli.quiet_orbax_errors()  # installed once

  def unraisable(error):
    return types.SimpleNamespace(
      exc_type=type(error),
      exc_value=error,
      exc_traceback=None,
      err_msg=None,
      object=None,
    )

  sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
  assert seen == []
  for error in (RuntimeError("something else"), ValueError("x")):
    sys.unraisablehook(unraisable(error))
  assert [u.exc_value.args[0] for u in seen] == ["something else", "x"]
