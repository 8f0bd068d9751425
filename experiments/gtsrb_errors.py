"""Where trained GTSRB models err: by sign subset, by sign size, by class.

Usage:
  python experiments/gtsrb_errors.py WORKDIR [WORKDIR ...] [--split test]
      [--tfds_dir DIR] [--top 10] [--out FILE.md]

Each WORKDIR is a finished (or checkpointed) GTSRB run. Its model is
restored at its latest checkpoint (``stn_jax.restore``) and classifies the
whole split; the script prints, for each run, a markdown report of

- the error over the split, beside the one the run recorded at its end
  (``results.json``), as a check that the report describes that run;
- the error in each of the six sign subsets of the GTSRB paper (Stallkamp
  et al. 2012, "Man vs. computer"): speed limits, other prohibitions,
  derestrictions, mandatory, danger (the red triangles) and unique signs;
- the error by the sign's size in the original photograph (the shorter
  side of its annotated region, in pixels), since every image is resized
  to the dataset's resolution, 32x32 offline, whatever its size;
- the classes with the most errors, and what they were taken for.

Reading the split needs the built dataset (``--tfds_dir``, else the run's
own ``tfds_dir``, else the default TFDS folder).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np
from _tables import header_lines, run_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The 43 classes, by class id (the GTSRB annotations' ClassId).
CLASS_NAMES = (
  "speed limit 20",
  "speed limit 30",
  "speed limit 50",
  "speed limit 60",
  "speed limit 70",
  "speed limit 80",
  "end of speed limit 80",
  "speed limit 100",
  "speed limit 120",
  "no passing",
  "no passing for trucks",
  "right of way at next crossing",
  "priority road",
  "give way",
  "stop",
  "no vehicles",
  "no trucks",
  "no entry",
  "general danger",
  "curve left",
  "curve right",
  "double curve",
  "bumpy road",
  "slippery road",
  "road narrows on the right",
  "road works",
  "traffic signals",
  "pedestrians",
  "children",
  "cyclists",
  "ice or snow",
  "wild animals",
  "end of all limits",
  "turn right ahead",
  "turn left ahead",
  "ahead only",
  "straight or right",
  "straight or left",
  "keep right",
  "keep left",
  "roundabout",
  "end of no passing",
  "end of no passing for trucks",
)

# The benchmark paper's subsets (Stallkamp et al. 2012), by class id.
SUBSETS = {
  "speed limits": (0, 1, 2, 3, 4, 5, 7, 8),
  "other prohibitions": (9, 10, 15, 16),
  "derestrictions": (6, 32, 41, 42),
  "mandatory": tuple(range(33, 41)),
  "danger": (11, *range(18, 32)),
  "unique": (12, 13, 14, 17),
}

# Shorter side of the annotated sign region in the original photograph.
SIZE_EDGES = (0, 25, 35, 50, 75, 10_000)


def error_breakdown(
  labels: np.ndarray, predictions: np.ndarray, roi: np.ndarray, top: int = 10
) -> dict:
  """Error rates of ``predictions`` against ``labels`` (both ``(N,)`` class
  ids), overall, per subset, per size bucket and per class.

  Args:
    labels, predictions: ``(N,)`` ints in ``[0, 43)``.
    roi: ``(N, 4)`` annotated sign region ``[x1, y1, x2, y2]`` in original
      pixels, as the annotations give it; its size is ``min(x2 - x1,
      y2 - y1)``.
    top: how many classes to list, most errors first.

  Returns:
    dict with ``count``, ``errors`` and, as lists of
    ``(name, count, errors)``, ``subsets`` and ``sizes``; ``classes`` lists
    ``(class id, count, errors, [(taken for, times), ...])`` for the
    ``top`` classes with any errors.
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  roi = np.asarray(roi)
  if labels.shape != predictions.shape or labels.ndim != 1:
    raise ValueError(
      "labels and predictions must be equal (N,) arrays; got shapes "
      f"{labels.shape} and {predictions.shape}."
    )
  if roi.shape != (len(labels), 4):
    raise ValueError(
      f"roi must be (N, 4) = ({len(labels)}, 4); got shape {roi.shape}."
    )
  wrong = labels != predictions
  side = np.minimum(roi[:, 2] - roi[:, 0], roi[:, 3] - roi[:, 1])

  def row(name, mask):
    return (name, int(mask.sum()), int(wrong[mask].sum()))

  subsets = [row(n, np.isin(labels, ids)) for n, ids in SUBSETS.items()]
  sizes = [
    row(
      f"{lo}-{hi - 1} px" if hi < SIZE_EDGES[-1] else f">= {lo} px",
      (side >= lo) & (side < hi),
    )
    for lo, hi in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:])
  ]
  classes = []
  for c in np.unique(labels[wrong]):
    mask = labels == c
    taken = collections.Counter(predictions[mask & wrong].tolist())
    classes.append((int(c), int(mask.sum()), int(wrong[mask].sum()), taken))
  classes.sort(key=lambda r: (-r[2], r[0]))
  return {
    "count": len(labels),
    "errors": int(wrong.sum()),
    "subsets": subsets,
    "sizes": sizes,
    "classes": [
      (c, n, e, taken.most_common(3)) for c, n, e, taken in classes[:top]
    ],
  }


