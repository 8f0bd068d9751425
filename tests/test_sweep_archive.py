"""A sweep's archive of finished points: saved as they finish, restored
into a lost or new workdir, never replaced and never restored over a
different run."""

import json
import os
import shutil

import pytest
from conftest import write_mnist_config_with_sweep

from stn_jax import checkpointing, sweep, sweep_archive, sweep_records
from stn_jax.workdir import WorkdirError

THREE_POINTS = """def sweep_tiny(add):
  add("distortion=rts,model=cnn,small=true", seed=0)
  add("distortion=rts,model=cnn,small=true", seed=1)
  add("distortion=rts,model=fcn,small=true", seed=0)
"""


def _train_like_a_run(config, workdir):
  """Writes the small files a real run writes (config.json, in_shape.json,
  metrics.jsonl, results.json) and a stand-in checkpoint; fails for
  model fcn."""
  if config.model == "fcn":
    raise RuntimeError("fcn diverged")
  checkpointing.write_run_files(workdir, config, (42, 42, 1))
  results = {"test_error": 0.1 + 0.01 * config.seed, "test_loss": 0.5}
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "train_loss": 1.0}) + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)
  os.makedirs(os.path.join(workdir, "checkpoints", "1"))
  return results


def _quiet(*args):
  pass


@pytest.fixture
def config_path(tmp_path):
  return str(write_mnist_config_with_sweep(tmp_path, THREE_POINTS))


def _run(config_path, workdir, archive, train_fn=_train_like_a_run, **kw):
  return sweep.run_sweep(
    config_path,
    "tiny",
    str(workdir),
    archive=str(archive),
    train_fn=train_fn,
    log=_quiet,
    **kw,
  )


def _never(*args):
  pytest.fail("a point trained that the archive holds")


def test_finished_points_are_archived_and_a_lost_workdir_is_restored(
  config_path, tmp_path
):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  first = _run(config_path, workdir, archive)
  assert [r["status"] for r in first] == ["finished", "finished", "failed"]
  finished = [r["name"] for r in first[:2]]
  # Only the finished points, and only their small files.
  assert sorted(os.listdir(archive)) == finished
  for name in finished:
    assert sorted(os.listdir(archive / name)) == sorted(
      sweep_archive.ARCHIVED_FILES
    )
    for file in sweep_archive.ARCHIVED_FILES:
      assert (archive / name / file).read_text() == (
        workdir / name / file
      ).read_text()
      assert (archive / name / file).stat().st_mode & 0o777 == 0o644

  shutil.rmtree(workdir)  # the machine is gone; the archive was committed
  again = _run(
    config_path,
    workdir,
    archive,
    train_fn=lambda c, w: _never() if c.model == "cnn" else {},
  )
  assert [r["status"] for r in again] == ["skipped", "skipped", "finished"]
  for before, after in zip(first[:2], again[:2]):
    assert after["results"] == before["results"]
    assert after["start_time"] == before["start_time"]
  table = (workdir / "results.md").read_text()
  assert "10.00%" in table and "11.00%" in table
  assert not (workdir / finished[0] / "checkpoints").exists()

  # report_only (--collect) reads a fresh workdir from the archive alone.
  report = _run(config_path, tmp_path / "fresh", archive, report_only=True)
  assert [r["status"] for r in report] == ["skipped", "skipped", "skipped"]


def test_points_finished_before_the_archive_existed_are_saved_when_skipped(
  config_path, tmp_path
):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  sweep.run_sweep(
    config_path, "tiny", str(workdir), train_fn=_train_like_a_run, log=_quiet
  )
  assert not archive.exists()
  _run(
    config_path,
    workdir,
    archive,
    train_fn=_never,
    select=lambda p: "fcn" not in p["arg"],
  )
  assert sorted(os.listdir(archive)) == sorted(
    n for n in os.listdir(workdir) if n[:3] in ("000", "001")
  )


def test_an_archived_point_is_never_replaced(config_path, tmp_path):
  archive = tmp_path / "archive"
  _run(config_path, tmp_path / "a", archive)
  name = sorted(os.listdir(archive))[0]
  kept = (archive / name / "record.json").read_text()
  # Another workdir finishes the same point on its own (no archive) ...
  sweep.run_sweep(
    config_path,
    "tiny",
    str(tmp_path / "b"),
    train_fn=lambda c, w: {**_train_like_a_run(c, w), "test_error": 0.9},
    log=_quiet,
  )
  # ... and is then run with the archive: its record is kept locally and the
  # archived one is not replaced.
  records = _run(
    config_path,
    tmp_path / "b",
    archive,
    train_fn=_never,
    select=lambda p: "fcn" not in p["arg"],
  )
  assert records[0]["results"]["test_error"] == 0.9
  assert (archive / name / "record.json").read_text() == kept


def test_a_copy_cut_short_is_not_an_archived_point(config_path, tmp_path):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  _run(config_path, workdir, archive)
  name = sorted(os.listdir(archive))[0]
  os.remove(archive / name / "record.json")  # killed before the record
  shutil.rmtree(workdir)
  trained = []
  _run(
    config_path,
    workdir,
    archive,
    train_fn=lambda c, w: trained.append(w) or _train_like_a_run(c, w),
  )
  assert [os.path.basename(w) for w in trained if "fcn" not in w] == [name]
  assert sweep_archive.is_archived(str(archive / name))  # saved again


def test_no_restore_over_a_different_run_in_the_workdir(config_path, tmp_path):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  _run(config_path, workdir, archive)
  name = sorted(os.listdir(archive))[0]
  shutil.rmtree(workdir)
  # The workdir now holds a partial run of that point under another config.
  module = sweep.load_config_module(config_path)
  point = {"arg": "distortion=rts,model=cnn,small=true", "overrides": {}}
  other = sweep.build_config(module, point, {"seed": 0, "learning_rate": 0.5})
  checkpointing.write_run_files(str(workdir / name), other, (42, 42, 1))
  with pytest.raises(WorkdirError, match=r"learning_rate: 0.5 -> "):
    _run(config_path, workdir, archive, train_fn=_never)
  saved = json.loads((workdir / name / "config.json").read_text())
  assert saved["learning_rate"] == 0.5  # untouched


def test_a_changed_sweep_does_not_report_the_archived_results(
  config_path, tmp_path
):
  archive = tmp_path / "archive"
  _run(config_path, tmp_path / "runs", archive)
  # A new workdir with another --set: the archived points are not this
  # sweep's, so they are not restored (before issue 33 they were, and then
  # failed in every new workdir); they train afresh.
  records = _run(
    config_path,
    tmp_path / "new",
    archive,
    overrides={"learning_rate": 0.5},
    select=lambda p: "fcn" not in p["arg"],
  )
  assert [r["status"] for r in records] == ["finished", "finished"]
  for record in records:
    saved = json.loads(
      (tmp_path / "new" / record["name"] / "config.json").read_text()
    )
    assert saved["learning_rate"] == 0.5


def test_a_point_held_by_a_live_runner_is_not_restored(config_path, tmp_path):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  _run(config_path, workdir, archive)
  name = sorted(os.listdir(archive))[0]
  shutil.rmtree(workdir)
  os.makedirs(workdir / name)
  with sweep_records.PointLock(str(workdir / name)) as lock:
    assert lock.acquired
    restored = sweep_archive.restore(str(archive), str(workdir), [name])
  assert restored == []
  assert not (workdir / name / "record.json").exists()
  assert sweep_archive.restore(str(archive), str(workdir), [name]) == [name]
