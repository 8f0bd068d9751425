"""Sweep points trained together as populations (``--population``)."""

import json
import os
import shutil

import pytest
from conftest import write_mnist_config_with_sweep

from stn_jax import config_args, sweep
from stn_jax import workdir as workdir_lib
from stn_jax.sweep import records as sweep_records

# Two populations (cnn seeds 0-2; fcn seeds 0-1, one with its own learning
# rate, a member hyperparameter) and one point alone (another batch size).
SIX_POINTS = """def sweep_tiny(add):
  for seed in range(3):
    add("distortion=rts,model=cnn,small=true", seed=seed)
  add("distortion=rts,model=fcn,small=true", seed=0)
  add("distortion=rts,model=fcn,small=true", seed=1, learning_rate=0.01)
  add("distortion=rts,model=cnn,small=true", seed=0, batch_size=64)
"""


class FakePopulation:
  """Stands in for population.train_population: records each call and
  writes what a finished member writes (results.json)."""

  def __init__(self, outcome="finish"):
    self.calls = []
    self.outcome = outcome

  def __call__(self, configs, workdir, *, member_dirs, log):
    self.calls.append((workdir, list(member_dirs)))
    if self.outcome == "fail":
      raise RuntimeError("planted population failure")
    if self.outcome == "interrupt":  # as train_population: a checkpoint
      os.makedirs(os.path.join(workdir, "checkpoints", "5"))
      return [{"interrupted_at_step": 5, "signal": "SIGTERM"} for _ in configs]
    results = []
    for config, folder in zip(configs, member_dirs):
      member = {"test_error": 0.01 * config.seed + config.learning_rate}
      with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(member, f)
      results.append({**member, "train_seconds": 1.0, "params": object()})
    return results


