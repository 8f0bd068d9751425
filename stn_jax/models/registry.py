"""The models by name: one :func:`register_model` entry per model.

A model is a factory ``factory(in_shape, num_classes, *, rngs, **kwargs)
-> nnx.Module``. Its entry also says whether it holds a spatial transformer
(then its config takes ``transform``) and which config files offer it
(``datasets``: the dataset families, ``'mnist'`` and ``'gtsrb'``, whose
config files read their ``MODELS`` / ``TRANSFORMER_MODELS`` from
:func:`model_names`). The built-in models are registered in
:mod:`stn_jax.models`; adding one is one more ``register_model`` call there
(``tests/test_models.py`` then builds it, ``tests/test_train.py`` asks for
an end-to-end config of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

# The dataset families with a config file (configs/<family>.py).
DATASET_FAMILIES = ("mnist", "gtsrb")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One registered model.

  Attributes:
    name: what ``config.model`` calls it.
    factory: ``factory(in_shape, num_classes, *, rngs, **kwargs)``.
    transformer: whether it holds a spatial transformer.
    datasets: the dataset families whose config files offer it.
  """

  name: str
  factory: Callable
  transformer: bool
  datasets: tuple[str, ...]


# name -> entry, in registration order; MODELS is its name -> factory view.
ENTRIES: dict[str, ModelEntry] = {}
MODELS: dict[str, Callable] = {}


def register_model(
  name: str,
  factory: Callable,
  *,
  transformer: bool,
  datasets: Sequence[str],
) -> Callable:
  """Registers ``factory`` as model ``name``; returns ``factory``.

  Args:
    name: the model's name in configs (``config.model``).
    factory: ``factory(in_shape, num_classes, *, rngs, **kwargs) ->
      nnx.Module``.
    transformer: whether the model holds a spatial transformer
      (``tests/test_models.py`` checks it against the built model).
    datasets: the dataset families whose config files offer it, a subset
      of :data:`DATASET_FAMILIES`.

  Raises:
    ValueError: the name is taken, or a family is unknown.
  """
  if name in ENTRIES:
    raise ValueError(f"model {name!r} is registered already.")
  unknown = sorted(set(datasets) - set(DATASET_FAMILIES))
  if unknown or not datasets:
    raise ValueError(
      f"datasets must be some of {', '.join(DATASET_FAMILIES)}; got "
      f"{tuple(datasets)!r} for model {name!r}."
    )
  ENTRIES[name] = ModelEntry(name, factory, bool(transformer), tuple(datasets))
  MODELS[name] = factory
  return factory


def model_names(
  *, dataset: str | None = None, transformer: bool | None = None
) -> tuple[str, ...]:
  """The registered models' names in registration order, only those
  offered for ``dataset`` (a family of :data:`DATASET_FAMILIES`) and with
  (``transformer=True``) or without (``False``) a spatial transformer when
  those are given."""
  if dataset is not None and dataset not in DATASET_FAMILIES:
    raise ValueError(
      f"dataset must be one of {', '.join(DATASET_FAMILIES)}; got {dataset!r}."
    )
  return tuple(
    entry.name
    for entry in ENTRIES.values()
    if (dataset is None or dataset in entry.datasets)
    and (transformer is None or entry.transformer == transformer)
  )
