"""A griffe extension for the API pages: the docstrings' reST habits as Markdown.

The docstrings are written to read well in a terminal (``help()``) and use two
reST habits that Markdown renders badly:

- roles, ``:func:`name``` (also ``:mod:``, ``:class:``, ...), become code
  spans, ```name```;
- a command line or a list of flags indented under a blank line
  (``  python -m stn_jax.main ...``, ``  --launcher=ray ...``) becomes a code
  block, so that ``[--flag]`` is not read as a link.

Only what mkdocstrings renders changes; the source stays as it is.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(
  r":(?:py:)?(?:func|mod|class|meth|attr|data|obj|exc):`~?([^`]+)`"
)


def _indent_commands(text: str) -> str:
  lines = text.split("\n")
  out = []
  in_command = False
  for i, line in enumerate(lines):
    starts = (
      line.startswith("  ")
      and line.lstrip().startswith(("python ", "--"))
      and (i == 0 or not lines[i - 1].strip())
    )
    if starts:
      in_command = True
      out.append("")  # a code block needs a blank line before it
    elif in_command and not (line.startswith("  ") and line.strip()):
      in_command = False
    out.append("  " + line if in_command else line)
  return "\n".join(out)


class RestToMarkdown(griffe.Extension):
  """Rewrites each docstring once, when its object is loaded."""

  def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is not None:
      text = _ROLE.sub(r"`\1`", obj.docstring.value)
      obj.docstring.value = _indent_commands(text)
