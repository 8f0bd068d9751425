"""Config files and their typed ``key=value,key=value`` arguments.

Every command takes ``--config=file.py:ARG``: the config file, and the
string ``ARG`` that its ``get_config(ARG)`` parses with :func:`parse_arg`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def split_config_spec(spec: str) -> tuple[str, str]:
  """``'configs/mnist.py:model=cnn'`` -> ``('configs/mnist.py',
  'model=cnn')``; the arg is ``''`` when there is no ``:``."""
  path, _, arg = spec.partition(".py:")
  if arg or spec.endswith(".py:"):
    return path + ".py", arg
  return spec, ""


def load_config_module(path: str):
  """Imports a config file by path (its ``get_config`` and ``sweep_*``)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found.")
  name = "stn_jax_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def import_sibling(config_file: str, name: str):
  """The config module ``name`` next to ``config_file`` (a config's
  ``__file__``): how ``configs/mnist.py`` imports ``configs/common.py``
  wherever it is run from."""
  return load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  )


def _convert(key: str, text: str, default: Any, choices):
  if isinstance(default, bool):
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
      value = True
    elif lowered in ("0", "false", "no", "off"):
      value = False
    else:
      raise ValueError(
        f"config argument {key} must be a bool (true/false); got {text!r}."
      )
  elif isinstance(default, (int, float)):
    kind = type(default)
    try:
      value = kind(text)
    except ValueError:
      raise ValueError(
        f"config argument {key} must be "
        f"{'an int' if kind is int else 'a float'}; got "
        f"{text!r}."
      ) from None
  else:
    value = text.strip()
  if choices is not None and value not in choices:
    raise ValueError(
      f"config argument {key} must be one of "
      f"{', '.join(map(str, choices))}; got {text!r}."
    )
  return value


def parse_arg(
  arg: str | None,
  defaults: Mapping[str, Any],
  choices: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
  """Parses ``'k1=v1,k2=v2'`` against typed defaults.

  Args:
    arg: the string after ``:`` in ``--config=configs/x.py:ARG`` (or None).
    defaults: every allowed key with its default; the default's type is the
      value's type (bool, int, float, str).
    choices: allowed values of some keys.

  Returns:
    ``defaults`` updated with the parsed values.

  Raises:
    ValueError: an unknown or repeated key, a malformed item, a wrong type
      or a value outside its choices; the message lists the valid ones.
  """
  choices = choices or {}
  values = dict(defaults)
  if not arg:
    return values
  given = set()
  for item in arg.split(","):
    if not item.strip():
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if sep and key in given:
      raise ValueError(
        f"config argument {key} is given twice in {arg!r}; give it once."
      )
    given.add(key)
    if not sep:
      raise ValueError(
        f"config argument {item!r} must be key=value; valid "
        f"keys: {', '.join(defaults)}."
      )
    if key not in defaults:
      raise ValueError(
        f"unknown config argument {key!r}; valid keys: {', '.join(defaults)}."
      )
    values[key] = _convert(key, text, defaults[key], choices.get(key))
  return values


def expand_scale(
  arg: str | None, scales: Mapping[str, tuple[str, Mapping[str, Any]]]
) -> tuple[str, dict[str, Any]]:
  """Replaces a ``scale=NAME`` item of a config argument by what that
  scale implies.

  Args:
    arg: the config argument (``'distortion=rts,scale=fast'``).
    scales: the config file's scales: ``{name: (implied arg, overrides)}``,
      where the implied arg holds config arguments (``'on_the_fly=true'``)
      and the overrides are config keys, dotted for nested ones
      (``{'num_steps': 12000, 'model_kwargs.width': 0.25}``).

  Returns:
    ``(arg, overrides)``: the argument without ``scale`` and with the
    scale's implied items that ``arg`` does not set itself (an explicit
    item wins), and the overrides to apply last (:func:`set_overrides`);
    ``(arg, {})`` without ``scale``.

  Raises:
    ValueError: an unknown scale (the message lists them), or ``scale``
      given twice.
  """
  items = [item for item in (arg or "").split(",") if item.strip()]
  named = [i for i in items if i.partition("=")[0].strip() == "scale"]
  if not named:
    return arg or "", {}
  if len(named) > 1:
    raise ValueError(
      f"config argument scale is given twice in {arg!r}; give it once."
    )
  name = named[0].partition("=")[2].strip()
  if name not in scales:
    raise ValueError(
      f"config argument scale must be one of {', '.join(scales)}; got {name!r}."
    )
  implied, overrides = scales[name]
  rest = [i for i in items if i not in named]
  given = {i.partition("=")[0].strip() for i in rest}
  rest += [
    i
    for i in implied.split(",")
    if i.strip() and i.partition("=")[0].strip() not in given
  ]
  return ",".join(rest), dict(overrides)


def set_overrides(config, overrides: Mapping[str, Any]) -> None:
  """Sets each ``overrides`` key (dotted for nested ones, e.g.
  ``'model_kwargs.width'``) on the ConfigDict ``config``, creating nested
  keys that do not exist yet."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
