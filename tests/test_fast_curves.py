"""experiments/fast_curves.py: the evaluations it reads from a run folder
or an archive, and the curves it draws from them."""

import json

import pytest
from conftest import REPO, experiment_script

ARCHIVED = (
  REPO
  / "experiments/results/runs/fast_runs/gtsrb/models/000_model=gtsrb_cnn,seed=0,size=32"
)


@pytest.fixture(scope="module")
def script():
  return experiment_script("fast_curves")


def _run_folder(tmp_path, batch_size, rows):
  (tmp_path / "config.json").write_text(json.dumps({"batch_size": batch_size}))
  (tmp_path / "metrics.jsonl").write_text(
    "".join(json.dumps(row) + "\n" for row in rows)
  )
  return str(tmp_path)


def test_a_run_folders_evaluations_in_examples_and_percent(script, tmp_path):
  folder = _run_folder(
    tmp_path,
    32,
    [
      {"step": 10, "train_error": 0.5, "test_error": 0.25},
      {"step": 10, "test_error": 0.2, "validation_error": 0.1},  # resumed
      {"step": 20, "test_error": 0.125, "test_loss": 3.0},
    ],
  )
  batch_size, found = script.evaluations(folder)
  assert batch_size == 32
  # the last value logged at a step wins; train_* is not an evaluation
  assert found == {
    "test": [(320, 20.0), (640, 12.5)],
    "validation": [(320, 10.0)],
  }


def test_an_archived_runs_evaluations_are_its_manifests(script):
  with open(ARCHIVED / "manifest.json") as f:
    manifest = json.load(f)
  batch_size, found = script.evaluations(str(ARCHIVED))
  assert batch_size == manifest["config"]["batch_size"] == 128
  want = {
    (row["step"] * 128, 100 * row["test_error"])
    for row in manifest["evaluations"]
    if "test_error" in row
  }
  assert set(found["test"]) == want and len(want) >= 4


def test_the_figures_curves_and_paper_lines(script, tmp_path, monkeypatch):
  drawn = {}
  monkeypatch.setattr(
    script.viz,
    "line_plot",
    lambda curves, path, **kw: drawn.update(curves=curves, path=path),
  )
  folder = _run_folder(
    tmp_path,
    100,
    [{"step": 1000, "test_error": 0.02}, {"step": 2000, "test_error": 0.01}],
  )
  out = str(tmp_path / "f.png")
  script.main(
    [
      f"--run=A={folder}",
      "--points=B=1000:3.0,3000:1.5",
      "--points_batch_size=50",
      "--paper=CNN=0.8",
      "--paper=0.5",
      f"--out={out}",
    ]
  )
  curves = dict(drawn["curves"])
  assert drawn["path"] == out
  assert curves["A: test (last 1.00)"] == [(0.1, 2.0), (0.2, 1.0)]
  assert curves["B: test (last 1.50)"] == [(0.05, 3.0), (0.15, 1.5)]
  # paper lines run from 0 to the most examples of any curve
  assert curves["paper CNN: 0.8%"] == [(0, 0.8), (0.2, 0.8)]
  assert curves["paper: 0.5%"] == [(0, 0.5), (0.2, 0.5)]


def test_a_real_figure_is_written(script, tmp_path):
  out = tmp_path / "figure.png"
  script.main([f"--run=CNN fast={ARCHIVED}", "--paper=1.15", f"--out={out}"])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
  "args,message",
  [
    (["--run=A=/nonexistent"], "--run 'A=/nonexistent': /nonexistent has no"),
    (
      [f"--run=A={ARCHIVED}", "--paper=CNN=high"],
      "--paper 'CNN=high': expected",
    ),
    ([], "give at least one --run or --points"),
  ],
)
def test_bad_arguments_are_one_line_naming_them(
  script, tmp_path, capsys, args, message
):
  with pytest.raises(SystemExit) as exit_info:
    script.main([*args, f"--out={tmp_path / 'f.png'}"])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
