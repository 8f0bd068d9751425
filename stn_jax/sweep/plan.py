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


def sweep_names(module) -> list[str]:
  return sorted(
    n[len("sweep_") :]
    for n in dir(module)
    if n.startswith("sweep_") and callable(getattr(module, n))
  )


def expand(module, name: str) -> list[dict[str, Any]]:
  """The points of sweep ``name``: ``[{'arg': str, 'overrides': dict}]``."""
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
  """The config of one point: ``get_config(arg)`` plus its overrides."""
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
  text = ",".join(
    [point["arg"], *(f"{k}={v}" for k, v in sorted(point["overrides"].items()))]
  )
  slug = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text).strip(",_")[:80]
  return f"{index:03d}_{slug or 'default'}"


def plan(
  module,
  name: str,
  *,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
) -> list[dict]:
  """The kept points of sweep ``name``, in order: ``{'index', 'name',
  'arg', 'overrides'}`` with ``extra_arg`` appended to each arg and the
  folder name (:func:`point_name`) from its index in the full sweep."""
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
