"""Sweeps: expansion of every config file, dry run, resume, failures."""

import json
import os

import pytest
from conftest import REPO, write_mnist_config_with_sweep

from stn_jax import sweep, train

CONFIG_FILES = sorted(
  str(p)
  for p in (REPO / "configs").glob("*.py")
  if "def get_config" in p.read_text()
)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_point_of_every_sweep_builds(path):
  module = sweep.load_config_module(path)
  names = sweep.sweep_names(module)
  assert names, f"{path} has no sweep"
  for name in names:
    points = sweep.expand(module, name)
    assert points
    for point in points:
      config = sweep.build_config(module, point)
      train.validate_config(config)
    workdirs = {sweep.point_name(i, p) for i, p in enumerate(points)}
    assert len(workdirs) == len(points)  # one workdir per point


def test_overrides_are_parsed_as_literals_and_booleans():
  assert sweep.parse_overrides(
    ["a=1000", "b=1e-3", "c=true", "d=FALSE", "e=True", "f=adam", "g=(1, 2)"]
  ) == dict(a=1000, b=1e-3, c=True, d=False, e=True, f="adam", g=(1, 2))
  with pytest.raises(ValueError, match="key=value; got 'steps'"):
    sweep.parse_overrides(["steps"])


def test_overrides_reach_nested_fields_and_bad_ones_name_the_field():
  module = sweep.load_config_module(str(REPO / "configs" / "gtsrb.py"))
  point = {"arg": "model=gtsrb_cnn", "overrides": {}}
  config = sweep.build_config(
    module,
    point,
    sweep.parse_overrides(
      ["model_kwargs.contrast_norm_input=true", "num_steps=7"]
    ),
  )
  assert config.model_kwargs.contrast_norm_input is True
  assert config.num_steps == 7
  bad = {
    "model_kwargs.contrast_norm_input=3": "expected bool .*got 3 \\(int\\)",
    "num_steps=many": "'num_steps': expected int .*got 'many' \\(str\\)",
    "model_kwargs.nosuch=1": "'model_kwargs.nosuch': no such config field",
    "nosuch.width=1": "'nosuch.width': no such config field",
    "num_steps.x=1": "'num_steps.x': no such config field",
  }
  for item, message in bad.items():
    with pytest.raises(ValueError, match=message):
      sweep.build_config(module, point, sweep.parse_overrides([item]))


def test_table1_has_every_row_column_and_seed():
  module = sweep.load_config_module(str(REPO / "configs" / "mnist.py"))
  assert len(sweep.expand(module, "table1")) == 8 * 4 * 3


def test_dry_run_lists_points_without_training(tmp_path):
  records = sweep.run_sweep(
    str(REPO / "configs" / "mnist.py"),
    "localisation_lr",
    str(tmp_path),
    dry_run=True,
    train_fn=lambda *a: pytest.fail("trained"),
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["ok"] * 3
  assert not (tmp_path / "results.jsonl").exists()


def test_extra_arg_reaches_every_point_and_its_workdir_name(tmp_path):
  seen = []
  records = sweep.run_sweep(
    str(REPO / "configs" / "mnist.py"),
    "tc",
    str(tmp_path),
    extra_arg="small=true",
    select=lambda p: p["arg"].endswith("seed=0"),
    train_fn=lambda config, workdir: (
      seen.append((config.num_steps, os.path.basename(workdir)))
      or {"test_error": 0.5}
    ),
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["finished"] * 4
  assert [name for _, name in seen] == [
    "000_distortion=tc,model=fcn,seed=0,small=true",
    "003_distortion=tc,model=cnn,seed=0,small=true",
    "006_distortion=tc,model=st_fcn,seed=0,small=true",
    "009_distortion=tc,model=st_cnn,seed=0,small=true",
  ]
  assert {steps for steps, _ in seen} == {3000}  # the small config's


def test_report_only_collects_finished_points_and_trains_nothing(tmp_path):
  config = str(REPO / "configs" / "mnist.py")
  select = lambda p: p["arg"].endswith("seed=0")
  sweep.run_sweep(
    config,
    "tc",
    str(tmp_path),
    log=lambda *a: None,
    select=lambda p: "model=cnn," in p["arg"] and select(p),
    train_fn=lambda config, workdir: _finish(workdir),
  )
  records = sweep.run_sweep(
    config,
    "tc",
    str(tmp_path),
    select=select,
    report_only=True,
    log=lambda *a: None,
    train_fn=lambda *a: pytest.fail("trained"),
  )
  assert [r["status"] for r in records] == [
    "pending",
    "skipped",
    "pending",
    "pending",
  ]
  assert records[1]["results"]["test_error"] == 0.25
  assert records[1]["results"]["wall_seconds"] >= 0  # kept with the results


def _finish(workdir):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"test_error": 0.25}, f)
  return {"test_error": 0.25}


