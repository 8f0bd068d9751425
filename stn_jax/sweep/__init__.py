"""Hyperparameter sweeps: a plan of points, run by a launcher, recorded.

- :mod:`stn_jax.sweep.plan`: the points of a ``sweep_<name>`` function in a
  config file, and each point's config (pure).
- :mod:`stn_jax.sweep.runner`: :func:`run_sweep`, which trains (or lists,
  or collects) the points, each in its own folder, resumably.
- :mod:`stn_jax.sweep.checks`: whether a finished point is the plan's
  result now.
- :mod:`stn_jax.sweep.records`: one ``record.json`` per point, and the
  tables rebuilt from them.
- :mod:`stn_jax.sweep.launchers`: where points run (this process, Ray
  tasks, populations, a job array's share), chosen by name;
  :mod:`stn_jax.sweep.tasks`: one point's training, wherever it runs.
- :mod:`stn_jax.sweep.population`: compatible points trained together as
  populations.
- :mod:`stn_jax.sweep.archive`: finished points kept as small files to
  commit.
- :mod:`stn_jax.sweep.signals`: SIGTERM and Ctrl-C between points: the
  sweep stops before its next point, and a signal after its last point is
  passed on, never swallowed.
- :mod:`stn_jax.sweep.cli`: ``python -m stn_jax.sweep``.
"""

from stn_jax.config_args import load_config_module
from stn_jax.sweep.checks import plan_check
from stn_jax.sweep.cli import main, parse_overrides
from stn_jax.sweep.plan import (
  build_config,
  expand,
  plan,
  point_name,
  sweep_names,
)
from stn_jax.sweep.records import Record, Status
from stn_jax.sweep.runner import Mode, run_sweep
from stn_jax.sweep.signals import StopOnSignal

__all__ = [
  "Mode",
  "Record",
  "Status",
  "StopOnSignal",
  "build_config",
  "expand",
  "load_config_module",
  "main",
  "parse_overrides",
  "plan",
  "plan_check",
  "point_name",
  "run_sweep",
  "sweep_names",
]
