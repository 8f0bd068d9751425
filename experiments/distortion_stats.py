"""Statistics of the distorted-MNIST test splits: digit sizes under P and
clutter density under TC, for the current protocol and the one before
dataset version 2.0.0.

Usage:
  python experiments/distortion_stats.py [--tfds_dir DIR] [--source_dir DIR]

Folded: the warp is no camera view (see ``folded_fraction``).
Digit size: the larger side of the bounding box of the pixels >= 128 (of
255); an image with no such pixel is "blank". Both protocols are drawn from
the same per-example generators, so the columns differ only by the reading.
Prints markdown tables (paste into experiments/results/data.md).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from stn_jax.data import datasets, distortions, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THRESHOLD = 128


def digit_sizes(images: np.ndarray) -> np.ndarray:
  """``(B, S, S)`` uint8 -> ``(B,)`` larger bounding-box side of the pixels
  >= THRESHOLD (0 for a blank image)."""
  ink = images >= THRESHOLD
  rows, cols = ink.any(2), ink.any(1)

  def extent(mask):
    first = mask.argmax(1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(1)
    return np.where(mask.any(1), last - first + 1, 0)

  return np.maximum(extent(rows), extent(cols))


def previous_p_params(seed: int, split: str, count: int) -> np.ndarray:
  """Homographies of the reading before 2.0.0: the input frame's corner c_i
  lands at s c_i + n_i in the output (noise on the output side)."""
  px = 2.0 / distortions.DIGIT_SIZE
  corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
  out = []
  for i in range(count):
    rng = distortions.example_rng(seed, split, i)
    scale = rng.uniform(*distortions.SCALE_PE)
    moved = scale * corners + rng.normal(
      0, distortions.CORNER_SIGMA_PX * px, (4, 2)
    )
    out.append(distortions._homography_from_points(moved, corners))
  return np.stack(out).astype(np.float32)


def folded_fraction(homographies: np.ndarray) -> float:
  """Share of warps that are no camera view: the output frame's corners
  read a non-convex quadrilateral of the input, or the input frame is not
  seen as a convex quadrilateral in front of the horizon."""
  corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float)
  folded = []
  for h in homographies.astype(np.float64):
    mapped = corners @ h.T
    reads = mapped[:, :2] / mapped[:, 2:]
    folded.append(
      not distortions.is_convex_quadrilateral(reads)
      or not distortions._frame_in_view(h)
    )
  return float(np.mean(folded))


def size_row(name: str, sizes: np.ndarray, extra: str) -> str:
  return (
    f"| {name} | {np.median(sizes):.0f} | {100 * np.mean(sizes < 12):.2f} | "
    f"{100 * np.mean((sizes > 0) & (sizes <= 5)):.2f} | "
    f"{100 * np.mean(sizes == 0):.2f} | {extra} |"
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tfds_dir", default=None)
  parser.add_argument("--source_dir", default=None)
  args = parser.parse_args(argv)
  digits, _ = sources.load_mnist("test", data_dir=args.source_dir)
  count = len(digits)
  built = {
    v: datasets.load_arrays(
      f"distorted_mnist/{v}", "test", tfds_dir=args.tfds_dir
    )
    for v in ("p", "tc")
  }
  p_old_params = {"homography": previous_p_params(0, "test", count)}
  p_old = distortions.render("p", digits, p_old_params)
  p_new = built["p"]["image"][..., 0]
  print(f"## P, test split ({count} digits), digit size in px\n")
  print("| protocol | median | % < 12 px | % <= 5 px | % blank | % folded |")
  print("|---|---|---|---|---|---|")
  print(size_row("undistorted MNIST", digit_sizes(digits), "0.00"))
  print(
    size_row(
      "P before 2.0.0 (noise on the output side)",
      digit_sizes(p_old),
      f"{100 * folded_fraction(p_old_params['homography']):.2f}",
    )
  )
  print(
    size_row(
      "P 2.0.0 (q_i = c_i / s + n_i, convex)",
      digit_sizes(p_new),
      f"{100 * folded_fraction(built['p']['homography']):.2f}",
    )
  )

  tc = built["tc"]
  digit_only = distortions.render(
    "tc",
    digits,
    {"theta": tc["theta"], "clutter": tc["clutter"][:, :0]},
    clutter_sources=digits,
  )
  clutter_only = tc["image"][..., 0].astype(int) - digit_only
  # the previous generator: crops from the central window, max-combined
  old = digit_only.copy()
  rng = np.random.default_rng(0)
  for b in range(count):
    for source, _, _, y, x in tc["clutter"][b]:
      cy, cx = rng.integers(4, 28 - 4 - 6 + 1, size=2)
      np.maximum(
        old[b, y : y + 6, x : x + 6],
        digits[source, cy : cy + 6, cx : cx + 6],
        out=old[b, y : y + 6, x : x + 6],
      )
  old_clutter = old.astype(int) - digit_only
  new_ink = (tc["image"][..., 0] >= THRESHOLD).sum((1, 2)) - (
    digit_only >= THRESHOLD
  ).sum((1, 2))
  old_ink = (old >= THRESHOLD).sum((1, 2)) - (digit_only >= THRESHOLD).sum(
    (1, 2)
  )
  print(f"\n## TC, test split ({count} canvases of 60x60)\n")
  print(
    "| clutter | mean added intensity per canvas | mean clutter pixels >= 128 |"
  )
  print("|---|---|---|")
  print(
    f"| before 2.0.0 (central crops, max) | {old_clutter.sum((1, 2)).mean():,.0f} "
    f"| {old_ink.mean():.1f} |"
  )
  print(
    f"| 2.0.0 (crops from anywhere, added and clamped) | "
    f"{clutter_only.sum((1, 2)).mean():,.0f} | {new_ink.mean():.1f} |"
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
