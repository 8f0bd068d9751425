"""Figures from workdirs: transformer grid, GIF, saliency, error plot."""

import numpy as np
import pytest
from conftest import GTSRB, MNIST, tiny
from PIL import Image

from stn_jax import train, viz
from stn_jax.data import preview


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


def test_a_transformer_after_stage_2_draws_its_smaller_output(
  tiny_tfds, tmp_path
):
  # Its first transformer samples the 16x16 stage-2 features of 32x32
  # inputs: transformer.png, the viz grid and the GIF draw each 16x16
  # output at the inputs' tile size (once a run failed at its end here).
  config = tiny(
    GTSRB.get_config("model=preact_resnet_stn,placement=stage2,small=true"),
    tiny_tfds,
    snapshot_every=1,
  )
  run = tmp_path / "run"
  results = train.train_and_evaluate(config, str(run))
  assert 0 <= results["test_error"] <= 1
  snapshot = np.load(run / "snapshots" / "00000002.npy")
  assert snapshot.shape[1:] == (16, 16, 3)  # the 16x16 stage-2 grid
  with Image.open(run / "transformer.png") as image:
    stage2 = image.size
  input_config = tiny(
    GTSRB.get_config("model=preact_resnet_stn,placement=input,small=true"),
    tiny_tfds,
  )
  train.train_and_evaluate(input_config, str(tmp_path / "input"))
  with Image.open(tmp_path / "input" / "transformer.png") as image:
    assert image.size == stage2  # the same tiles, 32x32 times 3
  paths = viz.make_figures(
    str(run), str(tmp_path / "figures"), figures=("transformer", "gif")
  )
  assert len(paths) == 2
  for path in paths:
    with Image.open(path) as image:
      assert image.size[0] > 100 and image.size[1] > 100


def test_grid_image_draws_tiles_of_any_size_at_the_largest():
  small = np.full((2, 2), 200, np.uint8)
  large = np.zeros((4, 6, 3), np.uint8)
  large[..., 0] = 255
  image = np.asarray(
    preview.grid_image([small, large], ["a", "b"], columns=2, scale=1)
  )
  pad = 4
  # Tiles are 4 high and 6 wide; the 2x2 tile is upsampled by nearest
  # neighbour to fill it, gray in every channel.
  np.testing.assert_array_equal(image[pad : pad + 4, pad : pad + 6], 200)
  right = pad + 6 + pad
  np.testing.assert_array_equal(image[pad : pad + 4, right : right + 6], large)
  stacked = preview.grid_image(
    np.stack([large, large]), ["a", "b"], columns=2, scale=1
  )
  assert stacked.size == (2 * (6 + pad) + pad, 4 + 12 + 2 * pad)


@pytest.mark.parametrize(
  "images,labels,match",
  [
    (
      [np.zeros((2, 2, 2), np.uint8)],
      ["a"],
      r"\(H, W, C\).*got a tile of shape \(2, 2, 2\)",
    ),
    (
      [np.zeros((2, 2), np.uint8)],
      ["a", "b"],
      "labels: expected one per image",
    ),
  ],
)
def test_grid_image_names_a_bad_tile_or_label_count(images, labels, match):
  with pytest.raises(ValueError, match=match):
    preview.grid_image(images, labels)


def test_pairs_image_needs_one_output_and_label_per_input():
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match=r"got 2 outputs and 3 labels"):
    preview.pairs_image(images, images[:2], [0, 1, 2], title="t")
  image = preview.pairs_image(
    images, np.zeros((3, 4, 4, 1), np.uint8), [0, 1, 2], title="t", columns=6
  )
  assert image.size == (6 * (24 + 4) + 4, 16 + 24 + 12 + 2 * 4)