def fake_train(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  return {"test_error": 0.5}


def run(tmp_path, population_fn, **kwargs):
  config = write_mnist_config_with_sweep(tmp_path, SIX_POINTS)
  return sweep.run_sweep(
    str(config),
    "tiny",
    str(tmp_path / "sweep"),
    train_fn=fake_train,
    train_population=True,
    population_fn=population_fn,
    log=lambda *a: None,
    **kwargs,
  )


def test_compatible_points_train_as_one_population_each(tmp_path):
  fake = FakePopulation()
  records = run(tmp_path, fake)
  names = [r["name"] for r in records]
  sweep_dir = tmp_path / "sweep"
  # cnn seeds 0-2 together, fcn seeds 0-1 together; the point with its own
  # batch size ran alone (through train_fn).
  assert [[os.path.basename(d) for d in dirs] for _, dirs in fake.calls] == [
    names[0:3],
    names[3:5],
  ]
  for workdir, _ in fake.calls:
    assert os.path.dirname(workdir) == str(sweep_dir / "populations")
  assert [r["status"] for r in records] == ["finished"] * 6
  assert records[5]["results"]["test_error"] == 0.5
  assert "population" not in records[5]
  for k, r in enumerate(records[:5]):
    on_disk = sweep_records.read_record(str(sweep_dir / r["name"]))
    assert on_disk["status"] == "finished"
    size = 3 if k < 3 else 2
    assert on_disk["population"]["members"] == size
    assert on_disk["population"]["name"] == os.path.basename(
      fake.calls[0 if k < 3 else 1][0]
    )
    # Each member's share of the population's time; no parameters.
    assert on_disk["results"]["wall_seconds"] == pytest.approx(
      on_disk["population"]["wall_seconds"] / size
    )
    assert "params" not in on_disk["results"]
  # Member hyperparameters reach their member: fcn seed 1 has lr 0.01.
  assert records[4]["results"]["test_error"] == pytest.approx(0.02)
  table = (sweep_dir / "results.jsonl").read_text().splitlines()
  assert len(table) == 6

  again = FakePopulation()
  records = run(tmp_path, again)
  assert again.calls == []
  assert [r["status"] for r in records] == ["skipped"] * 6


def test_an_interrupted_population_stops_the_sweep_and_resumes_in_place(
  tmp_path,
):
  stopped = FakePopulation("interrupt")
  records = run(tmp_path, stopped)
  assert [r["status"] for r in records[:3]] == ["interrupted"] * 3
  assert all(r["signal"] == "SIGTERM" for r in records[:3])
  assert len(stopped.calls) == 1  # the sweep stopped there
  resumed = FakePopulation()
  records = run(tmp_path, resumed)
  # The same points form the same population folder, which holds its
  # checkpoints: the rerun resumes it rather than starting a new one.
  assert resumed.calls[0] == stopped.calls[0]
  assert [r["status"] for r in records] == ["finished"] * 6


def interrupted_train(config, workdir):
  """A separate run stopped by SIGTERM after saving step 5."""
  os.makedirs(os.path.join(workdir, "checkpoints", "5"))
  return {"interrupted_at_step": 5, "signal": "SIGTERM"}


def test_a_population_checkpoint_is_never_left_behind_silently(tmp_path):
  stopped = FakePopulation("interrupt")
  run(tmp_path, stopped)
  population_dir = stopped.calls[0][0]
  trained = []

  def train_fn(config, workdir):
    trained.append(workdir)
    return fake_train(config, workdir)

  config = write_mnist_config_with_sweep(tmp_path, SIX_POINTS)
  sweep_dir = str(tmp_path / "sweep")
  # Without --population the three members would restart from step 0.
  with pytest.raises(workdir_lib.WorkdirError) as refused:
    sweep.run_sweep(
      str(config), "tiny", sweep_dir, train_fn=train_fn, log=lambda *a: None
    )
  message = str(refused.value)
  first = os.path.basename(stopped.calls[0][1][0])
  assert f"point {first} has a checkpoint at step 5" in message
  assert f"a member of {os.path.basename(population_dir)}" in message
  assert "with --population" in message and "delete" in message
  assert trained == []
  # Another seed beside them forms another population: refused too.
  (tmp_path / "more").mkdir()  # (a new file: no stale bytecode)
  more = SIX_POINTS.replace("range(3)", "range(4)")
  config = write_mnist_config_with_sweep(tmp_path / "more", more)
  fake = FakePopulation()
  with pytest.raises(workdir_lib.WorkdirError, match="from step 0"):
    sweep.run_sweep(
      str(config),
      "tiny",
      sweep_dir,
      train_fn=train_fn,
      train_population=True,
      population_fn=fake,
      log=lambda *a: None,
    )
  assert fake.calls == [] and trained == []
  # Deleting the checkpoint is the way to train them afresh, alone.
  shutil.rmtree(os.path.join(population_dir, "checkpoints"))
  config = write_mnist_config_with_sweep(tmp_path, SIX_POINTS)
  records = sweep.run_sweep(
    str(config), "tiny", sweep_dir, train_fn=train_fn, log=lambda *a: None
  )
  assert [r["status"] for r in records] == ["finished"] * 6
  assert len(trained) == 6


def test_a_separate_runs_checkpoint_is_not_dropped_by_population(tmp_path):
  config = write_mnist_config_with_sweep(tmp_path, SIX_POINTS)
  sweep_dir = str(tmp_path / "sweep")
  records = sweep.run_sweep(
    str(config),
    "tiny",
    sweep_dir,
    train_fn=interrupted_train,
    log=lambda *a: None,
  )
  assert records[0]["status"] == "interrupted"
  fake = FakePopulation()
  with pytest.raises(workdir_lib.WorkdirError) as refused:
    run(tmp_path, fake)
  message = str(refused.value)
  assert f"point {records[0]['name']} has a checkpoint at step 5" in message
  assert "a separate run" in message and "without --population" in message
  assert fake.calls == []
  # Resuming it as it was (separately) is allowed.
  records = sweep.run_sweep(
    str(config), "tiny", sweep_dir, train_fn=fake_train, log=lambda *a: None
  )
  assert [r["status"] for r in records] == ["finished"] * 6


def test_a_failed_population_fails_its_members_and_the_rest_run(tmp_path):
  records = run(tmp_path, FakePopulation("fail"))
  assert [r["status"] for r in records] == ["failed"] * 5 + ["finished"]
  assert "planted population failure" in records[0]["error"]


def test_a_member_held_by_another_runner_leaves_the_population_alone(
  tmp_path,
):
  config = write_mnist_config_with_sweep(tmp_path, SIX_POINTS)
  points = sweep.plan(config_args.load_config_module(str(config)), "tiny")
  held = tmp_path / "sweep" / points[1]["name"]
  fake = FakePopulation()
  with sweep_records.PointLock(str(held)) as lock:
    assert lock.acquired
    records = run(tmp_path, fake)
  assert [os.path.basename(d) for d in fake.calls[0][1]] == [
    p["name"] for p in points[3:5]
  ]
  assert [r["status"] for r in records[:3]] == ["running"] * 3
  assert "held by" in records[0]["error"]


def test_population_does_not_combine_with_another_launcher(tmp_path):
  class OtherLauncher:
    def run(self, *args, **kwargs):
      raise AssertionError("not reached")

  with pytest.raises(ValueError, match="--population .* --launcher=ray"):
    run(tmp_path, FakePopulation(), launcher=OtherLauncher())
