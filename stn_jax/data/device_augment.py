"""On-the-fly distortion and affine jitter drawn and rendered on the device,
inside the training step.

The same protocols as the host steps (:class:`stn_jax.data.distortions.
OnTheFly` and :class:`stn_jax.data.augment.RandomAffine`), with the same
parameter ranges and the same rounding (every image is rendered in float32
with stn_jax's own grids, rounded and clipped to the uint8 range, then
normalised), but drawn with ``jax.random`` instead of NumPy: example
``index`` in ``epoch`` of a run with ``seed`` gets the key
``fold_in(fold_in(fold_in(key(seed), stream), index), epoch)``. The stream
is therefore reproducible and a resumed run redraws exactly what it would
have drawn, but it is a different stream from the host steps' (a run does
not switch between them: ``config.augment_on_device`` is part of a run's
identity).

Used through :class:`stn_jax.data.pipeline.DeviceInput` (``augment=``):
only int32 indices, epochs and seeds travel to the device per step.

P's redraw ("redraw until the corners' reads form a convex quadrilateral
and the frame is seen in front of the horizon") becomes a fixed number of
candidate draws per example (:data:`PROJECTIVE_TRIES`), of which the first
valid one is kept: about 1.4% of single draws are invalid, so all 8 fail
with probability about 1e-15; such an example would get the undistorted
scaled digit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.data import distortions as d
from stn_jax.data.augment import RandomAffine as _HostRandomAffine
from stn_jax.ops import grids, sampling

# Tell the two protocols' key streams apart (any distinct constants).
_STREAM_DISTORTION = 0xD157
_STREAM_JITTER = 0xA06
PROJECTIVE_TRIES = 8
_CORNERS = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)


def example_keys(seed, index, epoch, stream: int) -> jax.Array:
  """One key per example, ``(B,)``, from int arrays ``seed``, ``index`` and
  ``epoch`` of shape ``(B,)`` (traceable)."""

  def one(s, i, e):
    key = jax.random.fold_in(jax.random.key(s), stream)
    return jax.random.fold_in(jax.random.fold_in(key, i), e)

  return jax.vmap(one)(seed, index, epoch)


def _rotation(degrees):
  a = jnp.deg2rad(degrees)
  c, s = jnp.cos(a), jnp.sin(a)
  return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def _affine(linear, shift):
  """(2, 3) from a (2, 2) linear part and a (2,) translation."""
  return jnp.concatenate([linear, shift[:, None]], axis=1)


def is_convex_quadrilateral(points) -> jax.Array:
  """Whether ``(..., 4, 2)`` points, in order, bound a strictly convex
  quadrilateral (either orientation); False for non-finite points."""
  edges = jnp.roll(points, -1, axis=-2) - points
  following = jnp.roll(edges, -1, axis=-2)
  turns = edges[..., 0] * following[..., 1] - edges[..., 1] * following[..., 0]
  return jnp.all(turns > 0, axis=-1) | jnp.all(turns < 0, axis=-1)


def homography_from_points(source, target) -> jax.Array:
  """``(3, 3)`` H (h33 = 1) with ``H (source_i, 1) ~ (target_i, 1)`` for
  four ``(4, 2)`` point pairs."""
  x, y = source[:, 0], source[:, 1]
  u, v = target[:, 0], target[:, 1]
  one, zero = jnp.ones_like(x), jnp.zeros_like(x)
  rows_u = jnp.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 1)
  rows_v = jnp.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 1)
  system = jnp.stack([rows_u, rows_v], 1).reshape(8, 8)
  rhs = jnp.stack([u, v], 1).reshape(8)
  h = jnp.linalg.solve(system, rhs)
  return jnp.append(h, 1.0).reshape(3, 3)


def _frame_in_view(homography) -> jax.Array:
  """The input frame, seen through ``homography`` (output -> input), is a
  convex quadrilateral in front of the horizon (see the host protocol)."""
  corners = jnp.concatenate([_CORNERS, jnp.ones((4, 1), jnp.float32)], 1)
  seen = corners @ jnp.linalg.inv(homography).T
  return jnp.all(seen[:, 2] > 0) & is_convex_quadrilateral(
    seen[:, :2] / seen[:, 2:]
  )


def _draw(variant: str, key, num_sources: int) -> dict:
  """One example's parameters (``PARAM_SHAPES[variant]``) and, for the
  tests, the draws behind them (``scale``, ``noise``, ``angle``...)."""
  px = 2.0 / d.DIGIT_SIZE
  if variant == "plain":
    return {"theta": jnp.eye(2, 3, dtype=jnp.float32)}
  if variant == "r":
    angle = jax.random.uniform(
      key, (), minval=-d.ROTATION_R, maxval=d.ROTATION_R
    )
    theta = _affine(_rotation(angle), jnp.zeros(2))
    return {"theta": theta, "angle": angle}
  if variant == "rts":
    k_angle, k_scale, k_centre = jax.random.split(key, 3)
    angle = jax.random.uniform(
      k_angle, (), minval=-d.ROTATION_RTS, maxval=d.ROTATION_RTS
    )
    scale = jax.random.uniform(
      k_scale, (), minval=d.SCALE_RTS[0], maxval=d.SCALE_RTS[1]
    )
    canvas = d.IMAGE_SIZE["rts"]
    reach = 1 - d.DIGIT_EXTENT_PX * scale / canvas
    centre = jax.random.uniform(k_centre, (2,), minval=-1.0, maxval=1.0) * reach
    linear = canvas / (d.DIGIT_SIZE * scale) * _rotation(angle)
    return {
      "theta": _affine(linear, -(linear @ centre)),
      "angle": angle,
      "scale": scale,
      "centre": centre,
    }
  if variant == "p":
    k_scale, k_noise = jax.random.split(key)
    scale = jax.random.uniform(
      k_scale, (), minval=d.SCALE_PE[0], maxval=d.SCALE_PE[1]
    )
    noise = (
      d.CORNER_SIGMA_PX
      * px
      * jax.random.normal(k_noise, (PROJECTIVE_TRIES, 4, 2))
    )
    reads = _CORNERS / scale + noise
    candidates = jax.vmap(homography_from_points, (None, 0))(_CORNERS, reads)
    valid = is_convex_quadrilateral(reads) & jax.vmap(_frame_in_view)(
      candidates
    )
    first = jnp.argmax(valid)
    fallback = jnp.diag(jnp.stack([1 / scale, 1 / scale, jnp.ones(())]))
    homography = jnp.where(jnp.any(valid), candidates[first], fallback)
    return {
      "homography": homography,
      "scale": scale,
      "noise": noise[first],
      "tries": first + 1,
      "valid": jnp.any(valid),
    }
  if variant == "e":
    k_scale, k_noise = jax.random.split(key)
    scale = jax.random.uniform(
      k_scale, (), minval=d.SCALE_PE[0], maxval=d.SCALE_PE[1]
    )
    source = jnp.asarray(grids.tps_source_points(16), jnp.float32)
    noise = d.TPS_SIGMA_PX * px * jax.random.normal(k_noise, source.shape)
    return {
      "control_points": (source + noise) / scale,
      "scale": scale,
      "noise": noise,
    }
  # tc
  k_centre, k_source, k_crop, k_place = jax.random.split(key, 4)
  canvas = d.IMAGE_SIZE["tc"]
  reach = 1 - d.DIGIT_SIZE / canvas
  centre = jax.random.uniform(k_centre, (2,), minval=-reach, maxval=reach)
  k = canvas / d.DIGIT_SIZE
  theta = _affine(k * jnp.eye(2), -k * centre)
  n, c = d.NUM_CLUTTER, d.CLUTTER_SIZE
  sources = jax.random.randint(k_source, (n, 1), 0, num_sources)
  crop = jax.random.randint(k_crop, (n, 2), 0, d.DIGIT_SIZE - c + 1)
  place = jax.random.randint(k_place, (n, 2), 0, canvas - c + 1)
  clutter = jnp.concatenate([sources, crop, place], 1).astype(jnp.int32)
  return {"theta": theta, "clutter": clutter, "centre": centre}


def sample_params(
  variant: str, keys, *, num_sources: int = 1, with_draws: bool = False
) -> dict:
  """Distortion parameters of many examples, one per key ``(B,)``, in the
  layout of :func:`stn_jax.data.distortions.sample_batch_params` (float32;
  int32 ``clutter``). ``with_draws`` adds the draws behind them (e.g.
  ``scale``, ``angle``, the corner ``noise``), for checking the ranges."""
  d.check_variant(variant)
  params = jax.vmap(lambda k: _draw(variant, k, num_sources))(keys)
  if with_draws:
    return params
  return {name: params[name] for name in d.PARAM_SHAPES[variant]}


def _round_to_pixels(images):
  """What storing as uint8 does to a rendered float image (as the host
  steps do): round, then clip to [0, 255]."""
  return jnp.clip(jnp.rint(images), 0, 255)


def add_clutter(images, clutter, sources):
  """Adds the 6x6 crops ``clutter`` ``(B, 6, 5)`` (source, crop row, crop
  column, canvas row, canvas column) of ``sources`` ``(M, 28, 28, 1)`` to the
  canvases ``images`` ``(B, S, S, 1)``, clamped to 255 (as
  :func:`stn_jax.data.distortions.render` does for ``tc``)."""
  size = images.shape[1]
  c = d.CLUTTER_SIZE

  def patch(row):
    crop = jax.lax.dynamic_slice(
      sources[row[0]], (row[1], row[2], 0), (c, c, 1)
    )
    canvas = jnp.zeros((size, size, 1), images.dtype)
    return jax.lax.dynamic_update_slice(
      canvas, crop.astype(images.dtype), (row[3], row[4], 0)
    )

  patches = jax.vmap(jax.vmap(patch))(clutter)
  return jnp.minimum(images + patches.sum(axis=1), 255)


def render(variant: str, digits, params, *, clutter_sources=None):
  """Distorts digits ``(B, 28, 28, 1)`` (any real dtype) with ``params``
  (:func:`sample_params`): float32 ``(B, S, S, 1)`` of whole numbers in
  [0, 255], ``S = IMAGE_SIZE[variant]``. The device twin of
  :func:`stn_jax.data.distortions.render` (``exact=False``)."""
  d.check_variant(variant)
  size = (d.IMAGE_SIZE[variant],) * 2
  if variant == "p":
    grid = grids.projective_grid(params["homography"], size)
  elif variant == "e":
    grid = grids.tps_grid(params["control_points"], size)
  else:
    grid = grids.affine_grid(params["theta"], size)
  images = _round_to_pixels(
    sampling.grid_sample(jnp.asarray(digits, jnp.float32), grid)
  )
  if variant == "tc":
    if clutter_sources is None:
      raise ValueError("clutter_sources is required for variant 'tc'.")
    images = add_clutter(images, params["clutter"], clutter_sources)
  return images


class OnTheFly:
  """Fresh distortion of undistorted 28x28 digits every epoch, drawn and
  rendered inside the step (the device twin of
  :class:`stn_jax.data.distortions.OnTheFly`).

  Args:
    variant: one of :data:`stn_jax.data.distortions.VARIANTS`.
  """

  def __init__(self, variant: str):
    self._host = d.OnTheFly(variant)
    self.variant = self._host.variant

  def __repr__(self) -> str:
    return f"device_augment.OnTheFly({self.variant!r})"

  def output_shape(self, shape) -> tuple[int, int, int]:
    """The distorted image shape (checks the input is 28x28x1)."""
    return self._host.output_shape(shape)

  def __call__(self, images, *, sources, index, epoch, seed):
    """uint8 digits ``(B, 28, 28, 1)`` of examples ``index`` (``(B,)``, as
    ``epoch`` and ``seed``) -> float32 ``(B, S, S, 1)`` whole numbers;
    ``sources``: the whole split's images (``tc`` cuts clutter from them)."""
    keys = example_keys(seed, index, epoch, _STREAM_DISTORTION)
    params = sample_params(self.variant, keys, num_sources=sources.shape[0])
    return render(self.variant, images, params, clutter_sources=sources)


