"""Issue 33 ("Careless hands 2"): a careless or unlucky user's cases, each
held here: nothing silently wrong, nothing lost, one clear line."""

import json
import os

import pytest
from conftest import MNIST, tiny, write_mnist_config_with_sweep

import stn_jax
from stn_jax import checkpointing, sweep, sweep_records, train, viz, workdir

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
