"""docs/tutorial.py runs top to bottom at a tiny budget (2 training steps
on the tiny synthetic RTS dataset), writes its figures, and its ONNX file
agrees with predict; docs/tutorial.md is its rendered copy."""

import importlib.util
import re
import runpy

import numpy as np
from conftest import REPO


def _cells(text):
  spec = importlib.util.spec_from_file_location(
    "render_tutorial", REPO / "experiments" / "render_tutorial.py"
  )
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  return list(script.cells(text))


def test_tutorial_runs_at_a_tiny_budget(tiny_tfds, tmp_path, monkeypatch):
  monkeypatch.setenv("STN_TUTORIAL_STEPS", "2")
  monkeypatch.setenv("STN_TUTORIAL_BATCH", "8")
  monkeypatch.setenv("STN_TUTORIAL_TFDS_DIR", str(tiny_tfds))
  monkeypatch.setenv("STN_TUTORIAL_OUT", str(tmp_path))
  namespace = runpy.run_path(str(REPO / "docs" / "tutorial.py"))
  for name in ("ops_grid.png", "snapshots.png", "error.png", "st_cnn.onnx"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert namespace["run"].step == 2
  np.testing.assert_array_equal(
    namespace["onnx_logits"].argmax(1), namespace["logits"].argmax(1)
  )
  assert np.abs(namespace["onnx_logits"] - namespace["logits"]).max() < 1e-4


def test_rendered_copy_has_every_cell_and_figure():
  page = (REPO / "docs" / "tutorial.md").read_text()
  # Less the line that says where and when it was rendered.
  page = re.sub(r"^\*Rendered from .*\*\n\n", "", page, count=1, flags=re.M)
  source = (REPO / "docs" / "tutorial.py").read_text()
  for _, body in _cells(source):
    assert body in page, body[:60]
  for figure in ("ops_grid.png", "snapshots.png", "error.png"):
    assert (REPO / "docs" / "tutorial" / figure).stat().st_size > 0
