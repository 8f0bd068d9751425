"""A sweep's archive of finished points: saved as they finish, restored
into a lost or new workdir, never replaced and never restored over a
different run."""

import json
import os
import shutil

import pytest
from conftest import write_mnist_config_with_sweep

from stn_jax import checkpointing, sweep
from stn_jax.sweep import archive as sweep_archive
from stn_jax.sweep import records as sweep_records
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
  manifest_before = {
    file: json.loads((workdir / finished[0] / file).read_text())
    for file in ("config.json", "results.json", "in_shape.json")
  }
  # Only the finished points, each as one manifest of its small files.
  assert sorted(os.listdir(archive)) == finished
  for name in finished:
    assert os.listdir(archive / name) == [sweep_archive.MANIFEST]
    path = archive / name / sweep_archive.MANIFEST
    assert path.stat().st_mode & 0o777 == 0o644
    manifest = json.loads(path.read_text())
    for file, key in (
      ("config.json", "config"),
      ("results.json", "results"),
      ("in_shape.json", "in_shape"),
      ("record.json", "record"),
    ):
      assert manifest[key] == json.loads((workdir / name / file).read_text())
    # the fake run logged one training row and no evaluation
    assert manifest["evaluations"] == []
    assert manifest["commit"]

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
  for file in ("config.json", "results.json", "in_shape.json"):
    assert (
      json.loads((workdir / finished[0] / file).read_text())
      == (manifest_before[file])
    )

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
  kept = (archive / name / sweep_archive.MANIFEST).read_text()
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
  assert (archive / name / sweep_archive.MANIFEST).read_text() == kept


def test_a_copy_cut_short_is_not_an_archived_point(config_path, tmp_path):
  workdir, archive = tmp_path / "runs", tmp_path / "archive"
  _run(config_path, workdir, archive)
  name = sorted(os.listdir(archive))[0]
  # killed while writing: the manifest's temporary file, never renamed
  os.replace(archive / name / sweep_archive.MANIFEST, archive / name / ".tmp_x")
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


def _legacy_archive(workdir, archive):
  """An archive as versions before manifests wrote it: the run files."""
  for name in os.listdir(workdir):
    if not sweep_archive.is_archived(str(workdir / name)):
      continue
    os.makedirs(archive / name)
    for file in sweep_archive.ARCHIVED_FILES:
      if (workdir / name / file).exists():
        shutil.copy(workdir / name / file, archive / name / file)


def test_archives_of_run_files_restore_and_compact_into_manifests(
  config_path, tmp_path
):
  workdir, archive = tmp_path / "runs", tmp_path / "old_archive"
  first = sweep.run_sweep(
    config_path, "tiny", str(workdir), train_fn=_train_like_a_run, log=_quiet
  )
  with open(workdir / first[0]["name"] / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 2, "test_error": 0.25, "test_loss": 1}) + "\n")
    f.write(json.dumps({"step": 2, "train_loss": 0.5}) + "\n")
  _legacy_archive(workdir, archive)
  # an old archive still restores a lost workdir
  again = _run(config_path, tmp_path / "w1", archive, train_fn=_fcn_only)
  assert [r["status"] for r in again] == ["skipped", "skipped", "finished"]
  # compacted: one manifest per point, the run files gone, evaluations kept
  main = sweep_archive.main(["compact", str(archive)])
  assert main == 0
  for name in (r["name"] for r in first[:2]):
    assert os.listdir(archive / name) == [sweep_archive.MANIFEST]
  manifest = sweep_archive.read_manifest(str(archive / first[0]["name"]))
  assert manifest["evaluations"] == [
    {"step": 2, "test_error": 0.25, "test_loss": 1}
  ]
  assert sweep_archive.compact(str(archive)) == []  # nothing left to do
  # (the fcn point finished in w1 and was archived there as a manifest)
  again = _run(config_path, tmp_path / "w2", archive, train_fn=_never)
  assert [r["status"] for r in again] == ["skipped", "skipped", "skipped"]
  assert [r["results"] for r in again[:2]] == [r["results"] for r in first[:2]]
  restored = tmp_path / "w2" / first[0]["name"] / "metrics.jsonl"
  assert [json.loads(line) for line in restored.read_text().splitlines()] == [
    {"step": 2, "test_error": 0.25, "test_loss": 1}
  ]


def _fcn_only(config, workdir):
  return _never() if config.model == "cnn" else {}


def test_compact_usage_error_is_one_line(tmp_path, capsys):
  assert sweep_archive.main(["compact", str(tmp_path / "missing")]) == 2
  err = capsys.readouterr().err
  assert "usage: python -m stn_jax.sweep_archive compact ARCHIVE" in err
  assert "missing" in err


def test_step_seconds_from_the_log_rates():
  rows = [
    {"step": 100, "examples_per_second": 100.0},
    {"step": 200, "examples_per_second": 50.0},
    {"step": 200, "examples_per_second": 200.0},  # resumed: the last wins
    {"step": 200, "test_error": 0.1},
  ]
  # 100 steps of 10 at 100/s, then 100 steps of 10 at 200/s
  assert sweep_archive.step_seconds(rows, 10) == 10.0 + 5.0
