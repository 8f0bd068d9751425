"""Sweeps fanned out: per-point records, shards, locks, collect, and points
as tasks on a real local Ray cluster (no mock)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import write_mnist_config_with_sweep

from stn_jax import sweep
from stn_jax.sweep import launchers
from stn_jax.sweep import records as sweep_records

FOUR_POINTS = """def sweep_tiny(add):
  add("distortion=rts,model=cnn,small=true", seed=0)
  add("distortion=rts,model=cnn,small=true", seed=1)
  add("distortion=rts,model=fcn,small=true", seed=0)
  add("distortion=rts,model=fcn,small=true", seed=1)
"""


def _fake_train(config, workdir):
  """Writes what a finished run writes (results.json), quickly."""
  os.makedirs(workdir, exist_ok=True)
  results = {"test_error": 0.01 * config.seed, "test_loss": 1.0}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f)
  return results


def _read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_share_one_table_and_every_record_says_where_and_when(
  tmp_path,
):
  config = write_mnist_config_with_sweep(tmp_path, FOUR_POINTS)
  workdir = tmp_path / "sweep"
  seen = {}
  for i in range(2):
    before = time.time()
    records = sweep.run_sweep(
      str(config),
      "tiny",
      str(workdir),
      shard=(i, 2),
      train_fn=_fake_train,
      log=lambda *a: None,
    )
    seen[i] = [r["name"][:3] for r in records]
    for r in records:
      assert r["status"] == "finished"
      assert before <= r["start_time"] <= r["end_time"] <= time.time()
      assert r["host"] and f"pid {os.getpid()}" in r["worker"]
      assert f"({jax.default_backend()})" in r["device"]
      on_disk = json.loads((workdir / r["name"] / "record.json").read_text())
      assert on_disk["status"] == "finished" and on_disk["end_time"]
    table = _read_jsonl(workdir / "results.jsonl")
    # Every point of the sweep is listed; the other shard's are pending
    # until it runs, never lost.
    assert [r["status"] for r in table].count("finished") == 2 * (i + 1)
  assert seen == {0: ["000", "002"], 1: ["001", "003"]}
  md = (workdir / "results.md").read_text()
  assert md.count("| finished |") == 4 and "1.00%" in md  # seed 1's error
  collected = sweep.run_sweep(
    str(config),
    "tiny",
    str(workdir),
    report_only=True,
    train_fn=lambda *a: pytest.fail("trained"),
    log=lambda *a: None,
  )
  assert [r["status"] for r in collected] == ["skipped"] * 4
  assert not list(workdir.rglob(".tmp_*"))  # atomic writes left nothing


def test_a_locked_point_is_left_to_its_runner_and_a_dead_one_reads_interrupted(
  tmp_path,
):
  config = write_mnist_config_with_sweep(tmp_path, FOUR_POINTS)
  workdir = tmp_path / "sweep"
  names = [
    p["name"] for p in sweep.plan(sweep.load_config_module(str(config)), "tiny")
  ]
  busy = workdir / names[1]
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from stn_jax.sweep import records as r\n"
      f"with r.PointLock({str(busy)!r}) as lock:\n"
      "  assert lock.acquired; print('held', flush=True); time.sleep(60)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    sweep_records.write_record(str(busy), {"status": "running"})
    trained = []
    records = sweep.run_sweep(
      str(config),
      "tiny",
      str(workdir),
      train_fn=lambda c, w: trained.append(w) or _fake_train(c, w),
      log=lambda *a: None,
    )
    assert [r["status"] for r in records] == [
      "finished",
      "running",
      "finished",
      "finished",
    ]
    assert "held by pid" in records[1]["error"]
    assert str(busy) not in trained
    table = _read_jsonl(workdir / "results.jsonl")
    assert table[1]["status"] == "running"  # its runner is alive
  finally:
    holder.kill()
    holder.wait()
  # The runner died without a last word: its record reads as interrupted,
  # and the next sweep trains it.
  table = sweep_records.write_results(
    str(workdir), sweep.plan(sweep.load_config_module(str(config)), "tiny")
  )
  assert table[1]["status"] == "interrupted"
  again = sweep.run_sweep(
    str(config), "tiny", str(workdir), train_fn=_fake_train, log=print
  )
  assert [r["status"] for r in again] == [
    "skipped",
    "finished",
    "skipped",
    "skipped",
  ]


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: launchers.parse_shard("2/2"), "--shard takes i/n"),
    (lambda: launchers.parse_shard("a/b"), "--shard takes i/n"),
    (lambda: launchers.parse_resources("cpu"), "--resources takes"),
    (lambda: launchers.parse_resources("gpu=-1"), "--resources takes"),
    (
      lambda: launchers.make_launcher("local", max_concurrent=2),
      "need --launcher=ray",
    ),
    (lambda: launchers.make_launcher("slurm"), "launcher must be"),
    (
      lambda: launchers.make_launcher("ray", max_concurrent=0),
      "max_concurrent must be a positive int",
    ),
  ],
)
def test_bad_launch_options_are_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_parsed_options():
  assert launchers.parse_shard("1/4") == (1, 4)
  assert launchers.parse_shard("") is None
  assert launchers.parse_resources("cpu=2,gpu=0.25,tpu_v5=1") == {
    "cpu": 2.0,
    "gpu": 0.25,
    "tpu_v5": 1.0,
  }


def test_ray_task_options_share_the_gpu_memory():
  pytest.importorskip("ray")
  options = launchers.RayLauncher(resources={"gpu": 0.25})._options()
  assert options["num_gpus"] == 0.25 and options["num_cpus"] == 1.0
  memory = options["runtime_env"]["env_vars"]["XLA_PYTHON_CLIENT_MEM_FRACTION"]
  assert float(memory) == pytest.approx(0.225)


def _sweep_command(config, workdir, tiny_tfds, *extra):
  return [
    sys.executable,
    "-m",
    "stn_jax.sweep",
    f"--config={config}",
    "--sweep=tiny",
    f"--workdir={workdir}",
    "--launcher=ray",
    "--max_concurrent=2",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    *extra,
  ]


@pytest.mark.slow
def test_ray_runs_points_concurrently_reports_a_failure_and_stops_on_sigterm(
  tiny_tfds, tmp_path
):
  """One real local Ray cluster per command: two points train at once in
  Ray workers; SIGTERM to the sweep stops both with checkpoints saved
  (exit 143); the rerun resumes and finishes them, and a point failing
  inside its worker is reported while the others finish (exit 1)."""
  pytest.importorskip("ray")
  config = write_mnist_config_with_sweep(
    tmp_path,
    """def sweep_tiny(add):
  add("distortion=rts,model=cnn,small=true", seed=0)
  add("distortion=rts,model=fcn,small=true", seed=0)
  add("distortion=rts,model=fcn,small=true", seed=1, source_dir="/nonexistent",
      dataset="distorted_mnist/r")