def jitter_theta(keys, rotation: float, scale: float, translate: float):
  """``affine_grid`` matrices ``(B, 2, 3)`` of random affine jitter, one per
  key, with the ranges and geometry of
  :meth:`stn_jax.data.augment.RandomAffine.sample_theta`."""

  def one(key):
    k_angle, k_scale, k_shift = jax.random.split(key, 3)
    angle = jax.random.uniform(k_angle, (), minval=-rotation, maxval=rotation)
    s = jax.random.uniform(k_scale, (), minval=1 - scale, maxval=1 + scale)
    shift = 2 * jax.random.uniform(
      k_shift, (2,), minval=-translate, maxval=translate
    )
    # input x appears at p = s R x + shift: p reads x = R^T (p - shift) / s
    linear = _rotation(angle).T / s
    return _affine(linear, -(linear @ shift))

  return jax.vmap(one)(keys)


class RandomAffine:
  """Rotation, scale and translation jitter drawn and applied inside the
  step (the device twin of :class:`stn_jax.data.augment.RandomAffine`:
  same arguments, ranges and ``border`` resampling)."""

  def __init__(
    self, rotation: float = 0.0, scale: float = 0.0, translate: float = 0.0
  ):
    host = _HostRandomAffine(rotation, scale, translate)  # checks the ranges
    self.rotation, self.scale, self.translate = (
      host.rotation,
      host.scale,
      host.translate,
    )
    self._host = host

  def __repr__(self) -> str:
    return f"device_augment.{self._host!r}"

  def output_shape(self, shape) -> tuple[int, ...]:
    """Images keep their shape ``(H, W, C)``."""
    return self._host.output_shape(shape)

  def __call__(self, images, *, sources, index, epoch, seed):
    """uint8 ``(B, H, W, C)`` -> jittered float32 whole numbers."""
    del sources
    keys = example_keys(seed, index, epoch, _STREAM_JITTER)
    theta = jitter_theta(keys, self.rotation, self.scale, self.translate)
    grid = grids.affine_grid(theta, images.shape[1:3])
    warped = sampling.grid_sample(
      jnp.asarray(images, jnp.float32), grid, padding_mode="border"
    )
    return _round_to_pixels(warped)
