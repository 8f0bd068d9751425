"""experiments/hostile_cases.py: its list of cases, its classification of
an outcome, and one case run end to end (seconds; the whole script is run
by hand: experiments/results/hostile_cases.md)."""

import os
import subprocess
import sys

from conftest import REPO, experiment_script, pythonpath

SCRIPT = REPO / "experiments" / "hostile_cases.py"


def run_script(*args):
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": pythonpath(REPO)},
  )


def test_the_list_has_every_class_of_issue_33_and_the_other_commands():
  result = run_script("--list")
  assert result.returncode == 0, result.stderr
  rows = [line.split("\t") for line in result.stdout.splitlines()]
  rows = [row for row in rows if len(row) == 3]
  assert len(rows) >= 82
  names = [name for name, _, _ in rows]
  assert len(set(names)) == len(names)
  classes = {klass for _, klass, _ in rows}
  assert classes == {str(k) for k in range(1, 13)} | {"other"}
  for tool in ("main", "sweep", "viz", "evaluate", "data", "model_zoo"):
    assert any(name.startswith(tool) for name in names), tool
  assert any("export" in name for name in names)


def test_outcomes_are_classified_by_their_rules():
  script = experiment_script("hostile_cases")
  case = script.Case("c", "6", ["x"], says=("{f}", "way|out"))
  p = {"f": "/a/f"}

  def outcome(returncode, stderr, lost=(), problem=None, expect="refuse"):
    case.expect = expect
    result = subprocess.CompletedProcess(["x"], returncode, "", stderr)
    return script.classify(case, p, result, False, list(lost), problem)[0]

  assert outcome(1, "error: /a/f is a file; choose another way") == (
    "behaved well"
  )
  assert outcome(1, "error: /a/f is a file") == "unclear message"
  assert outcome(1, "Traceback (most recent call last):\n  ...") == "traceback"
  assert outcome(1, "a\nb\nc\nd /a/f out") == "traceback"  # > 3 lines
  # a flag error's usage text after its error line is not counted
  assert outcome(1, "p: error: /a/f out\n\nUsage\n1\n2\n3") == "behaved well"
  assert outcome(0, "") == "silently wrong"  # accepted: a refusal was due
  assert outcome(0, "", problem="old results") == "silently wrong"
  assert outcome(1, "/a/f out", lost=["x"]) == "data lost"
  assert outcome(1, "/a/f out", expect="succeed") == "wrongly refused"
  assert outcome(0, "", expect="either") == "behaved well"


def test_one_case_runs_and_is_reported(tmp_path):
  """A case that needs no shared setup (nothing is trained or built)."""
  out = tmp_path / "report.md"
  result = run_script(
    "--only=data_no_command",
    f"--scratch={tmp_path / 'scratch'}",
    f"--out={out}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert "| data_no_command | other | `python -m stn_jax.data` |" in text
  assert "| behaved well | 1 |" in text
  assert "- commit: " in text and "- machine: " in text
  assert not (tmp_path / "scratch" / "shared" / "tfds").exists()
