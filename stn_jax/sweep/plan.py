"""A sweep's points: the pure part of a sweep.

A sweep is a function ``sweep_<name>(add)`` beside ``get_config`` in a
config file; each ``add(arg, **overrides)`` adds one point: the config
arg string and config overrides (dotted keys such as
``'model_kwargs.width'`` go through a dict: ``add(arg,
**{'model_kwargs.width': 0.5})``). :func:`plan` lists the points with their
folder names; :func:`build_config` builds one point's config. Nothing here
touches the filesystem beyond importing the config file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import ml_collections

from stn_jax.config_args import load_config_module


def sweep_names(module) -> list[str]:
  """The sweeps of a config module: the ``<name>`` of every
  ``sweep_<name>`` function in it, sorted."""
  return sorted(
    n[len("sweep_") :]
    for n in dir(module)
    if n.startswith("sweep_") and callable(getattr(module, n))
  )


def expand(module, name: str) -> list[dict[str, Any]]:
  """The points of sweep ``name`` of a config ``module``, as its
  ``sweep_<name>(add)`` adds them: ``[{'arg': str, 'overrides': dict}]``.

  Raises:
    ValueError: the module has no such sweep (the message lists them).
  """
  function = getattr(module, f"sweep_{name}", None)
  if function is None:
    raise ValueError(
      f"sweep must be one of {', '.join(sweep_names(module))}; got {name!r}."
    )
  points = []

  def add(arg: str = "", **overrides):
    points.append({"arg": arg, "overrides": overrides})

  function(add)
  return points


def build_config(
  module, point, extra_overrides=None
) -> ml_collections.ConfigDict:
  """The config of one ``point`` (``{'arg', 'overrides'}``) of a config
  ``module``: ``get_config(arg)`` with its overrides, then
  ``extra_overrides`` (dotted keys reach nested fields), set.

  Raises:
    ValueError: an override names no config field, or has another type
      than the field's default.
  """
  config = module.get_config(point["arg"])
  overrides = {**point["overrides"], **(extra_overrides or {})}
  for key, value in overrides.items():
    *path, target = key.split(".")
    parent = config
    for part in path:
      is_dict = isinstance(parent, ml_collections.ConfigDict)
      parent = parent.get(part) if is_dict else None
    if (
      not isinstance(parent, ml_collections.ConfigDict) or target not in parent
    ):
      raise ValueError(f"override {key!r}: no such config field.")
    try:
      parent[target] = value
    except TypeError:
      old = parent[target]
      raise ValueError(
        f"override {key!r}: expected {type(old).__name__} (like the "
        f"default {old!r}), got {value!r} ({type(value).__name__})."
      ) from None
  return config


def point_name(index: int, point) -> str:
  """The folder name of the sweep's ``index``-th point: the index and a
  slug of its arg and overrides (``'003_distortion=tc,model=cnn,seed=0'``),
  at most 84 characters."""
  text = ",".join(
    [point["arg"], *(f"{k}={v}" for k, v in sorted(point["overrides"].items()))]
  )
  slug = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text).strip(",_")[:80]
  return f"{index:03d}_{slug or 'default'}"


def plan(
  config,
  name: str,
  *,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
) -> list[dict]:
  """The points of sweep ``name``: what a sweep will train, and where.

  Pure: the same arguments give the same points, and nothing is written
  (the config file is imported, once per path).

  Args:
    config: the config file (a path, or the module
      :func:`stn_jax.config_args.load_config_module` returns).
    name: the sweep, ``sweep_<name>`` in the config file.
    select: ``select(point)`` keeps a point (``{'arg', 'overrides'}``, as
      :func:`expand` gives it); None keeps all.
    extra_arg: appended to every point's arg (e.g. ``'small=true'``), and
      so to its folder name.

  Returns:
    the kept points in sweep order, each ``{'index', 'name', 'arg',
    'overrides'}``: its index in the full sweep and its folder name
    (:func:`point_name`) from that index.
  """
  module = load_config_module(config) if isinstance(config, str) else config
  planned = []
  for index, point in enumerate(expand(module, name)):
    if select is not None and not select(point):
      continue
    if extra_arg:
      point = {
        **point,
        "arg": ",".join(a for a in (point["arg"], extra_arg) if a),
      }
    planned.append({"index": index, "name": point_name(index, point), **point})
  return planned
