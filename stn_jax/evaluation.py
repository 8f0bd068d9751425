"""Invariance of a trained model under controlled distortions, and what
its spatial transformer does about them.

:func:`invariance_sweep` distorts clean test images (MNIST digits, GTSRB
signs) with one family of :data:`stn_jax.data.controlled.FAMILIES`
at a time, over a grid of magnitudes, with the data package's own
distortion code (:func:`~stn_jax.data.controlled.draw_params`,
:func:`~stn_jax.data.controlled.render_centred`). Example ``i``'s random
draws come from ``np.random.default_rng([seed, family, i])``, the same at
every magnitude and for every model: two runs are compared on identical
images.

For a model with a spatial transformer the sweep also records where the
composed warp sends the output frame's corners. The distortion ``D`` maps
canvas points to the clean (centred) image and the transformer's regressed
map ``T`` maps its output frame to the canvas (both output -> input, in
normalised coordinates), so ``D(T(c))`` is the point of the clean image the
transformer's output corner ``c`` shows:

* ``residual_px``: mean ``|D(T(c)) - c|`` over the 4 corners and the
  examples, in canvas pixels: how far the composed warp is from the
  identity (0 for a transformer that exactly undoes the distortion and
  does nothing else);
* ``drift_px``: mean ``|D(T_m(c)) - T_0(c)|``, the composed warp against
  the transformer's own map on the clean image (0 for a transformer whose
  output is invariant to the distortion, whatever frame it settles on);
* ``spread_px``: the standard deviation over the examples of ``T(c)``,
  averaged over corners and axes; ``constant`` is true below
  ``spread_threshold_px``: the transformer's output hardly depends on its
  input (collapse);
* ``shrunk``: how many examples' ``T`` reads a region whose side is below
  ``scale_threshold`` times the canvas's (``sqrt(area(T(frame)) / 4)``):
  a transformer that zoomed into nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from stn_jax import ops
from stn_jax.data import controlled

DEFAULT_MAGNITUDES = {
  "rotation": (-90, -60, -30, -15, 0, 15, 30, 60, 90),
  "scale": (0.5, 0.6, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5),
  "translation": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
  "projective": (0, 2, 4, 6, 8),
  "elastic": (0, 1, 2, 3),
}
SPREAD_THRESHOLD_PX = 0.5
SCALE_THRESHOLD = 0.2
# Output frame corners (x, y), normalised: the grid of (2, 2) with
# align_corners=True.
CORNERS = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float64)


def distorted_images(
  images, family: str, magnitude: float, *, size: int, seed: int = 0
):
  """Clean images with one family's distortion at one magnitude.

  Args:
    images: uint8 ``(N, S, S, C)`` clean objects.
    family: one of ``controlled.FAMILIES``.
    magnitude: its magnitude (units: ``controlled.UNITS``).
    size: the canvas side the model takes (``>= S``; the object sits
      centred at its own size).
    seed: example ``i`` draws from ``default_rng([seed, family, i])``.

  Returns:
    ``(uint8 (N, size, size, C), params)``: the images and the stacked
    object-frame parameters (one key: ``theta``, ``homography`` or
    ``control_points``).
  """
  controlled.check_family(family)
  code = controlled.FAMILIES.index(family)
  object_size = np.shape(images)[1]
  per_example = [
    controlled.draw_params(
      family,
      magnitude,
      np.random.default_rng([seed, code, i]),
      object_size=object_size,
    )
    for i in range(len(images))
  ]
  (key,) = per_example[0]
  params = {key: np.stack([p[key] for p in per_example])}
  return controlled.render_centred(images, params, size=size), params


def transformer_corners(transform: str, params) -> np.ndarray:
  """Where a transformer's map sends its output frame's corners.

  Args:
    transform: the family (``ops.TRANSFORMS``).
    params: ``(N, P)`` flat parameters.

  Returns:
    float64 ``(N, 4, 2)``: ``T(c)`` for ``c`` in :data:`CORNERS`,
    normalised input coordinates.
  """
  grid = ops.params_to_grid(
    transform, np.asarray(params, np.float32), (2, 2), align_corners=True
  )
  return np.asarray(grid, np.float64).reshape(-1, 4, 2)


def _quad_area(points):
  """Area of the quadrilaterals ``(N, 4, 2)`` in CORNERS order (shoelace
  over the ring 0, 1, 3, 2)."""
  ring = points[:, [0, 1, 3, 2]]
  x, y = ring[..., 0], ring[..., 1]
  return 0.5 * np.abs(
    np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)
  )


def transformer_record(
  corners,
  params,
  clean_corners,
  *,
  size: int,
  placement: float,
  spread_threshold_px: float = SPREAD_THRESHOLD_PX,
  scale_threshold: float = SCALE_THRESHOLD,
) -> dict:
  """The transformer statistics of one distorted test set (module
  docstring).

  Args:
    corners: ``(N, 4, 2)`` :func:`transformer_corners` on the distorted
      images.
    params: the distortions (:func:`distorted_images`).
    clean_corners: ``(N, 4, 2)`` the same on the clean images.
    size: canvas side (pixels per 2 normalised units: ``size / 2``).
    placement: canvas side / object side.
    spread_threshold_px, scale_threshold: the collapse thresholds.

  Returns:
    dict of ``residual_px``, ``drift_px``, ``spread_px`` (floats),
    ``constant`` (bool) and ``shrunk`` (int count).
  """
  px = size / 2
  composed = controlled.map_points(params, corners, placement=placement)
  scale = np.sqrt(_quad_area(corners) / 4)
  spread = float(corners.std(axis=0).mean() * px)
  return {
    "residual_px": float(
      np.linalg.norm(composed - CORNERS, axis=-1).mean() * px
    ),
    "drift_px": float(
      np.linalg.norm(composed - clean_corners, axis=-1).mean() * px
    ),
    "spread_px": spread,
    "constant": bool(spread < spread_threshold_px),
    "shrunk": int(np.sum(scale < scale_threshold)),
  }


def invariance_sweep(
  predict: Callable[[np.ndarray], np.ndarray],
  images,
  labels,
  *,
  size: int,
  families: Sequence[str] = controlled.FAMILIES,
  magnitudes: dict | None = None,
  seed: int = 0,
  transform_params: Callable[[np.ndarray], np.ndarray] | None = None,
  transform: str | None = None,
  spread_threshold_px: float = SPREAD_THRESHOLD_PX,
  scale_threshold: float = SCALE_THRESHOLD,
) -> list[dict]:
  """Test error per family and magnitude.

  Args:
    predict: uint8 ``(B, size, size, C)`` -> logits ``(B, K)`` (e.g.
      ``Restored.predict``).
    images: uint8 ``(N, S, S, C)`` clean test objects.
    labels: ``(N,)`` int.
    size: the canvas side the model takes.
    families: which of ``controlled.FAMILIES``.
    magnitudes: ``{family: sequence}``; default :data:`DEFAULT_MAGNITUDES`.
    seed: the draws' seed (:func:`distorted_images`).
    transform_params: uint8 images -> ``(B, P)`` the first transformer's
      parameters (``Restored.transform_params``); with ``transform``
      (its family) adds :func:`transformer_record`'s statistics.
    spread_threshold_px, scale_threshold: see :func:`transformer_record`.

  Returns:
    one dict per (family, magnitude), in order: ``family``,
    ``magnitude``, ``error`` (fraction of ``images``), and the
    transformer statistics when asked for.
  """
  for family in families:
    controlled.check_family(family)
  magnitudes = {**DEFAULT_MAGNITUDES, **(magnitudes or {})}
  labels = np.asarray(labels)
  with_transformer = transform_params is not None
  if with_transformer and transform is None:
    raise ValueError("transform (the family) is needed with transform_params.")
  placement = size / np.shape(images)[1]

  def evaluate(distorted):
    predictions = np.asarray(predict(distorted)).argmax(axis=-1)
    error = float(np.mean(predictions != labels))
    if not with_transformer:
      return error, None
    return error, transformer_corners(transform, transform_params(distorted))

  # Every family's identity magnitude renders the same clean images:
  # evaluated once.
  clean, clean_params = distorted_images(
    images, "translation", 0.0, size=size, seed=seed
  )
  clean_error, clean_corners = evaluate(clean)
  records = []
  for family in families:
    for magnitude in magnitudes[family]:
      if magnitude == controlled.IDENTITY[family]:
        params = clean_params
        error, corners = clean_error, clean_corners
      else:
        distorted, params = distorted_images(
          images, family, magnitude, size=size, seed=seed
        )
        error, corners = evaluate(distorted)
      record = {"family": family, "magnitude": float(magnitude), "error": error}
      if with_transformer:
        record.update(
          transformer_record(
            corners,
            params,
            clean_corners,
            size=size,
            placement=placement,
            spread_threshold_px=spread_threshold_px,
            scale_threshold=scale_threshold,
          )
        )
      records.append(record)
  return records
