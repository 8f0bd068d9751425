"""Flax NNX models: localisation nets, the SpatialTransformer layer and the
classifiers of the paper, GTSRB, a small ResNet and a pre-activation
ResNet with transformers where the config places them.

``get_model(name, in_shape=..., num_classes=..., rngs=..., **kwargs)`` builds
any registered model; ``MODELS`` names them all. A model is one
``register_model(name, factory, transformer=..., datasets=...)`` entry below
(:mod:`stn_jax.models.registry`); the config files read their lists of
models from :func:`model_names`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from stn_jax import config_schema, xla_cpu
from stn_jax.models import convolution
from stn_jax.models.classifiers import (
  CNN,
  FCN,
  GtsrbCNN,
  ResNet,
  STClassifier,
  ic_st_cnn,
  resnet_stn,
  st_cnn,
  st_fcn,
)
from stn_jax.models.layers import (
  ConvLocalisation,
  FCLocalisation,
  ICSpatialTransformer,
  SpatialTransformer,
  SpatialTransformer3D,
)
from stn_jax.models.registry import (
  MODELS,
  ModelEntry,
  model_names,
  register_model,
)
from stn_jax.models.resnet import PreActResNet, preact_resnet_stn

# One entry per model (its name, factory, whether it holds a spatial
# transformer, and which config files offer it): stn_jax.models.registry.
_MNIST, _GTSRB, _BOTH = ("mnist",), ("gtsrb",), ("mnist", "gtsrb")
register_model("fcn", FCN, transformer=False, datasets=_MNIST)
register_model("cnn", CNN, transformer=False, datasets=_MNIST)
register_model("st_fcn", st_fcn, transformer=True, datasets=_MNIST)
register_model("st_cnn", st_cnn, transformer=True, datasets=_MNIST)
register_model("ic_st_cnn", ic_st_cnn, transformer=True, datasets=_MNIST)
register_model(
  "gtsrb_cnn",
  functools.partial(GtsrbCNN, num_transformers=0),
  transformer=False,
  datasets=_GTSRB,
)
register_model(
  "gtsrb_st_cnn",
  functools.partial(GtsrbCNN, num_transformers=3),
  transformer=True,
  datasets=_GTSRB,
)
register_model("resnet", ResNet, transformer=False, datasets=_BOTH)
register_model("resnet_stn", resnet_stn, transformer=True, datasets=_BOTH)
register_model("preact_resnet", PreActResNet, transformer=False, datasets=_BOTH)
register_model(
  "preact_resnet_stn", preact_resnet_stn, transformer=True, datasets=_BOTH
)
# The built-in models with a spatial transformer (model_names(transformer=
# True) also lists models registered later).
TRANSFORMER_MODELS = model_names(transformer=True)


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
  ``config.seed``, its convolutions' weight gradient computed as
  ``config.conv_weight_gradient`` says (:mod:`stn_jax.models.convolution`;
  ``'xla'`` for configs written before the key existed), for the XLA CPU
  kernels of ``config.xla_cpu_library`` (:mod:`stn_jax.xla_cpu`). Works on a config
  read back from a workdir's ``config.json`` (JSON lists become tuples
  again)."""
  kwargs = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in config.model_kwargs.to_dict().items()
  }
  method = config_schema.get(config, "conv_weight_gradient")
  library = xla_cpu.step_library(config)
  with convolution.weight_gradient(method, library=library):
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


def _first_transformer(model: nnx.Module) -> SpatialTransformer:
  found = transformers(model)
  if not found:
    raise ValueError(
      f"model must contain a SpatialTransformer; {type(model).__name__} has "
      "none."
    )
  return found[0]


def transformer_input(model: nnx.Module, images: jax.Array) -> jax.Array:
  """What ``model``'s first spatial transformer (``transformers(model)[0]``)
  receives when ``model`` is applied to ``images (N, H, W, C)``: the images
  themselves unless the model processes them first (its
  ``transformer_input`` method: the GTSRB CNN's input contrast
  normalisation, or the stages before a ResNet's stage transformer).

  Raises:
    ValueError: if ``model`` has no spatial transformer.
  """
  _first_transformer(model)
  return _transformer_input(model, images)


def _transformer_input(model, images):
  method = getattr(model, "transformer_input", None)
  return images if method is None else method(images)


def first_transform_params(model: nnx.Module, images: jax.Array) -> jax.Array:
  """The parameters ``(N, P)`` that ``model``'s first spatial transformer
  regresses when ``model`` is applied to ``images (N, H, W, C)`` (flat
  layout of :mod:`stn_jax.ops.transforms`; its ``transform`` names it).

  Raises:
    ValueError: if ``model`` has no spatial transformer.
  """
  first = _first_transformer(model)
  return first.transform_params(_transformer_input(model, images))


def warp_input(model: nnx.Module, images: jax.Array) -> jax.Array:
  """``images (N, H, W, C)`` as ``model``'s first spatial transformer warps
  them: its sampling grid, computed from what it receives in the model
  (:func:`transformer_input`), applied to the images themselves with its
  sampler options. Returns ``(N, H_out, W_out, C)`` at the transformer's
  output size, in the images' own scale.

  For a transformer on the raw input this is the transformer's output.
  Otherwise it shows where the transformer looks, in the image: with the
  GTSRB CNN's input contrast normalisation it is the un-normalised image
  warped as the normalised one is; for a transformer after a ResNet stage,
  the image sampled where it samples the features.

  Raises:
    ValueError: if ``model`` has no spatial transformer.
  """
  first = _first_transformer(model)
  return first.sample(images, first.grid(_transformer_input(model, images)))


__all__ = [
  "CNN",
  "ConvLocalisation",
  "FCLocalisation",
  "FCN",
  "GtsrbCNN",
  "ICSpatialTransformer",
  "MODELS",
  "ModelEntry",
  "PreActResNet",
  "ResNet",
  "STClassifier",
  "SpatialTransformer",
  "SpatialTransformer3D",
  "TRANSFORMER_MODELS",
  "count_params",
  "first_transform_params",
  "from_config",
  "get_model",
  "model_names",
  "register_model",
  "transformer_input",
  "transformers",
  "warp_input",
]
