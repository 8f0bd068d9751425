"""The distorted-MNIST protocol of the paper, made with stn_jax's own ops.

Each example's distortion is drawn from its own random generator, seeded by
``(seed, split, index)`` (plus the epoch for on-the-fly training
distortions), so a build is identical on every machine and in any order.
Rendering of the built datasets runs ``grid_sample`` in float64 and rounds
to uint8, so float differences between CPUs cannot change a pixel.

Variants (normalised coordinates, ``align_corners=False``; parameters map
OUTPUT coordinates to the INPUT digit, like a spatial transformer's):

======= ====== =========================================================
variant size   distortion (stored parameter)
======= ====== =========================================================
plain   28x28  none (``theta`` = identity)
r       28x28  rotation uniform in [-90, 90] degrees (``theta``)
rts     42x42  rotation in [-45, 45] deg, scale in [0.7, 1.2], placed at a
               random position in the canvas (``theta``)
p       28x28  projective: output corner c_i reads the digit at
               q_i = c_i / s + n_i, s in [0.75, 1], n_i ~ N(0, 5 px) per
               coordinate, redrawn until the q_i form a convex
               quadrilateral and the digit's frame appears in the output
               as one too (``homography``, output -> input, h33 = 1)
e       28x28  scale in [0.75, 1], then the 4x4 thin-plate-spline control
               points moved by N(0, 1.5 px) (``control_points`` of
               ``tps_grid`` with its default source points)
tc      60x60  translated anywhere in the canvas (``theta``), plus 6 random
               6x6 crops of random digits as clutter, cut from anywhere
               in the 28x28 digit and added with clamping, as DeepMind's
               mnist-cluttered generator does (``clutter``: per patch
               source index, crop row, crop column, canvas row, canvas
               column)
======= ====== =========================================================

Why P reads its noise on the sampling side: a projective spatial
transformer's grid maps OUTPUT points to INPUT points, and the paper's
protocol ("scale, then move each corner by N(0, 5 px)") is read here the
same way ``e`` reads its control points: the output frame's corner c_i
samples the input at q_i. Putting the noise on the output side instead
(the input frame's corners land at s c_i + n_i) shrinks a digit whenever
the noise pulls the corners inwards: about 7% of test digits came out
smaller than 12 px, 0.2% blank, and 1.4% of the frames folded into a
non-convex quadrilateral, which no camera produces. The redraw keeps every
warp a real perspective view: the output frame reads a convex quadrilateral
of the digit, and the digit's frame is seen as a convex quadrilateral in
front of the horizon. (The first condition alone leaves about 1 in 10,000
warps so close to the horizon that the digit shrinks to nothing; the second
redraws about 1.4% of the draws, see ``experiments/results/data.md``.)

TC follows DeepMind's generator (github.com/deepmind/mnist-cluttered,
``placeDistractors``): each crop is taken from anywhere in a random digit
of the same split and the crops and the digit are summed, clamped to the
pixel range. (It was max-combined crops from the digit's central window
before dataset version 2.0.0, about 1.7x denser clutter.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.ops import grids, sampling

VARIANTS = ("plain", "r", "rts", "p", "e", "tc")
IMAGE_SIZE = {"plain": 28, "r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}
PARAM_SHAPES = {
  "plain": {"theta": (2, 3)},
  "r": {"theta": (2, 3)},
  "rts": {"theta": (2, 3)},
  "p": {"homography": (3, 3)},
  "e": {"control_points": (16, 2)},
  "tc": {"theta": (2, 3), "clutter": (6, 5)},
}
SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}
DIGIT_SIZE = 28
NUM_CLUTTER = 6
CLUTTER_SIZE = 6

ROTATION_R = 90.0
ROTATION_RTS = 45.0
SCALE_RTS = (0.7, 1.2)
SCALE_PE = (0.75, 1.0)
CORNER_SIGMA_PX = 5.0
TPS_SIGMA_PX = 1.5
# MNIST strokes lie in the central 20x20 of the 28x28 frame; RTS keeps a
# 24x24 box around them (room for rotation) on the canvas.
DIGIT_EXTENT_PX = 24


def check_variant(variant: str) -> str:
  if variant not in VARIANTS:
    raise ValueError(
      f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}."
    )
  return variant


def example_rng(
  seed: int, split: str, index: int, epoch: int | None = None
) -> np.random.Generator:
  """The generator of one example's distortion.

  The fixed (built) dataset uses ``epoch=None``; on-the-fly training draws
  a fresh distortion per epoch with ``epoch=0, 1, ...``.
  """
  if split not in SPLIT_CODES:
    raise ValueError(
      f"split must be one of {sorted(SPLIT_CODES)}; got {split!r}."
    )
  entropy = [int(seed), SPLIT_CODES[split], int(index)]
  if epoch is not None:
    entropy.append(int(epoch) + 1)
  return np.random.default_rng(entropy)


def planar_rotation(degrees):
  """The 2x2 rotation matrix of ``degrees`` (counter-clockwise in ``(x, y)``
  with y down: clockwise on screen), float64."""
  a = np.deg2rad(degrees)
  return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def is_convex_quadrilateral(points) -> bool:
  """Whether 4 points ``(4, 2)``, taken in order, bound a strictly convex
  quadrilateral (either orientation): every turn has the same sign."""
  points = np.asarray(points, np.float64)
  edges = np.roll(points, -1, axis=0) - points
  turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - (
    edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
  )
  return bool(np.all(turns > 0) or np.all(turns < 0))


def _frame_in_view(homography) -> bool:
  """Whether the input frame, seen through ``homography`` (output ->
  input), appears in the output as a convex quadrilateral wholly in front
  of the horizon, as a camera sees a plane in front of it."""
  corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float)
  seen = corners @ np.linalg.inv(homography).T
  return bool(
    np.all(seen[:, 2] > 0)
    and is_convex_quadrilateral(seen[:, :2] / seen[:, 2:])
  )


def _homography_from_points(source, target):
  """3x3 H (h33 = 1) with H (source_i, 1) ~ (target_i, 1), 4 points."""
  rows, rhs = [], []
  for (x, y), (u, v) in zip(source, target):
    rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs += [u, v]
  h = np.linalg.solve(np.array(rows), np.array(rhs))
  return np.append(h, 1.0).reshape(3, 3)


def corner_noise_homography(rng, scale, sigma):
  """A 3x3 homography (output -> input, h33 = 1): output corner c_i reads the input at q_i = c_i / scale + n_i, n_i ~
  N(0, sigma) per coordinate (normalised units), redrawn until the warp is
  a real perspective view (module docstring)."""
  corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
  while True:
    reads = corners / scale + rng.normal(0, sigma, (4, 2))
    if not is_convex_quadrilateral(reads):
      continue
    homography = _homography_from_points(corners, reads)
    if _frame_in_view(homography):
      return homography


def tps_noise_control(rng, scale, sigma):
  """``(16, 2)`` float64: the 4x4 TPS control points moved by N(0, sigma) (normalised units),
  then divided by ``scale``."""
  source = grids.tps_source_points(16).astype(np.float64)
  return (source + rng.normal(0, sigma, source.shape)) / scale


def sample_params(
  variant: str,
  rng: np.random.Generator,
  *,
  num_sources: int = 1,
) -> dict[str, np.ndarray]:
  """Draws one example's distortion parameters.

  Args:
    variant: one of ``VARIANTS``.
    rng: the example's generator (:func:`example_rng`).
    num_sources: for ``tc``, how many digits clutter can be cut from (any
      of them, as in DeepMind's generator).

  Returns:
    dict of float32 (int32 for ``clutter``) arrays, shapes ``PARAM_SHAPES``.
  """
  check_variant(variant)
  px = 2.0 / DIGIT_SIZE  # one digit pixel in normalised units
  if variant == "plain":
    return {"theta": np.eye(2, 3, dtype=np.float32)}
  if variant == "r":
    rotation = planar_rotation(rng.uniform(-ROTATION_R, ROTATION_R))
    return {
      "theta": np.concatenate([rotation, np.zeros((2, 1))], 1).astype(
        np.float32
      )
    }
  if variant == "rts":
    canvas = IMAGE_SIZE["rts"]
    rotation = planar_rotation(rng.uniform(-ROTATION_RTS, ROTATION_RTS))
    scale = rng.uniform(*SCALE_RTS)
    reach = 1 - DIGIT_EXTENT_PX * scale / canvas
    centre = rng.uniform(-reach, reach, size=2)
    # canvas point p reads digit point k R (p - centre), k = canvas / (28 s)
    linear = canvas / (DIGIT_SIZE * scale) * rotation
    theta = np.concatenate([linear, -(linear @ centre)[:, None]], 1)
    return {"theta": theta.astype(np.float32)}
  if variant == "p":
    scale = rng.uniform(*SCALE_PE)
    homography = corner_noise_homography(rng, scale, CORNER_SIGMA_PX * px)
    return {"homography": homography.astype(np.float32)}
  if variant == "e":
    scale = rng.uniform(*SCALE_PE)
    control = tps_noise_control(rng, scale, TPS_SIGMA_PX * px)
    return {"control_points": control.astype(np.float32)}
  # tc
  canvas = IMAGE_SIZE["tc"]
  reach = 1 - DIGIT_SIZE / canvas
  centre = rng.uniform(-reach, reach, size=2)
  k = canvas / DIGIT_SIZE
  theta = np.array([[k, 0, -k * centre[0]], [0, k, -k * centre[1]]])
  sources = rng.integers(0, num_sources, size=NUM_CLUTTER)
  # from anywhere in the digit, as DeepMind's generator does
  crop = rng.integers(0, DIGIT_SIZE - CLUTTER_SIZE + 1, size=(NUM_CLUTTER, 2))
  place = rng.integers(0, canvas - CLUTTER_SIZE + 1, size=(NUM_CLUTTER, 2))
  clutter = np.concatenate([sources[:, None], crop, place], 1)
  return {
    "theta": theta.astype(np.float32),
    "clutter": clutter.astype(np.int32),
  }


def sample_batch_params(
  variant: str,
  seed: int,
  split: str,
  indices,
  *,
  epoch=None,
  num_sources: int = 1,
) -> dict[str, np.ndarray]:
  """Parameters of many examples, stacked: each from its own generator.

  ``epoch`` is None (the built datasets), one epoch, or one per index.
  """
  if epoch is None or np.ndim(epoch) == 0:
    epochs = [epoch] * len(indices)
  else:
    epochs = epoch
  per_example = [
    sample_params(
      variant,
      example_rng(seed, split, i, e),
      num_sources=num_sources,
    )
    for i, e in zip(indices, epochs)
  ]
  return {
    name: np.stack([p[name] for p in per_example])
    for name in PARAM_SHAPES[check_variant(variant)]
  }


@functools.partial(jax.jit, static_argnums=(0, 3))
def warp(size, images, params, tps_placement=1.0):
  """``images`` sampled at the grid of ``params`` (the one of ``theta``,
  ``homography`` or ``control_points`` it holds) at ``(size, size)``;
  ``tps_placement`` k: the TPS's source points are the default ones / k
  (the spline of ``p -> f(k p)``)."""
  if "homography" in params:
    grid = grids.projective_grid(params["homography"], (size, size))
  elif "control_points" in params:
    source = grids.tps_source_points(params["control_points"].shape[1])
    grid = grids.tps_grid(
      params["control_points"],
      (size, size),
      source_points=source / tps_placement,
    )
  else:
    grid = grids.affine_grid(params["theta"], (size, size))
  return sampling.grid_sample(images, grid)


def render(
  variant: str,
  digits,
  params,
  *,
  clutter_sources=None,
  batch_size: int = 1024,
  exact: bool = True,
) -> np.ndarray:
  """Distorts digits.

  Args:
    variant: one of ``VARIANTS``.
    digits: uint8 ``(B, 28, 28)``.
    params: stacked parameters (:func:`sample_batch_params`).
    clutter_sources: for ``tc``, uint8 ``(M, 28, 28)`` digits that
      ``params['clutter'][:, :, 0]`` indexes.
    batch_size: examples rendered per call (bounds memory).
    exact: sample in float64 (the built datasets: no CPU's float rounding
      can change a pixel); False samples in float32, about twice as fast,
      for on-the-fly training distortions.

  Returns:
    uint8 ``(B, S, S)``, ``S = IMAGE_SIZE[variant]``.
  """
  check_variant(variant)
  digits = np.asarray(digits)
  if digits.ndim != 3 or digits.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
    raise ValueError(f"digits must have shape (B, 28, 28); got {digits.shape}.")
  out = []
  dtype = jnp.float64 if exact else jnp.float32
  with jax.enable_x64(exact):
    for start in range(0, len(digits), batch_size):
      chunk = slice(start, start + batch_size)
      images = jnp.asarray(digits[chunk, :, :, None], dtype)
      chunk_params = {
        k: jnp.asarray(v[chunk], dtype)
        for k, v in params.items()
        if k != "clutter"
      }
      warped = np.asarray(warp(IMAGE_SIZE[variant], images, chunk_params))[
        ..., 0
      ]
      out.append(np.clip(np.rint(warped), 0, 255).astype(np.uint8))
  images = (
    np.concatenate(out)
    if out
    else np.zeros((0, IMAGE_SIZE[variant], IMAGE_SIZE[variant]), np.uint8)
  )
  if variant == "tc":
    if clutter_sources is None:
      raise ValueError("clutter_sources is required for variant 'tc'.")
    images = _add_clutter(images, params["clutter"], clutter_sources)
  return images


def _add_clutter(images, clutter, sources):
  """Adds 6x6 crops of digits to the canvases, clamped to 255 (DeepMind's
  ``placeDistractors`` + ``placeSpriteRandomly``: the crops and the digit
  are summed and clamped to the pixel range)."""
  total = images.astype(np.int32)
  c = CLUTTER_SIZE
  for b in range(len(images)):
    for source, crop_y, crop_x, y, x in clutter[b]:
      total[b, y : y + c, x : x + c] += sources[
        source, crop_y : crop_y + c, crop_x : crop_x + c
      ]
  return np.minimum(total, 255).astype(np.uint8)


class OnTheFly:
  """Preprocessing step of :class:`stn_jax.data.InputPipeline`: each
  example of 28x28 undistorted digits gets a fresh ``variant`` distortion
  every epoch, drawn from ``(seed, 'train', index, epoch)``; the batch gains
  the drawn parameters (as the built datasets store them).

  Args:
    variant: one of :data:`VARIANTS`.
  """

  def __init__(self, variant: str):
    self.variant = check_variant(variant)

  def output_shape(self, shape) -> tuple[int, int, int]:
    """The distorted image shape for input images of ``shape`` (which must
    be the 28x28x1 digits)."""
    if tuple(shape) != (DIGIT_SIZE, DIGIT_SIZE, 1):
      raise ValueError(
        f"on-the-fly {self.variant!r} distortion needs "
        f"{DIGIT_SIZE}x{DIGIT_SIZE}x1 undistorted digits; got "
        f"images of shape {tuple(shape)}."
      )
    size = IMAGE_SIZE[self.variant]
    return (size, size, 1)

  def __call__(self, batch, *, arrays, indices, epochs, seed):
    params = sample_batch_params(
      self.variant,
      seed,
      "train",
      indices,
      epoch=epochs,
      num_sources=len(arrays["image"]),
    )
    images = render(
      self.variant,
      batch["image"][..., 0],
      params,
      clutter_sources=arrays["image"][..., 0],
      exact=False,
    )
    return {**batch, "image": images[..., None], **params}
