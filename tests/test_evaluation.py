"""Invariance sweeps, transformer statistics, calibration and the
``python -m stn_jax.evaluate`` command."""

import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MNIST, REPO, pythonpath, tiny
from flax import nnx

from stn_jax import calibration, evaluation, models
from stn_jax.data import controlled

FAMILIES = controlled.FAMILIES
SMALL_GRID = {
  "rotation": (-30, 0, 90),
  "scale": (0.7, 1.0),
  "translation": (0.0, 0.3),
  "projective": (0, 4),
  "elastic": (0, 2),
}


def _digits(n=12, seed=0):
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 28, 28, 1), np.uint8)
  images[:, 6:22, 9:19] = rng.integers(0, 256, (n, 16, 10, 1))
  return images, rng.integers(0, 10, n)


def _linear_classifier(size, seed=1):
  weights = np.random.default_rng(seed).normal(size=(size * size, 10))
  return lambda x: x.reshape(len(x), -1).astype(np.float64) @ weights


# --- distortions at a given magnitude --------------------------------------


@pytest.mark.parametrize("size", [28, 42])
def test_the_identity_magnitude_renders_the_clean_images(size):
  images, _ = _digits()
  offset = (size - 28) // 2
  for family in FAMILIES:
    out, _ = evaluation.distorted_images(
      images, family, controlled.IDENTITY[family], size=size
    )
    assert out.shape == (len(images), size, size, 1)
    np.testing.assert_array_equal(
      out[:, offset : offset + 28, offset : offset + 28], images
    )
    assert out.sum() == images.sum()  # nothing else in the canvas


def test_colour_signs_at_their_own_size():
  signs = np.random.default_rng(0).integers(1, 256, (4, 32, 32, 3))
  signs = signs.astype(np.uint8)
  same, _ = evaluation.distorted_images(signs, "elastic", 0, size=32)
  np.testing.assert_array_equal(same, signs)
  half, _ = evaluation.distorted_images(signs, "scale", 0.5, size=32)
  assert half.shape == signs.shape
  assert half[:, :7].max() == 0 and half[:, 9:23, 9:23].min() > 0


def test_rotation_by_90_degrees_is_a_quarter_turn():
  images, _ = _digits()
  out, _ = evaluation.distorted_images(images, "rotation", 90, size=28)
  turned = [np.rot90(images, k, axes=(1, 2)) for k in (1, -1)]
  assert any(np.array_equal(out, t) for t in turned)


def test_draws_are_fixed_by_the_seed():
  images, _ = _digits()
  first, _ = evaluation.distorted_images(images, "translation", 0.2, size=42)
  again, _ = evaluation.distorted_images(images, "translation", 0.2, size=42)
  other, _ = evaluation.distorted_images(
    images, "translation", 0.2, size=42, seed=1
  )
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_map_points_agrees_with_the_rendering_grid():
  """The composed maps use the distortion the images were rendered with:
  where the render moves a bright spot at the object's centre, map_points
  reads the object's centre, on a canvas larger than the object (a
  translation of 8.4 px, and a scale that must keep the centre)."""
  image = np.zeros((1, 28, 28, 1), np.uint8)
  image[0, 13:15, 13:15] = 255  # around the centre
  for family, magnitude in (("scale", 0.5), ("translation", 0.2)):
    out, params = evaluation.distorted_images(image, family, magnitude, size=42)
    ys, xs = np.nonzero(out[0, ..., 0] > 0)
    centre = np.array([(xs.mean() + 0.5) / 21 - 1, (ys.mean() + 0.5) / 21 - 1])
    # the canvas point there reads the object's centre
    read = controlled.map_points(params, centre[None, None], placement=1.5)
    np.testing.assert_allclose(read[0, 0], 0, atol=0.06)


def test_bad_family_and_magnitude():
  with pytest.raises(ValueError, match="family must be one of"):
    controlled.draw_params("shear", 1, np.random.default_rng(0))
  with pytest.raises(ValueError, match="> 0"):
    controlled.draw_params("scale", 0, np.random.default_rng(0))


# --- the sweep --------------------------------------------------------------


def test_magnitude_zero_equals_the_plain_test_error():
  images, labels = _digits(40)
  predict = _linear_classifier(28)
  records = evaluation.invariance_sweep(
    predict, images, labels, size=28, magnitudes=SMALL_GRID
  )
  plain = float(np.mean(predict(images).argmax(-1) != labels))
  at_identity = [
    r for r in records if r["magnitude"] == controlled.IDENTITY[r["family"]]
  ]
  assert len(at_identity) == len(FAMILIES)
  assert all(r["error"] == plain for r in at_identity)
  assert [(r["family"], r["magnitude"]) for r in records] == [
    (f, float(m)) for f in FAMILIES for m in SMALL_GRID[f]
  ]
  # The image-dependent classifier does change elsewhere (a real sweep).
  assert len({r["error"] for r in records}) > 1


