"""Records: the Status enum, the Record type, and record.json files written
before Record existed (plain dicts) loading into it."""

import json

import pytest

from stn_jax.sweep import records
from stn_jax.sweep.records import Record, Status

# What the runner wrote before Record (stn_jax/sweep_records.py at
# 08efa65): a finished point, a population member, a running point.
OLD_FINISHED = {
  "name": "000_distortion=rts,model=cnn,small=true,seed=0",
  "arg": "distortion=rts,model=cnn,small=true,seed=0",
  "overrides": {"num_steps": 2},
  "results": {"test_error": 0.25, "wall_seconds": 3.5},
  "error": "",
  "status": "finished",
  "start_time": 1700000000.0,
  "end_time": 1700000003.5,
  "host": "box",
  "worker": "pid 12",
  "device": "1 x cpu (cpu)",
}
OLD_MEMBER = {
  **OLD_FINISHED,
  "population": {"name": "population_abc", "members": 2, "index": 1},
}
OLD_RUNNING = {**OLD_FINISHED, "status": "running", "end_time": None}
OLD_STOPPED = {**OLD_FINISHED, "status": "interrupted", "signal": "SIGTERM"}


@pytest.mark.parametrize("status", list(Status))
def test_status_round_trips_through_its_string_and_json(status):
  assert Status(str(status)) is status
  assert status == status.value and f"{status}" == status.value
  assert Status(json.loads(json.dumps(status))) is status
  record = Record(status=status, name="p")
  assert Record.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_status_groups():
  assert {s for s in Status if s.is_failure} == {Status.FAILED, Status.DAMAGED}
  assert {s for s in Status if s.is_done} == {Status.FINISHED, Status.SKIPPED}
  with pytest.raises(ValueError, match="status must be one of running"):
    Record(status="done")


@pytest.mark.parametrize(
  "old", [OLD_FINISHED, OLD_MEMBER, OLD_RUNNING, OLD_STOPPED]
)
def test_an_old_record_file_loads_into_a_record_and_writes_back_the_same(
  tmp_path, old
):
  (tmp_path / records.RECORD).write_text(json.dumps(old, indent=1) + "\n")
  record = records.read_record(str(tmp_path))
  assert isinstance(record, Record) and isinstance(record.status, Status)
  assert record.status == old["status"] and record.name == old["name"]
  assert record.results == old["results"]
  assert record.population == old.get("population")
  assert record.signal == old.get("signal")
  # It reads like the dict it was (null values are absent keys).
  present = {k: v for k, v in old.items() if v is not None}
  assert record == present and dict(record) == present
  assert (
    record["status"] == old["status"]
    and record.get("end_time") == (old["end_time"])
  )
  records.write_record(str(tmp_path / "again"), record)
  record["point_dir"] = "x"  # callers annotate records as they did dicts
  record["status"] = "skipped"
  assert record.extra == {"point_dir": "x"} and record.status is Status.SKIPPED
  assert json.loads((tmp_path / "again" / records.RECORD).read_text()) == (
    present
  )


def test_unknown_keys_are_kept_and_a_record_without_a_status_is_damaged(
  tmp_path,
):
  record = Record.from_dict({**OLD_FINISHED, "note": "from a newer version"})
  assert record.extra == {"note": "from a newer version"}
  assert record.to_dict()["note"] == "from a newer version"
  for text in ('{"name": "x"}', '{"status": "done"}', "[1]", "{"):
    (tmp_path / records.RECORD).write_text(text)
    damaged = records.read_record(str(tmp_path))
    assert damaged.status == Status.DAMAGED and "is damaged" in damaged.error


def test_a_finished_point_from_before_records_reads_as_finished(tmp_path):
  (tmp_path / "results.json").write_text('{"test_error": 0.5}')
  record = records.read_record(str(tmp_path))
  assert record.status == Status.FINISHED
  assert record.results == {"test_error": 0.5}
  assert records.read_record(str(tmp_path / "none")) is None


def test_collect_merges_a_saved_record_into_the_planned_point(tmp_path):
  point = {"name": "000_a", "arg": "a", "overrides": {}}
  records.write_record(str(tmp_path / "000_a"), {"status": "running"})
  [pending] = records.collect(str(tmp_path / "other"), [point])
  assert pending == {**point, "status": "pending", "results": {}, "error": ""}
  [record] = records.collect(str(tmp_path), [point])
  assert record.status == Status.INTERRUPTED  # no live runner holds it
  assert record.name == "000_a" and record.arg == "a"
