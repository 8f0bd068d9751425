"""Flax NNX models: localisation nets, the SpatialTransformer layer and the
classifiers of the paper, GTSRB and a small ResNet.

``get_model(name, in_shape=..., num_classes=..., rngs=..., **kwargs)`` builds
any registered model; ``MODELS`` names them all.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from stn_jax.models.classifiers import (
  CNN,
  FCN,
  GtsrbCNN,
  ResNet,
  STClassifier,
  resnet_stn,
  st_cnn,
  st_fcn,
)
from stn_jax.models.layers import (
  ConvLocalisation,
  FCLocalisation,
  SpatialTransformer,
  SpatialTransformer3D,
)

MODELS = {
  "fcn": FCN,
  "cnn": CNN,
  "st_fcn": st_fcn,
  "st_cnn": st_cnn,
  "gtsrb_cnn": functools.partial(GtsrbCNN, num_transformers=0),
  "gtsrb_st_cnn": functools.partial(GtsrbCNN, num_transformers=3),
  "resnet": ResNet,
  "resnet_stn": resnet_stn,
}
TRANSFORMER_MODELS = ("st_fcn", "st_cnn", "gtsrb_st_cnn", "resnet_stn")


def get_model(
  name: str, *, in_shape, num_classes: int, rngs: nnx.Rngs, **kwargs
) -> nnx.Module:
  """Builds the registered model ``name``."""
  if name not in MODELS:
    raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}.")
  return MODELS[name](tuple(in_shape), num_classes, rngs=rngs, **kwargs)


def from_config(config, in_shape) -> nnx.Module:
  """The model a run config describes (``config.model``,
  ``config.model_kwargs``, ``config.num_classes``), initialised from
  ``config.seed``. Works on a config read back from a workdir's
  ``config.json`` (JSON lists become tuples again)."""
  kwargs = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in config.model_kwargs.to_dict().items()
  }
  return get_model(
    config.model,
    in_shape=in_shape,
    num_classes=config.num_classes,
    rngs=nnx.Rngs(config.seed),
    **kwargs,
  )


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters."""
  return sum(
    int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))
  )


def transformers(model: nnx.Module) -> list[SpatialTransformer]:
  """Every SpatialTransformer inside ``model``, in graph order."""
  return [
    m for _, m in nnx.iter_graph(model) if isinstance(m, SpatialTransformer)
  ]


__all__ = [
  "CNN",
  "ConvLocalisation",
  "FCLocalisation",
  "FCN",
  "GtsrbCNN",
  "MODELS",
  "ResNet",
  "STClassifier",
  "SpatialTransformer",
  "SpatialTransformer3D",
  "TRANSFORMER_MODELS",
  "count_params",
  "from_config",
  "get_model",
  "transformers",
]