def test_a_model_that_ignores_the_image_has_flat_curves():
  images, labels = _digits(30)
  constant = lambda x: np.tile(np.eye(10)[3], (len(x), 1))
  records = evaluation.invariance_sweep(
    constant, images, labels, size=42, magnitudes=SMALL_GRID
  )
  expected = float(np.mean(labels != 3))
  assert [r["error"] for r in records] == [expected] * len(records)


def test_a_rotation_invariant_model_has_a_flat_rotation_curve():
  """Averaged over the rotation orbit the sweep draws from, a classifier
  is exactly invariant on that grid of quarter turns."""
  images, labels = _digits(30)
  base = _linear_classifier(28)
  orbit = lambda x: sum(base(np.rot90(x, k, axes=(1, 2))) for k in range(4))
  records = evaluation.invariance_sweep(
    orbit,
    images,
    labels,
    size=28,
    families=("rotation",),
    magnitudes={"rotation": (-90, 0, 90)},
  )
  assert len({r["error"] for r in records}) == 1


def _identity_transformer():
  model = models.get_model(
    "st_cnn",
    in_shape=(42, 42, 1),
    num_classes=10,
    channels=(4, 4),
    localisation_channels=(4, 4),
    localisation_hidden=8,
    rngs=nnx.Rngs(0),
  )
  params = lambda x: np.asarray(
    models.first_transform_params(model, jnp.asarray(x, jnp.float32) / 255)
  )
  return model, params


def test_transformer_statistics_of_the_identity_transformer():
  images, labels = _digits(6)
  model, params = _identity_transformer()
  predict = lambda x: np.asarray(model(jnp.asarray(x, jnp.float32) / 255))
  records = evaluation.invariance_sweep(
    predict,
    images,
    labels,
    size=42,
    families=("rotation",),
    magnitudes={"rotation": (0, 30, 90)},
    transform_params=params,
    transform="affine",
  )
  by_angle = {r["magnitude"]: r for r in records}
  for record in records:
    # At initialisation the transformer is the identity for every input.
    assert record["spread_px"] < 1e-4 and record["constant"]
    assert record["shrunk"] == 0
    # So the composed warp is the rotation itself: each corner, at
    # sqrt(2) normalised units, moves 2 sqrt(2) sin(angle / 2).
    angle = np.deg2rad(record["magnitude"])
    expected = 2 * np.sqrt(2) * np.sin(angle / 2) * 21
    np.testing.assert_allclose(record["residual_px"], expected, atol=1e-3)
    np.testing.assert_allclose(record["drift_px"], expected, atol=1e-3)
  assert by_angle[0.0]["residual_px"] < 1e-4


def test_a_shrunk_transformer_is_counted():
  images, labels = _digits(5)
  tiny_theta = lambda x: np.tile([0.1, 0, 0, 0, 0.1, 0], (len(x), 1))
  records = evaluation.invariance_sweep(
    lambda x: np.zeros((len(x), 10)),
    images,
    labels,
    size=42,
    families=("scale",),
    magnitudes={"scale": (1.0,)},
    transform_params=tiny_theta,
    transform="affine",
  )
  assert records[0]["shrunk"] == 5 and records[0]["constant"]


# --- calibration ------------------------------------------------------------


def test_ece_of_an_exactly_calibrated_predictor_is_zero():
  # In each bin, accuracy equals the confidence: 0.75 with 3 of 4 right,
  # 0.6 with 3 of 5 right (2 classes, the label says who is right).
  confidence = np.array([0.75] * 4 + [0.6] * 5)
  correct = np.array([1, 1, 1, 0] + [1, 1, 1, 0, 0], bool)
  probs = np.stack([confidence, 1 - confidence], -1)
  labels = np.where(correct, 0, 1)
  np.testing.assert_allclose(
    calibration.expected_calibration_error(probs, labels), 0, atol=1e-6
  )


def test_ece_of_a_sampled_calibrated_predictor_is_near_zero():
  rng = np.random.default_rng(0)
  n = 200_000
  confidence = rng.uniform(0.5, 1.0, n)
  labels = np.where(rng.uniform(size=n) < confidence, 0, 1)
  probs = np.stack([confidence, 1 - confidence], -1)
  assert calibration.expected_calibration_error(probs, labels) < 0.005