def _percent(errors, count):
  return f"{100 * errors / count:.2f}%" if count else "-"


def report_lines(
  name: str, breakdown: dict, recorded: float | None, about: str = ""
) -> list:
  """Markdown lines for one run's :func:`error_breakdown` (``about``: a
  line saying what the run was, if given)."""
  b = breakdown
  lines = [
    f"## {name}",
    "",
    *([f"- run: {about}"] if about else []),
    f"- error: **{_percent(b['errors'], b['count'])}** "
    f"({b['errors']} of {b['count']}); recorded by the run at its end: "
    + (f"{100 * recorded:.2f}%" if recorded is not None else "(none)"),
    "",
    "| subset | images | errors | error |",
    "|---|---|---|---|",
  ]
  lines += [
    f"| {n} | {c} | {e} | {_percent(e, c)} |" for n, c, e in b["subsets"]
  ]
  lines += [
    "",
    "| sign size (shorter side, original px) | images | errors | error |",
    "|---|---|---|---|",
  ]
  lines += [f"| {n} | {c} | {e} | {_percent(e, c)} |" for n, c, e in b["sizes"]]
  lines += [
    "",
    "| class | images | errors | error | most often taken for |",
    "|---|---|---|---|---|",
  ]
  for c, n, e, taken in b["classes"]:
    confused = ", ".join(f"{CLASS_NAMES[t]} ({k})" for t, k in taken)
    lines.append(
      f"| {c} {CLASS_NAMES[c]} | {n} | {e} | {_percent(e, n)} | {confused} |"
    )
  return lines + [""]


def _recorded_error(workdir: str, split: str) -> float | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get(f"{split}_error")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--split", default="test")
  parser.add_argument("--tfds_dir", default="")
  parser.add_argument("--top", type=int, default=10)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  import stn_jax
  from stn_jax.data import datasets

  lines = header_lines(f"Where GTSRB models err ({args.split} split)") + [""]
  for workdir in args.workdirs:
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise ValueError(
        f"workdir must be a run's folder; {workdir!r} has no checkpoints."
      )
    restored = stn_jax.restore(workdir)
    config = restored.config
    if not config.dataset.startswith("gtsrb"):
      raise ValueError(
        f"workdir must hold a GTSRB run; {workdir!r} trained on "
        f"{config.dataset!r}."
      )
    data = datasets.load_arrays(
      config.dataset,
      args.split,
      tfds_dir=args.tfds_dir or config.tfds_dir or None,
      source_dir=config.source_dir or None,
    )
    predictions = restored.predict(data["image"]).argmax(-1)
    breakdown = error_breakdown(
      data["label"], predictions, data["roi"], args.top
    )
    name = f"{os.path.normpath(workdir)} (step {restored.step})"
    about = (
      f"`{config.model}` {config.model_kwargs.to_dict()}, "
      f"{config.num_steps} {config.optimizer} steps of {config.batch_size}"
    )
    recorded = _recorded_error(workdir, args.split)
    lines += report_lines(name, breakdown, recorded, about)
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(run_script(main))
