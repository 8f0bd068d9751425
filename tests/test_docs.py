"""The documentation: its code runs and its API pages cover the public names.

Convention for code blocks in ``README.md`` and ``docs/*.md``: every block
fenced as ```` ```python ```` is run here, each in a fresh namespace, so it
must be self-contained and fast (seconds, tiny shapes). Blocks that are not
meant to run use another fence language: ```` ```bash ```` (or ``sh``) for
commands, ```` ```text ```` for output and listings, and ```` ```py ```` for
Python that is shown but not run (it needs a trained workdir or a built
dataset; the test of that feature runs the same calls).

``mkdocs build --strict`` (``make docs``) fails on a broken link or
reference, but not on a missing docstring: mkdocstrings silently leaves an
undocumented function out of its module's page. So the test below checks
that every name in ``stn_jax.__all__`` has a docstring and is on an API page.
"""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import stn_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
API_PAGES = sorted((DOCS / "api").glob("*.md"))
MKDOCS_YML = ROOT / "mkdocs.yml"

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def _blocks(path):
  """(language, first line number, code) of each fenced block in ``path``."""
  text = path.read_text()
  for m in _FENCE.finditer(text):
    line = text.count("\n", 0, m.start()) + 2
    yield m.group(1), line, m.group(2)


def _python_blocks():
  for path in PAGES:
    for lang, line, code in _blocks(path):
      if lang == "python":
        yield pytest.param(code, id=f"{path.relative_to(ROOT)}:{line}")


@pytest.mark.parametrize("code", list(_python_blocks()))
def test_python_block_runs(code):
  exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})


def test_there_are_python_blocks():
  # The guides that carry examples keep them runnable, not just shown.
  names = {p.id.split(":")[0] for p in _python_blocks()}
  for page in (
    "README.md",
    "docs/getting-started.md",
    "docs/conventions.md",
    "docs/geometry.md",
    "docs/datasets.md",
  ):
    assert page in names, page


def test_fence_languages_are_known():
  known = {"python", "py", "bash", "sh", "text"}
  for path in PAGES:
    for lang, line, _ in _blocks(path):
      assert lang in known, f"{path}:{line}: fence {lang!r}; use one of {known}"


def _documented_modules():
  """Every ``::: dotted.path`` on the API pages."""
  found = set()
  for page in API_PAGES:
    found |= set(re.findall(r"^::: (\S+)", page.read_text(), re.M))
  return found


@pytest.mark.parametrize("name", stn_jax.__all__)
def test_public_name_has_docstring_and_api_page(name):
  obj = getattr(stn_jax, name)
  documented = _documented_modules()
  if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
    assert (inspect.getdoc(obj) or "").strip(), f"stn_jax.{name}: no docstring"
  if inspect.ismodule(obj):
    assert any(
      d == obj.__name__ or d.startswith(obj.__name__ + ".") for d in documented
    ), name
    return
  if inspect.isfunction(obj) or inspect.isclass(obj):
    module = obj.__module__
    assert (
      module in documented
      or f"{module}.{name}" in documented
      or f"stn_jax.{name}" in documented
    ), f"stn_jax.{name} ({module}) is on no API page"
    return
  # A constant: its own directive (no docstring of its own to check).
  assert any(d.endswith("." + name) for d in documented), (
    f"constant stn_jax.{name} is on no API page"
  )


def test_every_public_module_on_an_api_page():
  # A new module (not _private) gets its "::: stn_jax.x" line on the API
  # page of its area in docs/api/; a package counts when its modules do.
  documented = _documented_modules()
  for path in sorted((ROOT / "stn_jax").rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    if any(p.startswith("_") and p != "__main__" for p in parts):
      continue
    module = ".".join(parts)
    assert any(d == module or d.startswith(module + ".") for d in documented), (
      f"{module} is on no page of docs/api/: add '::: {module}'"
    )


def test_every_page_in_the_nav():
  # mkdocs --strict also fails on this; here it fails without mkdocs.
  nav = MKDOCS_YML.read_text()
  for page in [*DOCS.glob("*.md"), *API_PAGES]:
    assert str(page.relative_to(DOCS)) in nav, page


def test_readme_is_short_and_keeps_the_two_commands():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 150
  assert "## The two commands" in readme
  makefile = (ROOT / "Makefile").read_text()
  for target in ("train", "test", "docs"):
    assert f"make {target}" in readme
    assert re.search(rf"^{target}:", makefile, re.M), target
