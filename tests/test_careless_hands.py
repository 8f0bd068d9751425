"""Issue 33 ("Careless hands 2"): a careless or unlucky user's cases, each
held here: nothing silently wrong, nothing lost, one clear line."""

import json
import os

import pytest
from conftest import write_mnist_config_with_sweep

from stn_jax import sweep, sweep_records

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
