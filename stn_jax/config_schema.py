"""The run config's schema: every key's default, check and role, in one table.

:data:`SCHEMA` lists each config key once (:class:`Key`). Everything else
that needs to know a key's rules is derived from it:

- the defaults of a new config (:func:`defaults`; ``configs/common.py``
  starts from them);
- the value of a key a config lacks (:func:`get`: configs written by older
  versions of stn_jax, configs built by hand) -- no ``config.get(key,
  default)`` elsewhere repeats a default;
- config validation (:func:`validate`: each key's own check; the checks
  that relate several keys, or the config to the data and the devices, are
  in :func:`stn_jax.train.validation.validate_config`);
- the workdir compatibility check (:mod:`stn_jax.workdir`:
  :data:`SAFE_TO_CHANGE`, :data:`IMPLICIT_DEFAULTS`, :data:`ONLY_WITH`);
- the population checks (:data:`MEMBER_KEYS`: what members may set each for
  themselves; :data:`MEMBER_HYPERPARAMETERS`: those the step applies per
  member).

Roles (:class:`Role`):

- ``IDENTITY``: part of what a run computes; rerunning a workdir with
  another value is refused (it would be another run).
- ``EXECUTION``: how or how long the run executes (step budget, cadences,
  where data lives, dispatch); safe to change when a run is resumed.
- ``MEMBER``: part of a run's identity that population members may set each
  for themselves (seed, learning rate, ...).

A new config key is one :class:`Key` row here (plus its use). Keys a config
holds that the table does not list are compared as identity keys and not
checked.

The module is longer than 400 lines because the table is: one row per key
(about 40 keys), each with its words, is the point of having one place.

This module imports only the standard library and ``ml_collections``
(config files import it); checks that need a registry (models, datasets,
distortions) import it when they run.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections


class Role(enum.Enum):
  """What a change of a key means for a run (see the module docstring)."""

  IDENTITY = "identity"
  EXECUTION = "execution"
  MEMBER = "member"


class _Missing:
  def __repr__(self) -> str:
    return "MISSING"


MISSING: Any = _Missing()
"""A :class:`Key`'s ``default`` when new configs do not hold the key, or its
``implicit`` when a config must hold it."""


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key.

  Attributes:
    name: the key, dotted for a nested one (``'model_kwargs.width'``).
    default: its value in a new config (:func:`defaults`); MISSING: new
      configs do not hold it (the dataset's config file sets it, or the
      model's own default applies): the key is optional.
    role: :class:`Role`.
    check: returns what is wrong with a value (a phrase such as ``'a
      positive int'``: the value must be that), or None when it is fine.
    doc: one line on what it does.
    implicit: the value a config without the key has: what versions of
      stn_jax before the key existed did (configs they wrote are read with
      it, and compare equal to a config holding it). MISSING: a config
      must hold the key (unless ``default`` is MISSING too).
    only_with: a predicate on a flat config (``{dotted key: value}``); where
      given, a difference in this key is ignored by the workdir check when
      the predicate is false for both configs (the key has no effect
      then).
    identity_when: for an execution key, a predicate on a flat config;
      where it holds for the saved or the new config, a change of the key
      is refused as for an identity key (a cosine schedule decays over
      ``num_steps``).
    hint: a few words shown after the key in its error message.
  """

  name: str
  default: Any
  role: Role
  check: Callable[[Any], str | None]
  doc: str
  implicit: Any = MISSING
  only_with: Callable[[Mapping[str, Any]], bool] | None = None
  identity_when: Callable[[Mapping[str, Any]], bool] | None = None
  hint: str = ""


# ---------------------------------------------------------------------------
# Checks: each returns None for a good value, else what the value must be.


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def positive_int(value) -> str | None:
  """Checks an int > 0."""
  return None if _is_int(value) and value > 0 else "a positive int"


def int_at_least(low: int, what: str = "") -> Callable[[Any], str | None]:
  """Checks an int >= ``low``; ``what`` is appended to the phrase."""

  def check(value):
    if _is_int(value) and value >= low:
      return None
    return f"an int >= {low}{what}"

  return check


def number(
  low: float = -math.inf, *, inclusive: bool = True, per_channel=False
) -> Callable[[Any], str | None]:
  """Checks a finite number above ``low`` (or equal to it when
  ``inclusive``); with ``per_channel`` also a list of them."""

  def check(value):
    values = (
      value if per_channel and isinstance(value, (list, tuple)) else [value]
    )
    if all(
      _is_number(v) and (v >= low if inclusive else v > low) for v in values
    ):
      return None
    bound = f">= {low}" if inclusive else f"> {low}"
    return f"a finite number {bound}" if low > -math.inf else "a finite number"

  return check


