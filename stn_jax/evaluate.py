"""Evaluate trained runs beyond their test error.

  python -m stn_jax.evaluate invariance --workdir=RUN [--baseline=RUN ...]
      [--out=DIR] [--families=rotation,scale,...] [--max_examples=2000]
  python -m stn_jax.evaluate calibration --workdir=RUN [--out=DIR]
      [--max_examples=0]

``invariance`` distorts the clean test set (MNIST digits centred in the
run's canvas, or GTSRB signs) one family at a time over a grid of
magnitudes (:mod:`stn_jax.evaluation`), the same images for every run, and
writes ``invariance.md`` (error per family and magnitude per run, and for
runs with a spatial transformer its residual, drift, spread and collapse
counts) plus ``invariance_<family>.png`` (error against magnitude, one
curve per run). ``calibration`` writes ``calibration.md`` (expected
calibration error, 15 bins, on the test split) and
``reliability_<name>.png``. ``--out`` defaults to ``RUN/evaluation``.
Bad input ends in one line on stderr and status 1 (2 for flag errors).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags

from stn_jax import calibration, cli, config_schema, evaluation, files, viz
from stn_jax.data import controlled, datasets

COMMANDS = ("invariance", "calibration")


def clean_test_set(config, *, max_examples: int = 0, **kwargs):
  """The clean test objects of a run's dataset: MNIST's undistorted
  digits (``distorted_mnist/plain``) for any distorted-MNIST run, else the
  run's own test split (GTSRB). ``kwargs`` override the config's
  ``tfds_dir``, ``source_dir``, ``data_mirror``; ``max_examples > 0``
  keeps the first ones (source order).

  Returns:
    ``(uint8 images (N, S, S, C), int labels (N,))``.
  """
  name = config.dataset
  if name.startswith("distorted_mnist/"):
    name = "distorted_mnist/plain"
  where = dict(
    tfds_dir=config_schema.get(config, "tfds_dir") or None,
    source_dir=config_schema.get(config, "source_dir") or None,
    data_mirror=config_schema.get(config, "data_mirror") or None,
  )
  where.update({k: v for k, v in kwargs.items() if v})
  arrays = datasets.load_arrays(name, "test", **where)
  keep = slice(None, max_examples or None)
  return arrays["image"][keep], np.asarray(arrays["label"][keep])


def _name(workdir):
  return os.path.basename(os.path.normpath(workdir))


def run_invariance(
  workdir, baselines=(), *, out, families, max_examples, seed=0, data=None
):
  """Sweeps the run and its baselines; writes the table and the PNGs into
  ``out``; returns their paths. ``data`` overrides where the clean test
  set is read (:func:`clean_test_set`'s ``kwargs``)."""
  from stn_jax import restore

  for family in families:
    controlled.check_family(family)
  runs = [restore(w) for w in (workdir, *baselines)]
  names = [_name(w) for w in (workdir, *baselines)]
  if len(set(names)) < len(names):
    raise ValueError(f"runs must have different folder names; got {names}.")
  for name, run in zip(names[1:], runs[1:]):
    if run.in_shape != runs[0].in_shape:
      raise ValueError(
        f"baseline {name} takes images of shape {run.in_shape}, the run "
        f"{runs[0].in_shape}: they cannot be compared on the same images."
      )
  images, labels = clean_test_set(
    runs[0].config, max_examples=max_examples, **(data or {})
  )
  size = runs[0].in_shape[0]
  results = {}
  for name, run in zip(names, runs):
    with_transformer = run.transform_name is not None
    results[name] = evaluation.invariance_sweep(
      run.predict,
      images,
      labels,
      size=size,
      families=families,
      seed=seed,
      transform_params=run.transform_params if with_transformer else None,
      transform=run.transform_name,
    )
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, "invariance.md")]
  with files.written(paths[0]) as temporary, open(temporary, "w") as f:
    f.write(invariance_table(results, count=len(labels), size=size))
  for family in families:
    curves = [
      (
        name,
        [
          (r["magnitude"], 100 * r["error"])
          for r in records
          if r["family"] == family
        ],
      )
      for name, records in results.items()
    ]
    paths.append(os.path.join(out, f"invariance_{family}.png"))
    viz.line_plot(
      curves,
      paths[-1],
      title=f"test error under {family}",
      xlabel=controlled.UNITS[family],
      ylabel="%",
    )
  return paths


def invariance_table(results, *, count, size) -> str:
  """Markdown: error (%) per family and magnitude, one column per run,
  then each transformer run's statistics."""
  names = list(results)
  lines = [
    "# Invariance under controlled distortions",
    "",
    f"{count} clean test images in a {size}x{size} canvas; magnitude units: "
    + "; ".join(f"{k}: {v}" for k, v in controlled.UNITS.items())
    + ".",
    "",
    "| family | magnitude | "
    + " | ".join(f"{n} error %" for n in names)
    + " |",
    "|---|---|" + "---|" * len(names),
  ]
  first = results[names[0]]
  for i, record in enumerate(first):
    errors = " | ".join(f"{100 * results[n][i]['error']:.2f}" for n in names)
    lines.append(f"| {record['family']} | {record['magnitude']:g} | {errors} |")
  for name in names:
    records = results[name]
    if "residual_px" not in records[0]:
      continue
    lines += [
      "",
      f"## {name}: its spatial transformer (canvas px)",
      "",
      "| family | magnitude | residual | drift | spread | constant | shrunk |",
      "|---|---|---|---|---|---|---|",
    ]
    for r in records:
      lines.append(
        f"| {r['family']} | {r['magnitude']:g} | {r['residual_px']:.2f} | "
        f"{r['drift_px']:.2f} | {r['spread_px']:.2f} | "
        f"{'yes' if r['constant'] else 'no'} | {r['shrunk']} |"
      )
  lines += [
    "",
    "residual: mean corner distance of the composed warp (distortion, "
    "then the transformer) from the identity; drift: from the "
    "transformer's map on the clean image; spread: std of the "
    "transformer's corners over the images; constant: spread < "
    f"{evaluation.SPREAD_THRESHOLD_PX} px (collapse); shrunk: images "
    f"whose transformer reads a region < {evaluation.SCALE_THRESHOLD} of "
    "the canvas side.",
    "",
  ]
  return "\n".join(lines)


