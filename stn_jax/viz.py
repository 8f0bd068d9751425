"""Figures from training workdirs.

  python -m stn_jax.viz --workdir=ST_RUN [--baseline=CNN_RUN] [--out=DIR]
      [--figures=transformer,gif,saliency,error] [--name=NAME]

``--out`` defaults to ``ST_RUN/figures``.

Writes, for the ST run (and the baseline where given):
- ``transformer_<name>.png``: test inputs next to the transformer's outputs
  (the paper's Figure 3 style);
- ``transformer_over_training_<name>.gif``: the transformer's output on fixed
  test images at step 0, every evaluation and every ``snapshot_every`` steps
  (from ``workdir/snapshots``);
- ``saliency_<name>.png``: |d class score / d input pixel| on the same
  images, for the ST model and the baseline;
- ``error_vs_steps_<name>.png``: test error against steps, both runs.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from stn_jax import cli, config_schema, files
from stn_jax.data import datasets, preview

COUNT = 16


def _test_arrays(run):
  config = run.config
  split = list(config.eval_splits)[0]
  return datasets.load_arrays(
    config.dataset,
    split,
    tfds_dir=config.tfds_dir or None,
    source_dir=config.source_dir or None,
    data_mirror=config_schema.get(config, "data_mirror") or None,
  )


def _save(image: Image.Image, path: str, **kwargs) -> None:
  """Saves ``image`` to ``path`` (PIL's ``save`` ``kwargs``), whole or not
  at all (:func:`stn_jax.files.written`)."""
  with files.written(path) as temporary:
    image.save(temporary, **kwargs)


def transformer_grid(run, arrays, path):
  images = arrays["image"][:COUNT]
  out = run.transform(images)
  to_uint8 = lambda x: np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
  image = preview.pairs_image(
    images,
    [to_uint8(o) for o in out],
    arrays["label"][:COUNT],
    title=f"{run.config.dataset}: inputs and transformer outputs",
  )
  _save(image, path)


def training_gif(workdir, path, scale=3):
  """Animated GIF of the snapshots; returns the number of frames."""
  files = sorted(glob.glob(os.path.join(workdir, "snapshots", "*.npy")))
  frames = []
  for file in files:
    step = int(os.path.basename(file)[:-4])
    snapshot = np.load(file)
    frames.append(
      preview.grid_image(
        snapshot,
        [""] * len(snapshot),
        columns=8,
        scale=scale,
        title=f"step {step}",
      )
    )
  if frames:
    _save(
      frames[0],
      path,
      save_all=True,
      append_images=frames[1:],
      duration=700,
      loop=0,
    )
  return len(frames)


def saliency(run, images, labels):
  """|d logit[label] / d input|, max over channels, scaled to 0-255."""
  x = jnp.asarray(images.astype(np.float32) / 255)
  score = lambda x: jnp.take_along_axis(
    run.model(run.normalization.from_unit(x)), jnp.asarray(labels)[:, None], 1
  ).sum()
  grad = np.abs(np.asarray(jax.grad(score)(x))).max(-1)
  grad /= grad.reshape(len(grad), -1).max(1)[:, None, None] + 1e-12
  return (grad * 255).astype(np.uint8)


def saliency_grid(runs, arrays, path):
  images = arrays["image"][:COUNT]
  labels = arrays["label"][:COUNT].astype(np.int32)
  rows = [
    (
      "input",
      images[..., 0]
      if images.shape[-1] == 1
      else images.mean(-1).astype(np.uint8),
    )
  ]
  rows += [
    (f"{name} saliency", saliency(run, images, labels)) for name, run in runs
  ]
  tiles, captions = [], []
  for i in range(len(images)):
    for name, row in rows:
      tiles.append(row[i])
      captions.append(name.split()[0] if name != "input" else f"in {labels[i]}")
  image = preview.grid_image(
    np.stack(tiles),
    captions,
    columns=len(rows) * 4,
    title="saliency |d score / d pixel|: " + ", ".join(n for n, _ in rows[1:]),
  )
  _save(image, path)


def _errors(workdir, key="test_error"):
  """(step, error) of every evaluation in ``workdir/metrics.jsonl``; a
  partial last line (a run stopped mid-write) is skipped.

  Raises:
    ValueError: a damaged line, or no evaluation yet, naming the file."""
  path = os.path.join(workdir, "metrics.jsonl")
  points = []
  with open(path) as f:
    lines = f.read().split("\n")
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      if number == len(lines):  # no newline after it: cut short
        continue
      raise ValueError(
        f"{path} line {number} is not a JSON record: {line[:60]!r}."
      ) from None
    if key in record:
      points.append((record["step"], record[key]))
  if not points:
    raise ValueError(
      f"{path} has no {key} yet (the run has not evaluated: it is "
      "unfinished or stopped before its first evaluation); drop 'error' "
      "from --figures or let the run evaluate first."
    )
  return points


def error_plot(curves, path, size=(640, 400)):
  """A line plot of test error (%) against steps, one line per run."""
  colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = 60, 30, size[0] - 20, size[1] - 40
  all_points = [p for _, points in curves for p in points]
  max_step = max(s for s, _ in all_points) or 1
  max_error = max(e for _, e in all_points) * 100 * 1.1 or 1
  sx = lambda s: left + (right - left) * s / max_step
  sy = lambda e: bottom - (bottom - top) * (e * 100) / max_error
  draw.rectangle((left, top, right, bottom), outline="black")
  for i in range(5):
    value = max_error * i / 4
    y = bottom - (bottom - top) * i / 4
    draw.text((8, y - 6), f"{value:.1f}%", fill="black")
    draw.line((left, y, right, y), fill="#dddddd")
  draw.text((left, bottom + 8), "0", fill="black")
  draw.text((right - 40, bottom + 8), f"{max_step} steps", fill="black")
  for i, (name, points) in enumerate(curves):
    colour = colours[i % len(colours)]
    xy = [(sx(s), sy(e)) for s, e in sorted(points)]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    for x, y in xy:
      draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    draw.text(
      (left + 10, top + 8 + 14 * i),
      f"{name}: {100 * sorted(points)[-1][1]:.2f}%",
      fill=colour,
    )
  draw.text((left, 8), "test error vs steps", fill="black")
  _save(image, path)


COLOURS = [
  "#d62728",
  "#1f77b4",
  "#2ca02c",
  "#9467bd",
  "#ff7f0e",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
]


def line_plot(curves, path, *, title, xlabel, ylabel, size=(640, 400)):
  """A line plot, one line per curve, y from 0.

  Args:
    curves: ``[(name, [(x, y), ...]), ...]``.
    path: the PNG to write.
    title, xlabel, ylabel: texts.
  """
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = 60, 30, size[0] - 20, size[1] - 40
  points = [p for _, line in curves for p in line]
  low_x, high_x = min(x for x, _ in points), max(x for x, _ in points)
  high_y = max(y for _, y in points) * 1.1 or 1.0
  span_x = (high_x - low_x) or 1.0
  sx = lambda x: left + (right - left) * (x - low_x) / span_x
  sy = lambda y: bottom - (bottom - top) * y / high_y
  draw.rectangle((left, top, right, bottom), outline="black")
  for i in range(5):
    y = bottom - (bottom - top) * i / 4
    draw.text((8, y - 6), f"{high_y * i / 4:.3g}", fill="black")
    draw.line((left, y, right, y), fill="#dddddd")
  draw.text((left, bottom + 8), f"{low_x:g}", fill="black")
  draw.text((right - 30, bottom + 8), f"{high_x:g}", fill="black")
  draw.text(((left + right) // 2 - 40, bottom + 22), xlabel, fill="black")
  for i, (name, line) in enumerate(curves):
    colour = COLOURS[i % len(COLOURS)]
    xy = [(sx(x), sy(y)) for x, y in sorted(line)]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    for x, y in xy:
      draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    draw.text((left + 10, top + 8 + 14 * i), name, fill=colour)
  draw.text((left, 8), f"{title} ({ylabel})", fill="black")
  _save(image, path)


def reliability_diagram(counts, accuracy, confidence, path, *, title):
  """Accuracy per confidence bin (bars) against the diagonal of perfect
  calibration, with each bin's mean confidence marked; bins of
  :func:`stn_jax.calibration.reliability_bins`."""
  size = (480, 480)
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = 50, 40, size[0] - 20, size[1] - 40
  sx = lambda v: left + (right - left) * v
  sy = lambda v: bottom - (bottom - top) * v
  draw.rectangle((left, top, right, bottom), outline="black")
  bins = len(counts)
  for b in range(bins):
    if counts[b] == 0:
      continue
    x0, x1 = sx(b / bins), sx((b + 1) / bins)
    draw.rectangle(
      (x0 + 1, sy(accuracy[b]), x1 - 1, bottom), fill="#1f77b4", outline="white"
    )
    y = sy(confidence[b])
    draw.line((x0 + 1, y, x1 - 1, y), fill="#d62728", width=2)
  draw.line((sx(0), sy(0), sx(1), sy(1)), fill="#777777", width=1)
  for v in (0, 0.5, 1):
    draw.text((sx(v) - 8, bottom + 8), f"{v:g}", fill="black")
    draw.text((18, sy(v) - 6), f"{v:g}", fill="black")
  draw.text(
    (left + 90, bottom + 22), "confidence (red: bin mean)", fill="black"
  )
  draw.text((left, 12), f"{title}; bars: accuracy", fill="black")
  _save(image, path)


FIGURES = ("transformer", "gif", "saliency", "error")


def make_figures(workdir, out, baseline=None, *, figures=FIGURES, name=None):
  """Writes the ``figures`` (a subset of ``FIGURES``) of the run in
  ``workdir`` to ``out``, named after ``name`` (default: the workdir's
  basename); returns their paths."""
  from stn_jax import restore

  unknown = set(figures) - set(FIGURES)
  if unknown:
    raise ValueError(
      f"figures must be among {', '.join(FIGURES)}; got "
      f"{', '.join(sorted(unknown))}."
    )
  run = restore(workdir)
  other = restore(baseline) if baseline else None
  if "error" in figures:  # read first: a missing curve writes nothing
    curves = [(run.config.model, _errors(workdir))]
    if other is not None:
      curves.append((other.config.model, _errors(baseline)))
  os.makedirs(out, exist_ok=True)
  name = name or os.path.basename(os.path.normpath(workdir))
  arrays = _test_arrays(run)
  paths = []
  if "transformer" in figures:
    paths.append(os.path.join(out, f"transformer_{name}.png"))
    transformer_grid(run, arrays, paths[-1])
  gif = os.path.join(out, f"transformer_over_training_{name}.gif")
  if "gif" in figures and training_gif(workdir, gif):
    paths.append(gif)
  if "saliency" in figures:
    runs = [(run.config.model, run)]
    if other is not None:
      runs.append((other.config.model, other))
    paths.append(os.path.join(out, f"saliency_{name}.png"))
    saliency_grid(runs, arrays, paths[-1])
  if "error" in figures:
    paths.append(os.path.join(out, f"error_vs_steps_{name}.png"))
    error_plot(curves, paths[-1])
  return paths


def main(argv=None) -> int:
  """``python -m stn_jax.viz``; returns the exit status."""
  values = flags.FlagValues()
  flags.DEFINE_string(
    "workdir", None, "A run with a spatial transformer.", flag_values=values
  )
  flags.DEFINE_string(
    "baseline",
    None,
    "Another run to compare with (e.g. the CNN).",
    flag_values=values,
  )
  flags.DEFINE_string(
    "out",
    None,
    "Folder for the figures (default: WORKDIR/figures).",
    flag_values=values,
  )
  flags.DEFINE_list(
    "figures", list(FIGURES), "Which figures.", flag_values=values
  )
  flags.DEFINE_string(
    "name",
    None,
    "File-name suffix (default: the workdir's name).",
    flag_values=values,
  )
  flags.mark_flag_as_required("workdir", flag_values=values)

  def body(positional):
    if positional:
      raise ValueError(f"unexpected arguments {positional}.")
    if not values.workdir.strip():
      raise ValueError("--workdir is empty; give a run's folder.")
    out = values.out or os.path.join(values.workdir, "figures")
    for path in make_figures(
      values.workdir,
      out,
      values.baseline,
      figures=tuple(values.figures),
      name=values.name,
    ):
      print(f"wrote {path}")

  return cli.run(body, values, argv, prog="python -m stn_jax.viz", doc=__doc__)


if __name__ == "__main__":
  raise SystemExit(main())