def boolean(value) -> str | None:
  """Checks a bool."""
  return None if isinstance(value, bool) else "a bool"


def string(value) -> str | None:
  """Checks a str."""
  return None if isinstance(value, str) else "a str"


def one_of(choices: Callable[[], Any]) -> Callable[[Any], str | None]:
  """Checks a value in ``choices()`` (a callable, so that a registry is
  imported only when a config is checked)."""

  def check(value):
    names = tuple(choices())
    return None if value in names else f"one of {', '.join(names)}"

  return check


def strings(value) -> str | None:
  """Checks a non-empty sequence of str."""
  ok = (
    isinstance(value, (list, tuple))
    and value
    and all(isinstance(v, str) for v in value)
  )
  return None if ok else "a non-empty sequence of str"


def mapping(value) -> str | None:
  """Checks a dict (a ConfigDict)."""
  ok = isinstance(value, (dict, ml_collections.ConfigDict))
  return None if ok else "a dict"


def _models():
  from stn_jax import models

  return models.MODELS


def _optimizers():
  from stn_jax import recipe

  return recipe.OPTIMIZERS


def _schedules():
  from stn_jax import recipe

  return recipe.SCHEDULES


def _unit_interval(value) -> str | None:
  ok = _is_number(value) and 0.0 <= value < 1.0
  return None if ok else "a number in [0, 1)"


def _weight_gradients():
  from stn_jax.models import convolution

  return convolution.WEIGHT_GRADIENTS


def _libraries():
  from stn_jax import xla_cpu

  return xla_cpu.LIBRARIES


def _on_the_fly(value) -> str | None:
  if not isinstance(value, str):
    return "a str"
  if value:
    from stn_jax.data import distortions

    distortions.check_variant(value)  # raises with the variants named
  return None


def _extra_hooks(value) -> str | None:
  if not isinstance(value, (list, tuple)):
    return "a sequence of registered hook names"
  from stn_jax.train import hook_registry

  hook_registry.check_names(tuple(value))  # raises with the names
  return None


def _seed(value) -> str | None:
  ok = _is_int(value) and 0 <= value < 2**31
  return None if ok else "an int in [0, 2**31)"


_AUGMENTATION_KEYS = ("augment_rotation", "augment_scale", "augment_translate")


def _augments(flat: Mapping[str, Any]) -> bool:
  """Whether a (flat) config distorts or jitters its training images."""
  return bool(flat.get("on_the_fly")) or any(
    flat.get(k, 0.0) for k in _AUGMENTATION_KEYS
  )


# ---------------------------------------------------------------------------
# The table.

_I, _E, _M = Role.IDENTITY, Role.EXECUTION, Role.MEMBER

