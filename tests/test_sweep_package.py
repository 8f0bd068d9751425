"""The sweep package's pieces: a pure plan, launchers chosen by name, the
modes, and one exit-status map for every command line."""

import ast
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, write_mnist_config_with_sweep

from stn_jax import cli, main, sweep
from stn_jax.sweep import cli as sweep_cli
from stn_jax.sweep import launchers
from stn_jax.sweep.records import Record, Status

TWO_POINTS = """def sweep_tiny(add):
  add("distortion=rts,model=cnn,small=true", seed=0)
  add("distortion=rts,model=fcn,small=true", num_steps=5)
"""


def _files(folder):
  return sorted(
    (os.path.relpath(os.path.join(d, f), folder), os.stat(os.path.join(d, f)))
    for d, _, names in os.walk(folder)
    for f in names
    if "__pycache__" not in d
  )


def test_plan_is_pure_same_points_and_nothing_written(tmp_path, monkeypatch):
  config = write_mnist_config_with_sweep(tmp_path, TWO_POINTS)
  monkeypatch.chdir(tmp_path)
  sweep.plan(str(config), "tiny")  # the config file is imported once
  before = _files(tmp_path)
  first = sweep.plan(str(config), "tiny", extra_arg="small=true")
  again = sweep.plan(
    sweep.load_config_module(str(config)), "tiny", extra_arg="small=true"
  )
  assert first == again
  assert [p["name"] for p in first] == [
    "000_distortion=rts,model=cnn,small=true,small=true,seed=0",
    "001_distortion=rts,model=fcn,small=true,small=true,num_steps=5",
  ]
  assert first[1]["overrides"] == {"num_steps": 5}
  kept = sweep.plan(
    str(config), "tiny", select=lambda p: "model=fcn" in p["arg"]
  )
  assert [p["index"] for p in kept] == [1]  # the index in the full sweep
  assert _files(tmp_path) == before  # nothing created, nothing touched


def test_the_registry_chooses_each_launcher():
  assert list(launchers.LAUNCHERS) == ["local", "ray", "population"]
  assert type(launchers.make_launcher("local")) is launchers.LocalLauncher

  def fake_population_fn(*args, **kwargs):
    return []

  population = launchers.make_launcher(
    "population", population_fn=fake_population_fn
  )
  assert type(population) is launchers.PopulationLauncher
  assert population.population_fn is fake_population_fn
  sharded = launchers.make_launcher("population", shard="1/3")
  assert type(sharded) is launchers.JobArrayLauncher
  assert type(sharded.inner) is launchers.PopulationLauncher
  assert (sharded.index, sharded.count) == (1, 3)
  assert sharded.select(list(range(8))) == [1, 4, 7]
  assert launchers.make_launcher("local").select([1, 2]) == [1, 2]
  with pytest.raises(ValueError, match="need --launcher=ray"):
    launchers.make_launcher("population", max_concurrent=2)
  with pytest.raises(ValueError, match="one of local, ray, population"):
    launchers.make_launcher("slurm")
  # The command line offers exactly the registry's names.
  assert sweep_cli._flags()["launcher"].parser.enum_values == list(
    launchers.LAUNCHERS
  )
  pytest.importorskip("ray")
  ray = launchers.make_launcher("ray", max_concurrent=2, resources="gpu=0.5")
  assert type(ray) is launchers.RayLauncher
  assert ray.max_concurrent == 2 and ray.resources["gpu"] == 0.5
  for launcher in (launchers.make_launcher("local"), population, ray, sharded):
    for method in ("select", "units", "run"):  # the Launcher protocol
      assert callable(getattr(launcher, method))


def test_population_flag_is_the_population_launcher():
  assert sweep_cli.launcher_name("local", True) == "population"
  assert sweep_cli.launcher_name("ray", False) == "ray"
  with pytest.raises(ValueError, match="--population .* --launcher=ray"):
    sweep_cli.launcher_name("ray", True)


def test_modes_have_one_meaning_and_the_old_flags_are_aliases(tmp_path, capsys):
  config = write_mnist_config_with_sweep(tmp_path, TWO_POINTS)
  common = [f"--config={config}", "--sweep=tiny", f"--workdir={tmp_path / 'w'}"]
  for argv in (["dry-run", *common], [*common, "--dry_run"]):
    assert sweep.main(argv) == 0
    assert "2 points, 0 failed\n" in capsys.readouterr().out
  assert not (tmp_path / "w").exists()  # a dry run writes nothing
  assert sweep.main(["collect", *common, "--dry_run"]) == 1
  assert "choose one of run, collect" in capsys.readouterr().err
  assert sweep.main(["train", *common]) == 1
  assert "the mode is one of run, collect, dry-run" in capsys.readouterr().err
  (tmp_path / "w").mkdir()
  for argv in (["collect", *common], [*common, "--collect"]):
    assert sweep.main(argv) == 0
    assert "2 points, 0 failed (2 pending)" in capsys.readouterr().out
  records = sweep.run_sweep(
    str(config), "tiny", str(tmp_path / "w"), mode="collect", log=print
  )
  assert [r.status for r in records] == [Status.PENDING] * 2
  with pytest.raises(ValueError, match="choose one of"):
    sweep.run_sweep(str(config), "tiny", "w", mode="collect", dry_run=True)


def test_one_exit_status_map_for_both_command_lines(monkeypatch):
  stopped = Record(status=Status.INTERRUPTED, name="p", signal="SIGTERM")
  failed = Record(status=Status.DAMAGED, name="q")
  done = Record(status=Status.SKIPPED, name="r")
  assert sweep_cli.exit_status([done, stopped, failed]) == 143
  assert (
    main.exit_status({"interrupted_at_step": 3, "signal": "SIGTERM"}) == 143
  )
  assert sweep_cli.exit_status([done, failed]) == 1
  assert sweep_cli.exit_status([done]) == main.exit_status({}) == 0
  monkeypatch.setitem(cli.EXIT_STATUS, "SIGTERM", 99)
  assert sweep_cli.exit_status([stopped]) == 99
  assert main.exit_status({"interrupted_at_step": 3, "signal": "SIGTERM"}) == 99
  # No other module spells the map out.
  for path in (REPO / "stn_jax").rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Dict) and path.name != "cli.py":
        keys = {getattr(k, "value", None) for k in node.keys}
        assert not {"SIGINT", "SIGTERM"} <= keys, path


def test_the_old_archive_command_still_runs(tmp_path):
  archive = tmp_path / "archive" / "000_a"
  archive.mkdir(parents=True)
  (archive / "record.json").write_text(
    json.dumps({"name": "000_a", "status": "finished", "results": {}})
  )
  for module in ("stn_jax.sweep_archive", "stn_jax.sweep.archive"):
    done = subprocess.run(
      [sys.executable, "-m", module, "compact", str(tmp_path / "archive")],
      capture_output=True,
      text=True,
      cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
  assert "compacted 0 archived points" in done.stdout
  assert os.listdir(archive) == ["manifest.json"]
