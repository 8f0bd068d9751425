"""The paper's classifiers and their spatial-transformer versions (NNX).

Every model is built from ``in_shape=(H, W, C)`` and ``num_classes`` and maps
NHWC float images to logits. The ST-FCN, ST-CNN and ResNet-STN expose their
transformer as ``model.transformer``; the GTSRB CNN its list as
``model.transformers``. ``stn_jax.models.transformers(model)`` finds them in
any model. A model whose first transformer does not see the raw input (the
GTSRB CNN's input contrast normalisation, a ResNet's transformer after a
stage) says what it sees with a ``transformer_input(x)`` method, which
``stn_jax.models.transformer_input`` and ``warp_input`` use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx

from stn_jax.models.contrast import LocalContrastNorm
from stn_jax.models.convolution import conv
from stn_jax.models.layers import ICSpatialTransformer, SpatialTransformer
from stn_jax.models.pooling import max_pool


def _pool(x, size=2):
  return max_pool(x, size)


class FCN(nnx.Module):
  """Two hidden fully connected ReLU layers and a softmax classifier."""

  def __init__(
    self, in_shape, num_classes, *, hidden: int = 128, rngs: nnx.Rngs
  ):
    self.fc1 = nnx.Linear(int(np.prod(in_shape)), hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class CNN(nnx.Module):
  """conv 9x9 -> max-pool 2 -> conv 7x7 -> max-pool 2 -> classifier."""

  def __init__(
    self,
    in_shape,
    num_classes,
    *,
    channels: Sequence[int] = (32, 32),
    rngs: nnx.Rngs,
  ):
    height, width, in_channels = in_shape
    self.conv1 = conv(in_channels, channels[0], (9, 9), rngs=rngs)
    self.conv2 = conv(channels[0], channels[1], (7, 7), rngs=rngs)
    self.out = nnx.Linear(
      (height // 4) * (width // 4) * channels[1], num_classes, rngs=rngs
    )

  def __call__(self, x):
    x = _pool(nnx.relu(self.conv1(x)))
    x = _pool(nnx.relu(self.conv2(x)))
    return self.out(x.reshape(x.shape[0], -1))


class STClassifier(nnx.Module):
  """A spatial transformer on the input, then a classifier.

  ``pool_output`` average-pools the transformer's output by 2 (the paper
  does this for RTS and TC). ``transformer_type`` is the transformer's
  class (:class:`SpatialTransformer` or :class:`ICSpatialTransformer`),
  built with ``transformer_kwargs``.
  """

  def __init__(
    self,
    in_shape,
    num_classes,
    *,
    classifier: type,
    classifier_kwargs=None,
    transform: str = "affine",
    localisation: str = "conv",
    localisation_kwargs=None,
    pool_output: bool = False,
    transformer_kwargs=None,
    transformer_type: type = SpatialTransformer,
    rngs: nnx.Rngs,
  ):
    height, width, channels = in_shape
    self.transformer = transformer_type(
      in_shape,
      transform=transform,
      localisation=localisation,
      localisation_kwargs=localisation_kwargs,
      rngs=rngs,
      **(transformer_kwargs or {}),
    )
    self.pool_output = pool_output
    out_h, out_w = self.transformer.out_size
    if pool_output:
      out_h, out_w = out_h // 2, out_w // 2
    self.classifier = classifier(
      (out_h, out_w, channels),
      num_classes,
      rngs=rngs,
      **(classifier_kwargs or {}),
    )

  def __call__(self, x):
    x = self.transformer(x)
    if self.pool_output:
      x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    return self.classifier(x)


def st_fcn(
  in_shape,
  num_classes,
  *,
  transform="affine",
  hidden=128,
  localisation_hidden=(32, 32, 32),
  pool_output=False,
  rngs,
):
  """ST-FCN: FC localisation net (3 x 32 units) + FCN."""
  return STClassifier(
    in_shape,
    num_classes,
    classifier=FCN,
    classifier_kwargs={"hidden": hidden},
    transform=transform,
    localisation="fc",
    localisation_kwargs={"hidden": localisation_hidden},
    pool_output=pool_output,
    rngs=rngs,
  )


def st_cnn(
  in_shape,
  num_classes,
  *,
  transform="affine",
  channels=(32, 32),
  localisation_channels=(20, 20),
  localisation_hidden=20,
  pool_output=False,
  rngs,
):
  """ST-CNN: conv localisation net + CNN."""
  return ic_st_cnn(
    in_shape,
    num_classes,
    transform=transform,
    channels=channels,
    localisation_channels=localisation_channels,
    localisation_hidden=localisation_hidden,
    pool_output=pool_output,
    recurrences=None,
    rngs=rngs,
  )


def ic_st_cnn(
  in_shape,
  num_classes,
  *,
  transform="affine",
  channels=(32, 32),
  localisation_channels=(20, 20),
  localisation_hidden=20,
  pool_output=False,
  recurrences=4,
  rngs,
):
  """IC-STN + CNN: the ST-CNN with its transformer applied ``recurrences``
  times inverse-compositionally (:class:`ICSpatialTransformer`; affine or
  projective). ``recurrences=None`` is the plain ST-CNN."""
  if recurrences is None:
    transformer_type, transformer_kwargs = SpatialTransformer, None
  else:
    transformer_type = ICSpatialTransformer
    transformer_kwargs = {"recurrences": recurrences}
  return STClassifier(
    in_shape,
    num_classes,
    classifier=CNN,
    classifier_kwargs={"channels": channels},
    transform=transform,
    localisation="conv",
    localisation_kwargs={
      "channels": localisation_channels,
      "hidden": localisation_hidden,
    },
    pool_output=pool_output,
    transformer_kwargs=transformer_kwargs,
    transformer_type=transformer_type,
    rngs=rngs,
  )


class GtsrbCNN(nnx.Module):
  """The GTSRB CNN of Arcos-Garcia et al. (2018), optionally with a spatial
  transformer before each of its 3 convolutions.

  conv 7x7@200 -> pool -> conv 4x4@250 -> pool -> conv 4x4@350 -> pool ->
  FC 400 -> classes, ReLU; ``width`` scales every layer (1.0 = paper).
  Localisation nets: max-pool 2 -> conv 5x5 -> conv 5x5 -> FC -> params.

  ``contrast_norm_input`` applies local contrast normalisation
  (:func:`~stn_jax.models.contrast.local_contrast_norm`, a 7-tap Gaussian
  window) to the input image, before the first transformer;
  ``contrast_norm_blocks`` after each conv block's pooling, as the
  Ciresan-style traffic-sign networks do. Neither adds parameters; both off
  by default (the network as published without them).
  """

  def __init__(
    self,
    in_shape,
    num_classes,
    *,
    num_transformers: int = 3,
    width: float = 1.0,
    transform: str = "affine",
    contrast_norm_input: bool = False,
    contrast_norm_blocks: bool = False,
    rngs: nnx.Rngs,
  ):
    self.contrast_norm_input = bool(contrast_norm_input)
    self.contrast_norm_blocks = bool(contrast_norm_blocks)
    self.contrast_norm = LocalContrastNorm()
    scale = lambda c: max(4, int(round(c * width)))
    channels = [in_shape[2], scale(200), scale(250), scale(350)]
    kernels = [7, 4, 4]
    h, w = in_shape[:2]
    self.transformers = nnx.List()
    self.convs = nnx.List()
    for i in range(3):
      if i < num_transformers:
        self.transformers.append(
          SpatialTransformer(
            (h, w, channels[i]),
            transform=transform,
            localisation="conv",
            localisation_kwargs={
              "channels": (scale(150), scale(200)),
              "hidden": scale(300),
              "downsample": 2,
            },
            rngs=rngs,
          )
        )
      self.convs.append(
        conv(channels[i], channels[i + 1], (kernels[i], kernels[i]), rngs=rngs)
      )
      h, w = h // 2, w // 2
    self.fc = nnx.Linear(h * w * channels[3], scale(400), rngs=rngs)
    self.out = nnx.Linear(scale(400), num_classes, rngs=rngs)

  def transformer_input(self, x):
    """What the first transformer receives when the model is applied to
    ``x``: ``x``, contrast-normalised if ``contrast_norm_input``."""
    return self.contrast_norm(x) if self.contrast_norm_input else x

  def __call__(self, x):
    x = self.transformer_input(x)
    for i, layer in enumerate(self.convs):
      if i < len(self.transformers):
        x = self.transformers[i](x)
      x = _pool(nnx.relu(layer(x)))
      if self.contrast_norm_blocks:
        x = self.contrast_norm(x)
    x = nnx.relu(self.fc(x.reshape(x.shape[0], -1)))
    return self.out(x)


class ResidualBlock(nnx.Module):
  """Two 3x3 convs with GroupNorm and an identity (or 1x1) shortcut."""

  def __init__(self, in_channels, out_channels, stride, *, rngs):
    groups = lambda c: min(8, c)
    self.conv1 = conv(
      in_channels, out_channels, (3, 3), strides=(stride, stride), rngs=rngs
    )
    self.norm1 = nnx.GroupNorm(
      out_channels, num_groups=groups(out_channels), rngs=rngs
    )
    self.conv2 = conv(out_channels, out_channels, (3, 3), rngs=rngs)
    self.norm2 = nnx.GroupNorm(
      out_channels, num_groups=groups(out_channels), rngs=rngs
    )
    self.shortcut = (
      conv(
        in_channels, out_channels, (1, 1), strides=(stride, stride), rngs=rngs
      )
      if stride != 1 or in_channels != out_channels
      else None
    )

  def __call__(self, x):
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
  """A small ResNet for 28-64 px inputs: 3 stages of residual blocks
  (widths ``widths``, strides 1, 2, 2), global average pool, classifier.

  ``transformer_on_input`` / ``transformer_after_stage`` (a stage index)
  insert spatial transformers (ResNet-STN).
  """

  def __init__(
    self,
    in_shape,
    num_classes,
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 2,
    transformer_on_input: bool = False,
    transformer_after_stage: int | None = None,
    transform: str = "affine",
    rngs: nnx.Rngs,
  ):
    h, w, c = in_shape
    self.input_transformer = (
      SpatialTransformer(in_shape, transform=transform, rngs=rngs)
      if transformer_on_input
      else None
    )
    self.stem = conv(c, widths[0], (3, 3), rngs=rngs)
    self.stages = nnx.List()
    stage_transformer = None
    self.transformer_after_stage = transformer_after_stage
    channels = widths[0]
    for s, width in enumerate(widths):
      stride = 1 if s == 0 else 2
      blocks = nnx.List()
      for b in range(blocks_per_stage):
        blocks.append(
          ResidualBlock(channels, width, stride if b == 0 else 1, rngs=rngs)
        )
        channels = width
      self.stages.append(blocks)
      h, w = -(-h // stride), -(-w // stride)
      if transformer_after_stage == s:
        stage_transformer = SpatialTransformer(
          (h, w, channels),
          transform=transform,
          localisation_kwargs={"downsample": 1},
          rngs=rngs,
        )
    self.stage_transformer = stage_transformer
    self.out = nnx.Linear(channels, num_classes, rngs=rngs)

  @property
  def transformer(self):
    return self.input_transformer or self.stage_transformer

  def _stage(self, s, x):
    for block in self.stages[s]:
      x = block(x)
    return x

  def transformer_input(self, x):
    """What the first transformer (:attr:`transformer`) receives when the
    model is applied to ``x``: ``x`` itself if there is an input
    transformer (or none at all), else the features after stage
    ``transformer_after_stage``."""
    if self.input_transformer is not None or self.stage_transformer is None:
      return x
    x = nnx.relu(self.stem(x))
    for s in range(self.transformer_after_stage + 1):
      x = self._stage(s, x)
    return x

  def __call__(self, x):
    if self.input_transformer is not None:
      x = self.input_transformer(x)
    x = nnx.relu(self.stem(x))
    for s in range(len(self.stages)):
      x = self._stage(s, x)
      if s == self.transformer_after_stage:
        x = self.stage_transformer(x)
    return self.out(x.mean(axis=(1, 2)))


def resnet_stn(
  in_shape, num_classes, *, transformer_after_stage=None, **kwargs
):
  """ResNet-STN: the ResNet with a transformer on its input (and
  optionally one after a stage)."""
  return ResNet(
    in_shape,
    num_classes,
    transformer_on_input=True,
    transformer_after_stage=transformer_after_stage,
    **kwargs,
  )