def test_ece_of_an_overconfident_predictor_is_its_gap():
  # Always 0.8 confident, right 60% of the time: ECE = 0.2. Plus a second
  # bin, 0.95 confident and always right: (10 * 0.2 + 10 * 0.05) / 20.
  probs = np.array([[0.8, 0.2]] * 10 + [[0.05, 0.95]] * 10)
  labels = np.array([0] * 6 + [1] * 4 + [1] * 10)
  np.testing.assert_allclose(
    calibration.expected_calibration_error(probs[:10], labels[:10]),
    0.2,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    calibration.expected_calibration_error(probs, labels), 0.125, atol=1e-6
  )
  # Logits of the same probabilities give the same value, told apart
  # automatically or by from_logits.
  logits = np.log(probs) + 3.0
  for from_logits in (None, True):
    np.testing.assert_allclose(
      calibration.expected_calibration_error(
        logits, labels, from_logits=from_logits
      ),
      0.125,
      atol=1e-6,
    )
  counts, accuracy, confidence = (
    np.asarray(a) for a in calibration.reliability_bins(probs, labels)
  )
  assert counts.sum() == 20 and counts[11] == 10 and counts[14] == 10
  np.testing.assert_allclose(accuracy[[11, 14]], [0.6, 1.0], atol=1e-6)
  np.testing.assert_allclose(confidence[[11, 14]], [0.8, 0.95], atol=1e-6)


def test_ece_under_jit_and_vmap():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 50, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, (3, 50)))
  eager = [
    calibration.expected_calibration_error(logits[i], labels[i])
    for i in range(3)
  ]
  jitted = jax.jit(calibration.expected_calibration_error, static_argnums=2)
  np.testing.assert_allclose(jitted(logits[0], labels[0], 15), eager[0], 1e-6)
  mapped = jax.vmap(calibration.expected_calibration_error)(logits, labels)
  np.testing.assert_allclose(mapped, eager, rtol=1e-6)
  assert all(0 < float(e) < 1 for e in eager)


def test_ece_refuses_bad_shapes():
  with pytest.raises(ValueError, match="probs_or_logits must have shape"):
    calibration.expected_calibration_error(np.zeros(3), np.zeros(3, int))
  with pytest.raises(ValueError, match="labels must have shape"):
    calibration.expected_calibration_error(np.zeros((3, 2)), np.zeros(2, int))
  with pytest.raises(ValueError, match="num_bins must be a positive int"):
    calibration.expected_calibration_error(np.zeros((3, 2)), [0, 1, 0], 0)


# --- the command ------------------------------------------------------------


def _evaluate(*args):
  return subprocess.run(
    [sys.executable, "-m", "stn_jax.evaluate", *map(str, args)],
    capture_output=True,
    text=True,
    env={"PYTHONPATH": pythonpath(REPO), "PATH": "/usr/bin:/bin"},
    cwd=REPO,
  )


@pytest.mark.parametrize(
  "args,status,message",
  [
    (["invariance"], 2, "--workdir"),
    (["rotate", "--workdir=."], 1, "expected one command"),
    (["invariance", "--workdir=.", "--families=shear"], 1, "family must be"),
    # found by hostile_cases.py: read the data, then failed elsewhere
    (["invariance", "--workdir=.", "--families="], 1, "--families is empty"),
    (["invariance", "--workdir=/nonexistent"], 1, "is not a folder"),
  ],
)
def test_the_command_refuses_bad_arguments_in_one_line(args, status, message):
  result = _evaluate(*args)
  assert result.returncode == status, result.stderr
  assert "Traceback" not in result.stderr
  first = result.stderr.strip().splitlines()[0]
  assert first.startswith("python -m stn_jax.evaluate: error:")
  assert message in first


def test_the_commands_on_a_tiny_run(tiny_tfds, tmp_path):
  from stn_jax import train

  run = tmp_path / "run"
  config = tiny(MNIST.get_config("model=st_cnn,small=true"), tiny_tfds)
  train.train_and_evaluate(config, str(run))
  shutil.copytree(run, tmp_path / "baseline")  # the same model, renamed
  out = tmp_path / "out"
  result = _evaluate(
    "invariance",
    f"--workdir={run}",
    f"--baseline={tmp_path / 'baseline'}",
    f"--out={out}",
    "--max_examples=8",
    "--families=rotation,elastic",
  )
  assert result.returncode == 0, result.stderr
  table = (out / "invariance.md").read_text()
  assert "| rotation | -90 |" in table and "| elastic | 3 |" in table
  assert "its spatial transformer" in table
  # one column per run; the same model gives the same errors
  rows = [r for r in table.splitlines() if r.startswith("| rotation |")]
  assert "run error %" in table and "baseline error %" in table
  angles = len(evaluation.DEFAULT_MAGNITUDES["rotation"])
  assert len(rows) == 3 * angles  # errors, then each run's transformer
  for row in rows[:angles]:  # the error table comes first
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and cells[2] == cells[3]
  assert (out / "invariance_rotation.png").is_file()
  assert not (out / "invariance_scale.png").exists()
  result = _evaluate("calibration", f"--workdir={run}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "expected calibration error" in (out / "calibration.md").read_text()
  assert (out / "reliability_run.png").is_file()
