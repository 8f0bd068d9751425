"""experiments/gtsrb_errors.py: its breakdown against counts made by hand,
and its command line's errors."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, experiment_script


def _script():
  return experiment_script("gtsrb_errors")


def test_subsets_cover_every_class_once():
  script = _script()
  ids = sorted(c for subset in script.SUBSETS.values() for c in subset)
  assert ids == list(range(43)) and len(script.CLASS_NAMES) == 43


def test_breakdown_equals_a_count_by_hand():
  script = _script()
  rng = np.random.default_rng(0)
  n = 500
  labels = rng.integers(0, 43, n)
  predictions = np.where(
    rng.uniform(size=n) < 0.2, rng.integers(0, 43, n), labels
  )
  x1, y1 = rng.integers(0, 10, n), rng.integers(0, 10, n)
  roi = np.stack(
    [x1, y1, x1 + rng.integers(10, 120, n), y1 + rng.integers(10, 120, n)], 1
  )
  got = script.error_breakdown(labels, predictions, roi, top=5)

  wrong = [int(a != b) for a, b in zip(labels, predictions)]
  assert got["count"] == n and got["errors"] == sum(wrong)
  subset_of = {c: s for s, ids in script.SUBSETS.items() for c in ids}
  for name, count, errors in got["subsets"]:
    members = [i for i in range(n) if subset_of[int(labels[i])] == name]
    assert (count, errors) == (len(members), sum(wrong[i] for i in members))
  sides = [min(r[2] - r[0], r[3] - r[1]) for r in roi]
  buckets = [(0, 24), (25, 34), (35, 49), (50, 74), (75, 10**9)]
  assert [c for _, c, _ in got["sizes"]] == [
    sum(lo <= s <= hi for s in sides) for lo, hi in buckets
  ]
  assert [e for _, _, e in got["sizes"]] == [
    sum(w for s, w in zip(sides, wrong) if lo <= s <= hi) for lo, hi in buckets
  ]
  per_class = {}
  for y, p, w in zip(labels, predictions, wrong):
    if w:
      per_class.setdefault(int(y), []).append(int(p))
  expected_order = sorted(per_class, key=lambda c: (-len(per_class[c]), c))[:5]
  assert [c for c, *_ in got["classes"]] == expected_order
  for c, count, errors, taken in got["classes"]:
    assert count == int((labels == c).sum()) and errors == len(per_class[c])
    most = max(per_class[c].count(t) for t in per_class[c])
    assert taken[0][1] == most


def test_bad_shapes_name_the_argument():
  script = _script()
  with pytest.raises(ValueError, match="labels and predictions"):
    script.error_breakdown(np.zeros(3), np.zeros(4), np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"roi must be \(N, 4\)"):
    script.error_breakdown(np.zeros(3), np.zeros(3), np.zeros((3, 2)))


def test_a_folder_without_a_run_is_one_line_without_a_traceback(tmp_path):
  result = subprocess.run(
    [sys.executable, "experiments/gtsrb_errors.py", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.strip() == (
    f"gtsrb_errors.py: error: workdir must be a run's folder; "
    f"{str(tmp_path)!r} has no checkpoints."
  )