""",
  )
  env = {**os.environ, "STN_DATA_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
  # Long points, stopped by SIGTERM while both train (the failing third
  # point waits for a free slot, so it has not run yet).
  long_workdir = tmp_path / "long"
  driver = subprocess.Popen(
    _sweep_command(
      config,
      long_workdir,
      tiny_tfds,
      "--set=num_steps=100000",
      "--set=log_every=20",
      "--set=checkpoint_every=100000",
    ),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=env,
  )
  try:
    deadline = time.time() + 180
    logs = [long_workdir / n / "metrics.jsonl" for n in _names(config)[:2]]
    while not all(p.is_file() and p.read_text().strip() for p in logs):
      assert driver.poll() is None and time.time() < deadline
      time.sleep(0.5)
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=120)
  finally:
    driver.kill()
  assert driver.returncode == 143, out[-3000:]
  records = _read_jsonl(long_workdir / "results.jsonl")
  assert [r["status"] for r in records] == ["interrupted"] * 2 + ["pending"]
  first, second = records[0], records[1]
  assert first["start_time"] < second["end_time"]  # they ran at once
  assert second["start_time"] < first["end_time"]
  for r in records[:2]:
    assert "ray worker" in r["worker"] and r["start_time"] <= r["end_time"]
  stopped = [r["results"]["interrupted_at_step"] for r in records[:2]]
  for name, step in zip(_names(config), stopped):
    assert (long_workdir / name / "checkpoints" / str(step)).is_dir()
  # The rerun resumes both and finishes them; the third point fails inside
  # its worker and is reported (exit 1).
  resumed = subprocess.run(
    _sweep_command(
      config,
      long_workdir,
      tiny_tfds,
      f"--set=num_steps={max(stopped) + 5}",
      "--set=log_every=20",
      "--set=checkpoint_every=100000",
    ),
    capture_output=True,
    text=True,
    env=env,
    timeout=240,
  )
  assert resumed.returncode == 1, resumed.stderr[-3000:]
  records = _read_jsonl(long_workdir / "results.jsonl")
  assert [r["status"] for r in records] == ["finished", "finished", "failed"]
  assert "source_dir" in records[2]["error"].splitlines()[-1]  # no data
  assert "ray worker" in records[2]["worker"]
  assert "3 points, 1 failed" in resumed.stdout
  for step in stopped:
    assert f"resumed from step {step}" in resumed.stdout + resumed.stderr


def _names(config):
  module = sweep.load_config_module(str(config))
  return [p["name"] for p in sweep.plan(module, "tiny")]


def test_a_point_finished_before_records_existed_is_still_skipped(tmp_path):
  """A point finished by an earlier version (results.json, no record) is
  skipped and tabulated."""
  config = write_mnist_config_with_sweep(tmp_path, FOUR_POINTS)
  workdir = tmp_path / "sweep"
  name = _names(config)[0]
  module = sweep.load_config_module(str(config))
  _fake_train(
    sweep.build_config(module, sweep.plan(module, "tiny")[0]),
    str(workdir / name),
  )
  records = sweep.run_sweep(
    str(config),
    "tiny",
    str(workdir),
    report_only=True,
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["skipped", *["pending"] * 3]
  assert records[0]["results"]["test_error"] == 0.0