def run_calibration(workdir, *, out, max_examples=0, data=None):
  """ECE and the reliability diagram of the run's first eval split;
  returns the written paths."""
  from stn_jax import restore

  run = restore(workdir)
  config = run.config
  split = list(config.eval_splits)[0]
  where = dict(
    tfds_dir=config_schema.get(config, "tfds_dir") or None,
    source_dir=config_schema.get(config, "source_dir") or None,
    data_mirror=config_schema.get(config, "data_mirror") or None,
  )
  where.update({k: v for k, v in (data or {}).items() if v})
  arrays = datasets.load_arrays(config.dataset, split, **where)
  keep = slice(None, max_examples or None)
  logits = run.predict(arrays["image"][keep])
  labels = np.asarray(arrays["label"][keep])
  ece = float(calibration.expected_calibration_error(logits, labels))
  counts, accuracy, confidence = (
    np.asarray(a)
    for a in calibration.reliability_bins(logits, labels, from_logits=True)
  )
  name = _name(workdir)
  os.makedirs(out, exist_ok=True)
  paths = [
    os.path.join(out, "calibration.md"),
    os.path.join(out, f"reliability_{name}.png"),
  ]
  rows = [
    f"| ({b / len(counts):.3f}, {(b + 1) / len(counts):.3f}] | "
    f"{int(counts[b])} | {accuracy[b]:.4f} | {confidence[b]:.4f} |"
    for b in range(len(counts))
    if counts[b]
  ]
  error = float(np.mean(logits.argmax(-1) != labels))
  with files.written(paths[0]) as temporary, open(temporary, "w") as f:
    f.write(
      f"# Calibration of {name}\n\n{len(labels)} {split} images of "
      f"{config.dataset}: error {100 * error:.2f}%, expected calibration "
      f"error (15 equal-width bins on max-softmax confidence) "
      f"{100 * ece:.2f}%.\n\n| bin | images | accuracy | confidence |\n"
      "|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
  viz.reliability_diagram(
    counts, accuracy, confidence, paths[1], title=f"{name}: ECE {ece:.4f}"
  )
  return paths


def main(argv=None) -> int:
  """``python -m stn_jax.evaluate``; returns the exit status."""
  values = flags.FlagValues()
  flags.DEFINE_string(
    "workdir", None, "The run to evaluate.", flag_values=values
  )
  flags.DEFINE_multi_string(
    "baseline", [], "invariance: runs to compare with.", flag_values=values
  )
  flags.DEFINE_string(
    "out",
    None,
    "Output folder (default WORKDIR/evaluation).",
    flag_values=values,
  )
  flags.DEFINE_list(
    "families",
    list(controlled.FAMILIES),
    "invariance: the distortion families.",
    flag_values=values,
  )
  flags.DEFINE_integer(
    "max_examples",
    None,
    "Test images used, the first ones (0: all; default 2000 for "
    "invariance, all for calibration).",
    flag_values=values,
  )
  flags.DEFINE_integer(
    "seed", 0, "invariance: the draws' seed.", flag_values=values
  )
  flags.DEFINE_string(
    "tfds_dir", "", "Built datasets (default: the run's).", flag_values=values
  )
  flags.DEFINE_string(
    "source_dir", "", "Source data (default: the run's).", flag_values=values
  )
  flags.mark_flag_as_required("workdir", flag_values=values)

  def body(positional):
    if len(positional) != 1 or positional[0] not in COMMANDS:
      raise ValueError(
        f"expected one command, {' or '.join(COMMANDS)}; got {positional}."
      )
    if values.max_examples is not None and values.max_examples < 0:
      raise ValueError(
        f"--max_examples must be >= 0; got {values.max_examples}."
      )
    if positional[0] == "invariance" and not values.families:
      raise ValueError(
        f"--families is empty; give one or more of "
        f"{','.join(controlled.FAMILIES)}."
      )
    if not os.path.isdir(values.workdir):
      raise FileNotFoundError(f"--workdir {values.workdir!r} is not a folder.")
    out = values.out or os.path.join(values.workdir, "evaluation")
    data = dict(tfds_dir=values.tfds_dir, source_dir=values.source_dir)
    start = time.perf_counter()
    if positional[0] == "invariance":
      if values.max_examples is None:
        values.max_examples = 2000
      paths = run_invariance(
        values.workdir,
        values.baseline,
        out=out,
        families=tuple(values.families),
        max_examples=values.max_examples,
        seed=values.seed,
        data=data,
      )
    else:
      if values.baseline:
        raise ValueError("--baseline is for the invariance command.")
      paths = run_calibration(
        values.workdir,
        out=out,
        max_examples=values.max_examples or 0,
        data=data,
      )
    for path in paths:
      print(f"wrote {path}")
    print(f"took {time.perf_counter() - start:.1f} s")

  return cli.run(
    body, values, argv, prog="python -m stn_jax.evaluate", doc=__doc__
  )


if __name__ == "__main__":
  raise SystemExit(main())
