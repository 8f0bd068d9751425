r"""Runs docs/tutorial.py cell by cell and writes its rendered copy,
docs/tutorial.md (code, printed output, figures in docs/tutorial/).

  STN_DATA_DIR=../shared/data python experiments/render_tutorial.py

The tutorial's settings come from the environment (STN_TUTORIAL_STEPS,
STN_TUTORIAL_TFDS_DIR); its run and files go to a temporary folder, and
only the figures it references are copied into docs/tutorial/.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "tutorial.py"
PAGE = ROOT / "docs" / "tutorial.md"
FIGURES = ROOT / "docs" / "tutorial"


def cells(text: str):
  """``(kind, body)`` of each ``# %%`` cell, kind 'markdown' or 'code';
  the jupytext header is skipped."""
  parts = re.split(r"^# %%(.*)$", text, flags=re.M)
  for marker, body in zip(parts[1::2], parts[2::2]):
    kind = "markdown" if "[markdown]" in marker else "code"
    body = body.strip("\n")
    if kind == "markdown":
      body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
    yield kind, body


def main():
  with tempfile.TemporaryDirectory() as out:
    os.environ["STN_TUTORIAL_OUT"] = out
    namespace = {"__name__": "__tutorial__"}
    lines = []
    start = time.perf_counter()
    for kind, body in cells(SOURCE.read_text()):
      if kind == "markdown":
        lines += [body, ""]
        continue
      captured = io.StringIO()
      with contextlib.redirect_stdout(captured):
        exec(compile(body, str(SOURCE), "exec"), namespace)
      lines += ["```py", body, "```", ""]
      printed = captured.getvalue().strip()
      if printed:
        lines += ["```text", printed, "```", ""]
    seconds = time.perf_counter() - start
    FIGURES.mkdir(exist_ok=True)
    for name in re.findall(r"\(tutorial/([\w.]+\.png)\)", "\n".join(lines)):
      shutil.copy(pathlib.Path(out) / name, FIGURES / name)
  commit = subprocess.run(
    ["git", "rev-parse", "--short", "HEAD"],
    capture_output=True,
    text=True,
    cwd=ROOT,
  ).stdout.strip()
  note = (
    f"*Rendered from `docs/tutorial.py` by `experiments/render_tutorial.py` "
    f"at commit {commit} on {platform.machine()} with "
    f"{os.cpu_count()} CPU cores: {seconds:.0f} s top to bottom, "
    f"{os.environ.get('STN_TUTORIAL_STEPS', '600')} training steps.*"
  )
  # The title first, then where the page comes from.
  title, rest = lines[0].split("\n", 1)
  page = [title, "", note, "", rest.lstrip("\n"), *lines[1:]]
  PAGE.write_text("\n".join(page).rstrip() + "\n")
  print(f"wrote {PAGE} ({seconds:.0f} s)")


if __name__ == "__main__":
  main()