SCHEMA: tuple[Key, ...] = (
  Key(
    "arg",
    "",
    _E,
    string,
    "the get_config argument; the keys it produces are compared instead",
    implicit="",
  ),
  # Data.
  Key("dataset", "", _I, string, "evaluated on (and trained on by default)"),
  Key(
    "train_dataset",
    "",
    _I,
    string,
    "trained on; '' = dataset",
    implicit="",
  ),
  Key("train_split", "train", _I, string, "trained on", implicit="train"),
  Key("eval_splits", ("test",), _I, strings, "of dataset, evaluated on"),
  Key(
    "on_the_fly",
    "",
    _I,
    _on_the_fly,
    "a distortion drawn afresh per epoch from train_dataset, or ''",
    implicit="",
  ),
  *(
    Key(
      name,
      0.0,
      _I,
      number(0.0),
      f"random affine jitter of training images: {what}; 0 = none",
      implicit=0.0,
    )
    for name, what in (
      ("augment_rotation", "max rotation (degrees)"),
      ("augment_scale", "max relative scale change"),
      ("augment_translate", "max shift (fraction of the image size)"),
    )
  ),
  Key(
    "source_dir",
    "",
    _E,
    string,
    "data dir with mnist/, gtsrb/; '' = $STN_DATA_DIR or ../shared/data",
    implicit="",
  ),
  Key(
    "data_mirror",
    "",
    _E,
    string,
    "base URL for source downloads; '' = $STN_DATA_MIRROR or the official",
    implicit="",
  ),
  Key(
    "tfds_dir",
    "",
    _E,
    string,
    "built datasets; '' = TFDS's default",
    implicit="",
  ),
  Key(
    "compilation_cache_dir",
    "",
    _E,
    string,
    "persistent XLA compilation cache; '' = off (or JAX's env setting)",
    implicit="",
  ),
  Key(
    "mean",
    0.0,
    _I,
    number(per_channel=True),
    "inputs are (pixels / 255 - mean) / std; scalar or per channel",
    implicit=0.0,
  ),
  Key(
    "std",
    1.0,
    _I,
    number(0.0, inclusive=False, per_channel=True),
    "see mean",
    implicit=1.0,
  ),
  # Model.
  Key("num_classes", 10, _I, positive_int, "classifier outputs"),
  Key(
    "seed",
    0,
    _M,
    _seed,
    "initialisation and data order",
  ),
  Key("model", "", _I, one_of(_models), "a name of stn_jax.models.MODELS"),
  Key(
    "model_kwargs",
    ml_collections.ConfigDict(),
    _I,
    mapping,
    "the model's keyword arguments",
  ),
  Key(
    "model_kwargs.width",
    MISSING,
    _I,
    number(0.0, inclusive=False),
    "GtsrbCNN's width multiplier (explicit since 2.0.0)",
    implicit=1.0,
  ),
  Key(
    "model_kwargs.recurrences",
    MISSING,
    _I,
    int_at_least(1),
    "ic_st_cnn's inverse compositional updates; absent: the model's (4)",
    hint="ic_st_cnn's updates",
  ),
  # Optimisation.
  Key("batch_size", 256, _I, positive_int, "global batch size"),
  Key(
    "num_steps",
    150_000,
    _E,
    positive_int,
    "the last step; part of the identity of a cosine-schedule run",
    identity_when=lambda flat: flat.get("lr_schedule") == "cosine",
  ),
  Key("optimizer", "sgd", _I, one_of(_optimizers), "sgd, momentum or adam"),
  Key("learning_rate", 0.01, _M, number(0.0, inclusive=False), "peak rate"),
  Key("lr_decay_every", 50_000, _I, positive_int, "steps per rate decay"),
  Key(
    "lr_decay_factor",
    0.1,
    _I,
    number(0.0, inclusive=False),
    "the rate's factor every lr_decay_every steps",
  ),
  Key(
    "lr_schedule",
    "step",
    _I,
    one_of(_schedules),
    "'step': x lr_decay_factor every lr_decay_every steps (the paper's); "
    "'cosine': to 0 along half a cosine over num_steps",
    implicit="step",
  ),
  Key(
    "warmup_steps",
    0,
    _I,
    int_at_least(0),
    "a linear ramp of the learning rate over the first steps; 0 = none",
    implicit=0,
  ),
  Key(
    "label_smoothing",
    0.0,
    _I,
    _unit_interval,
    "cross-entropy against (1 - s) * one-hot + s / classes; 0 = none",
    implicit=0.0,
  ),
  Key(
    "ema_decay",
    0.0,
    _I,
    _unit_interval,
    "evaluate, snapshot and save for inference an exponential moving "
    "average of the parameters with this decay; 0 = none",
    implicit=0.0,
  ),
  Key(
    "localisation_lr_multiplier",
    1.0,
    _M,
    number(0.0),
    "the localisation nets' rate over learning_rate",
    implicit=1.0,
  ),
  Key(
    "grad_clip_norm",
    0.0,
    _M,
    number(0.0),
    "clip gradients to this global norm; 0 = none",
    implicit=0.0,
  ),
  Key(
    "weight_decay",
    0.0,
    _M,
    number(0.0),
    "decoupled (AdamW-form) weight decay for every optimiser; 0 = none",
    implicit=0.0,
  ),
  # Cadences.
  Key("log_every", 100, _E, positive_int, "steps between metric logs"),
  Key("eval_every", 10_000, _E, positive_int, "steps between evaluations"),
  Key(
    "snapshot_every",
    0,
    _E,
    int_at_least(0, " (0: only at evaluations)"),
    "steps between transformer snapshots for the viz GIF",
    implicit=0,
  ),
  Key("checkpoint_every", 2_000, _E, positive_int, "steps between saves"),
  # Execution.
  Key(
    "data_on_device",
    True,
    _E,
    boolean,
    "keep the uint8 training split on the device, gather batches there",
    implicit=False,
  ),
  Key(
    "augment_on_device",
    True,
    _I,
    boolean,
    "draw on_the_fly/augment_* inside the step (another stream than the "
    "host's: identity)",
    implicit=False,
    only_with=_augments,
  ),
  Key(
    "steps_per_dispatch",
    1,
    _E,
    positive_int,
    "steps per dispatch (lax.scan); hook steps stay exact",
    implicit=1,
  ),
  Key(
    "conv_weight_gradient",
    "auto",
    _E,
    one_of(_weight_gradients),
    "patches, xla or auto (stn_jax.models.convolution)",
    implicit="xla",
  ),
  Key(
    "xla_cpu_library",
    "auto",
    _E,
    one_of(_libraries),
    "XLA's CPU kernels: eigen (no YNNPACK fusions), ynnpack (jaxlib's "
    "default) or auto (eigen with one CPU device; stn_jax.xla_cpu)",
    implicit="ynnpack",
  ),
  Key(
    "async_checkpoints",
    True,
    _E,
    boolean,
    "write periodic checkpoints in the background",
    implicit=False,
  ),
  Key("max_checkpoints", 3, _E, positive_int, "checkpoints kept"),
  Key(
    "extra_hooks",
    (),
    _E,
    _extra_hooks,
    "loop hooks beyond the defaults, by registered name "
    "(stn_jax.train.hook_registry)",
    implicit=(),
  ),
  Key("eval_batch_size", 1000, _E, positive_int, "evaluation batch size"),
)