def test_sigterm_in_a_point_stops_the_sweep(tmp_path):
  trained = []

  def train_fn(config, workdir):
    trained.append(os.path.basename(workdir))
    return (
      {"interrupted_at_step": 7} if len(trained) == 2 else {"test_error": 0.5}
    )

  records = sweep.run_sweep(
    str(REPO / "configs" / "mnist.py"),
    "tc",
    str(tmp_path),
    train_fn=train_fn,
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["finished", "interrupted"]
  assert len(trained) == 2  # the other 10 points were not started
  saved = [json.loads(line) for line in (tmp_path / "results.jsonl").open()]
  assert [r["status"] for r in saved] == [
    "finished",
    "interrupted",
    *["pending"] * 10,
  ]


def test_unknown_sweep_lists_the_valid_ones():
  with pytest.raises(
    ValueError, match="sweep must be one of beyond, localisation_lr"
  ):
    sweep.expand(
      sweep.load_config_module(str(REPO / "configs" / "mnist.py")), "table9"
    )


def test_runs_resumes_skips_and_reports_failures(tiny_tfds, tmp_path):
  config_file = write_mnist_config_with_sweep(
    tmp_path,
    """def sweep_tiny(add):
  add("distortion=rts,model=cnn,small=true", seed=0)
  add("distortion=rts,model=cnn,small=true", learning_rate=-1.0)
  add("distortion=rts,model=st_cnn,small=true", seed=1)
""",
  )
  overrides = dict(
    tfds_dir=str(tiny_tfds),
    batch_size=8,
    eval_batch_size=8,
    num_steps=2,
    log_every=1,
  )
  calls = []

  def counting_train(config, workdir):
    calls.append(workdir)
    return train.train_and_evaluate(config, workdir)

  workdir = tmp_path / "sweep"
  records = sweep.run_sweep(
    str(config_file),
    "tiny",
    str(workdir),
    overrides=overrides,
    train_fn=counting_train,
    log=lambda *a: None,
  )
  assert [r["status"] for r in records] == ["finished", "failed", "finished"]
  assert "learning_rate must be a finite number > 0" in records[1]["error"]
  assert len(calls) == 2
  lines = (workdir / "results.jsonl").read_text().splitlines()
  assert len(lines) == 3 and json.loads(lines[0])["results"]["test_error"] >= 0
  table = (workdir / "results.md").read_text()
  assert "test_error" in table and "failed: ValueError" in table
  again = sweep.run_sweep(
    str(config_file),
    "tiny",
    str(workdir),
    overrides=overrides,
    train_fn=counting_train,
    log=lambda *a: None,
  )
  assert [r["status"] for r in again] == ["skipped", "failed", "skipped"]
  assert len(calls) == 2  # nothing retrained


def test_command_line_appends_the_config_arg_to_every_point(tmp_path, capsys):
  status = sweep.main(
    [
      f"--config={REPO / 'configs' / 'mnist.py'}:small=true",
      "--sweep=tc",
      f"--workdir={tmp_path}",
      "--dry_run",
    ]
  )
  out = capsys.readouterr().out
  assert status == 0
  assert "000_distortion=tc,model=fcn,seed=0,small=true: ok" in out
  assert "12 points, 0 failed" in out


def test_command_line_errors_are_one_line_without_a_traceback(tmp_path, capsys):
  status = sweep.main(
    [
      f"--config={REPO / 'configs' / 'mnist.py'}",
      "--sweep=table9",
      f"--workdir={tmp_path}",
    ]
  )
  err = capsys.readouterr().err
  assert status == 1
  assert "error: sweep must be one of beyond, localisation_lr" in err
  assert "Traceback" not in err
  assert sweep.main(["--sweep=tc"]) == 2  # missing required flags
