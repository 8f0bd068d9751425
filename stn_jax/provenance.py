"""Where a number came from: the code's commit and the machine it ran on.

Every results file under ``experiments/results/`` starts with these lines
(``experiments/_tables.py`` and the benchmark scripts call
:func:`header_lines` or the two descriptions), so a table can be traced to
the commit, the CPU or accelerator, and the JAX version that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax


def cpu_name() -> str:
  """The CPU's model name from ``/proc/cpuinfo`` (else what ``platform``
  reports, e.g. ``'x86_64'``)."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return name


def machine_description() -> str:
  """One line: CPU, cores visible, JAX version, backend and device kinds,
  e.g. ``'AMD EPYC 9R14; 2 cores visible; JAX 0.10.2 on cpu (cpu)'``."""
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (
    f"{cpu_name()}; {os.cpu_count()} cores visible; JAX {jax.__version__} "
    f"on {jax.default_backend()} ({devices})"
  )


def commit_description(cwd: str | None = None) -> str:
  """The short commit of the git checkout at ``cwd`` (default: the current
  directory), with ``' (stn_jax/ modified)'`` when the library's files
  differ from it; ``'unknown'`` outside a checkout or without git."""
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
      cwd=cwd,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--", "stn_jax"],
      capture_output=True,
      text=True,
      cwd=cwd,
    ).stdout.strip()
    return commit + (" (stn_jax/ modified)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def header_lines(title: str) -> list[str]:
  """The first lines of a markdown results file: ``# title``, then the
  command (``sys.argv``), the commit and the machine as list items."""
  return [
    f"# {title}",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}; devices: "
    f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  ]