KEYS: dict[str, Key] = {key.name: key for key in SCHEMA}
""":data:`SCHEMA` by name."""

SAFE_TO_CHANGE: tuple[str, ...] = tuple(
  k.name for k in SCHEMA if k.role is Role.EXECUTION
)
"""Keys a rerun may change without making it another run."""

IDENTITY_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {
  k.name: k.identity_when for k in SCHEMA if k.identity_when is not None
}
"""Execution keys that are identity when the predicate holds
(:attr:`Key.identity_when`)."""

IMPLICIT_DEFAULTS: dict[str, Any] = {
  k.name: k.implicit for k in SCHEMA if k.implicit is not MISSING
}
"""The value a config without the key has (see :attr:`Key.implicit`)."""

ONLY_WITH: dict[str, Callable[[Mapping[str, Any]], bool]] = {
  k.name: k.only_with for k in SCHEMA if k.only_with is not None
}
"""Keys that have no effect unless the predicate holds (:attr:`Key.only_with`)."""

MEMBER_KEYS: tuple[str, ...] = tuple(
  k.name for k in SCHEMA if k.role is Role.MEMBER
)
"""Keys population members may set each for themselves."""

MEMBER_HYPERPARAMETERS: dict[str, Any] = {
  k.name: k.implicit
  for k in SCHEMA
  if k.role is Role.MEMBER and k.name != "seed"
}
"""The member keys the step applies per member, with their implicit values
(MISSING: every config holds it); the seed acts through the initial state
and the data order instead."""


def get(config, name: str):
  """``config``'s value of the key ``name`` (dotted for nested keys), or
  its implicit value (:attr:`Key.implicit`) when the config lacks it.

  Raises:
    KeyError: ``name`` is not in :data:`SCHEMA`, or the config lacks a key
      that has no implicit value.
  """
  key = KEYS[name]
  found, value = _lookup(config, name)
  if found:
    return value
  if key.implicit is MISSING:
    raise KeyError(f"config.{name} is missing (it has no default).")
  return key.implicit


def _lookup(config, name: str) -> tuple[bool, Any]:
  node = config
  for part in name.split("."):
    if part not in node:
      return False, None
    node = node[part]
  return True, node


def defaults() -> ml_collections.ConfigDict:
  """A config holding every key's :attr:`Key.default` (keys whose default is
  MISSING are left out), in :data:`SCHEMA` order."""
  config = ml_collections.ConfigDict()
  for key in SCHEMA:
    if key.default is MISSING:
      continue
    value = key.default
    if isinstance(value, ml_collections.ConfigDict):
      value = ml_collections.ConfigDict(value.to_dict())
    *parents, last = key.name.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[last] = value
  return config


def validate(config) -> None:
  """Checks every key of :data:`SCHEMA` the config holds (or must hold).

  Raises:
    ValueError: ``config.<key> must be <what>; got <value>.`` for the first
      bad key, in table order.
  """
  for key in SCHEMA:
    found, value = _lookup(config, key.name)
    if not found:
      if key.implicit is MISSING and key.default is not MISSING:
        raise ValueError(f"config.{key.name} is missing ({key.doc}).")
      continue  # the implicit value, or the model's own default
    problem = key.check(value)
    if problem is not None:
      hint = f" ({key.hint})" if key.hint else ""
      raise ValueError(
        f"config.{key.name}{hint} must be {problem}; got {value!r}."
      )


def describe() -> str:
  """The table as text (one line per key: name, role, default, doc)."""
  lines = []
  for key in SCHEMA:
    default = "-" if key.default is MISSING else repr(key.default)
    lines.append(f"{key.name:28} {key.role.value:9} {default:12} {key.doc}")
  return "\n".join(lines)
