"""Figures from workdirs: transformer grid, GIF, saliency, error plot."""

from conftest import MNIST, tiny
from PIL import Image

from stn_jax import train, viz


def test_figures_from_an_st_run_and_a_baseline(tiny_tfds, tmp_path):
  runs = {}
  for model in ("st_cnn", "cnn"):
    config = tiny(
      MNIST.get_config(f"model={model},small=true"),
      tiny_tfds,
      num_steps=4,
      eval_every=2,
      snapshot_every=1,
    )
    runs[model] = tmp_path / model
    train.train_and_evaluate(config, str(runs[model]))
  paths = viz.make_figures(
    str(runs["st_cnn"]), str(tmp_path / "figures"), baseline=str(runs["cnn"])
  )
  names = sorted(p.rsplit("/", 1)[1] for p in paths)
  assert names == [
    "error_vs_steps_st_cnn.png",
    "saliency_st_cnn.png",
    "transformer_over_training_st_cnn.gif",
    "transformer_st_cnn.png",
  ]
  with Image.open(
    tmp_path / "figures" / "transformer_over_training_st_cnn.gif"
  ) as gif:
    assert gif.n_frames == 5  # steps 0 (identity) to 4
  assert sorted(p.name for p in (runs["st_cnn"] / "snapshots").iterdir()) == [
    f"{step:08d}.npy" for step in range(5)
  ]
  assert not (runs["cnn"] / "snapshots").exists()  # no transformer
  for path in paths:
    with Image.open(path) as image:
      assert image.size[0] > 100 and image.size[1] > 100


def test_only_the_named_figures_with_a_chosen_name(tiny_tfds, tmp_path):
  config = tiny(MNIST.get_config("model=st_fcn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  paths = viz.make_figures(
    str(tmp_path / "run"),
    str(tmp_path / "figures"),
    figures=("transformer",),
    name="rts",
  )
  assert [p.rsplit("/", 1)[1] for p in paths] == ["transformer_rts.png"]
  assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
    "transformer_rts.png"
  ]


def test_command_line_writes_into_the_workdir_by_default(
  tiny_tfds, tmp_path, capsys
):
  config = tiny(MNIST.get_config("model=st_fcn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  status = viz.main([f"--workdir={tmp_path / 'run'}", "--figures=transformer"])
  assert status == 0
  assert (tmp_path / "run" / "figures" / "transformer_run.png").is_file()
  assert viz.main(["--figures=transformer"]) == 2  # --workdir is required


def test_an_empty_workdir_flag_is_named(tmp_path, capsys, monkeypatch):
  """Found by experiments/hostile_cases.py: ``--workdir=`` said "config.json
  not found: is '' a stn_jax workdir?"."""
  monkeypatch.chdir(tmp_path)
  assert viz.main(["--workdir="]) == 1
  err = capsys.readouterr().err.strip()
  assert (
    err
    == "python -m stn_jax.viz: error: --workdir is empty; give a run's folder."
  )
  assert list(tmp_path.iterdir()) == []
