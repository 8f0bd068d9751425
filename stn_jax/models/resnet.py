"""A pre-activation ResNet for small images, with spatial transformers where
the config puts them (ResNet-STN).

``PreActResNet`` (models ``preact_resnet`` and ``preact_resnet_stn``) is
the modern backbone: pre-activation residual blocks (GroupNorm -> ReLU ->
conv, He et al. 2016), a 3x3 stem, stages of widths ``widths`` with strides
1, 2, 2, ..., a final norm, global average pooling and a linear classifier.
GroupNorm, not batch norm: its statistics are per example, so training and
evaluation compute the same function and a transformer's output (whose
statistics move as it learns) does not disturb running averages.

Where the transformers go (``placement``, a tuple in network order):

- ``'input'``: on the image, before the stem (the paper's ST-CNN pattern);
- ``'stage<k>'``: on the feature map after stage k (1-based; e.g.
  ``'stage1'``), its localisation net reading that map;
- several: the GTSRB CNN's pattern (e.g. ``('input', 'stage1', 'stage2')``).

``shared_stem=True`` lets the input transformer's localisation net read the
stem's features instead of the image: the stem runs on the image, the
localisation regresses the transformation from its output, and the image
itself is warped and passed to the stem again, so the localisation starts
from the backbone's learned features (whether that helps, and what it
costs, is what the placement study measures).

The older ``ResNet`` of :mod:`stn_jax.models.classifiers` (post-activation
blocks, no final norm) stays as models ``resnet`` and ``resnet_stn`` for
the workdirs that used it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flax import nnx

from stn_jax.models.convolution import conv
from stn_jax.models.layers import SpatialTransformer

_STAGE = re.compile(r"stage([1-9][0-9]*)")


def _groups(channels: int) -> int:
  """GroupNorm groups: 8, or fewer for narrow layers (each divides)."""
  for groups in (8, 4, 2, 1):
    if channels % groups == 0:
      return groups
  return 1


def _norm(channels: int, rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=_groups(channels), rngs=rngs)


class PreActBlock(nnx.Module):
  """``x + conv(relu(norm(conv(relu(norm(x))))))``, the shortcut a strided
  1x1 conv of ``relu(norm(x))`` when the shape changes."""

  def __init__(self, in_channels, out_channels, stride, *, rngs):
    self.norm1 = _norm(in_channels, rngs)
    self.conv1 = conv(
      in_channels, out_channels, (3, 3), strides=(stride, stride), rngs=rngs
    )
    self.norm2 = _norm(out_channels, rngs)
    self.conv2 = conv(out_channels, out_channels, (3, 3), rngs=rngs)
    self.shortcut = (
      conv(
        in_channels, out_channels, (1, 1), strides=(stride, stride), rngs=rngs
      )
      if stride != 1 or in_channels != out_channels
      else None
    )

  def __call__(self, x):
    y = nnx.relu(self.norm1(x))
    shortcut = x if self.shortcut is None else self.shortcut(y)
    y = self.conv1(y)
    y = self.conv2(nnx.relu(self.norm2(y)))
    return y + shortcut


def check_placement(placement: Sequence[str], num_stages: int) -> tuple:
  """``placement`` as a tuple in network order; ValueError naming what is
  wrong (an unknown place, a stage beyond ``num_stages``, a repeat, or
  places out of order)."""
  if isinstance(placement, str):
    placement = (placement,)
  placement = tuple(placement)
  order = []
  for place in placement:
    match = _STAGE.fullmatch(place)
    if place == "input":
      order.append(0)
    elif match and 1 <= int(match.group(1)) <= num_stages:
      order.append(int(match.group(1)))
    else:
      raise ValueError(
        "placement must hold 'input' and/or 'stage1' ... "
        f"'stage{num_stages}'; got {place!r} in {placement!r}."
      )
  if order != sorted(set(order)):
    raise ValueError(
      "placement must list each place once, in network order (input, "
      f"stage1, stage2, ...); got {placement!r}."
    )
  return placement


class PreActResNet(nnx.Module):
  """Pre-activation ResNet (see the module docstring).

  Args:
    in_shape: ``(H, W, C)``.
    num_classes: K.
    widths: channels of each stage (strides 1, 2, 2, ...).
    blocks_per_stage: residual blocks in each stage.
    placement: where spatial transformers go (``()``: none).
    transform: their family (``'affine'``, ``'projective'``, ...).
    shared_stem: the input transformer's localisation reads the stem.
    localisation_channels, localisation_hidden: of each transformer's
      convolutional localisation net.
    rngs: ``nnx.Rngs``.

  Maps float images ``(N, H, W, C)`` to logits ``(N, K)``. Its transformers
  are ``model.transformers`` in network order; the first one's input is
  ``model.transformer_input(x)``.
  """

  def __init__(
    self,
    in_shape,
    num_classes,
    *,
    widths: Sequence[int] = (32, 64, 128),
    blocks_per_stage: int = 2,
    placement: Sequence[str] = (),
    transform: str = "affine",
    shared_stem: bool = False,
    localisation_channels: Sequence[int] = (20, 20),
    localisation_hidden: int = 32,
    rngs: nnx.Rngs,
  ):
    h, w, c = in_shape
    self.placement = check_placement(placement, len(widths))
    if shared_stem and "input" not in self.placement:
      raise ValueError(
        "shared_stem needs a transformer on the input (placement "
        f"'input'); got placement {self.placement!r}."
      )
    self.shared_stem = shared_stem
    transformers = []

    def transformer(shape, channels, downsample):
      return SpatialTransformer(
        shape,
        transform=transform,
        localisation_kwargs={
          "channels": tuple(channels),
          "hidden": localisation_hidden,
          "downsample": downsample,
        },
        rngs=rngs,
      )

    if "input" in self.placement:
      # With shared_stem the localisation reads the stem's features (and
      # the image is warped): its input has the stem's channels.
      shape = (h, w, widths[0]) if shared_stem else tuple(in_shape)
      transformers.append(
        transformer(shape, localisation_channels, downsample=2)
      )
    self.stem = conv(c, widths[0], (3, 3), rngs=rngs)
    self.stages = nnx.List()
    channels = widths[0]
    for s, width in enumerate(widths):
      stride = 1 if s == 0 else 2
      blocks = nnx.List()
      for b in range(blocks_per_stage):
        blocks.append(
          PreActBlock(channels, width, stride if b == 0 else 1, rngs=rngs)
        )
        channels = width
      self.stages.append(blocks)
      h, w = -(-h // stride), -(-w // stride)
      if f"stage{s + 1}" in self.placement:
        transformers.append(
          transformer(
            (h, w, channels),
            localisation_channels,
            downsample=1 if min(h, w) < 16 else 2,
          )
        )
    self.transformers = nnx.List(transformers)
    self.final_norm = _norm(channels, rngs)
    self.out = nnx.Linear(channels, num_classes, rngs=rngs)

  def _stage(self, s, x):
    for block in self.stages[s]:
      x = block(x)
    return x

  def _input_transform(self, x):
    """The input transformer's warp of ``x`` (shared stem: its grid from
    the stem's features, applied to ``x``)."""
    first = self.transformers[0]
    if not self.shared_stem:
      return first(x)
    return first.sample(x, first.grid(self.stem(x)))

  def transformer_input(self, x):
    """What the first transformer's localisation receives for input ``x``:
    the image; the stem's features with ``shared_stem``; the features
    after the stage it follows when there is no input transformer."""
    if not self.transformers:
      return x
    first = self.placement[0]
    if first == "input":
      return self.stem(x) if self.shared_stem else x
    x = self.stem(x)
    for s in range(int(_STAGE.fullmatch(first).group(1))):
      x = self._stage(s, x)
    return x

  def __call__(self, x):
    index = 0
    if self.placement[:1] == ("input",):
      x = self._input_transform(x)
      index = 1
    x = self.stem(x)
    for s in range(len(self.stages)):
      x = self._stage(s, x)
      if f"stage{s + 1}" in self.placement:
        x = self.transformers[index](x)
        index += 1
    x = nnx.relu(self.final_norm(x))
    return self.out(x.mean(axis=(1, 2)))


def preact_resnet_stn(in_shape, num_classes, *, placement=("input",), **kwargs):
  """ResNet-STN: :class:`PreActResNet` with transformers at ``placement``
  (default one on the input)."""
  if not placement:
    raise ValueError(
      "placement must name at least one place for preact_resnet_stn "
      "(use model preact_resnet for none); got ()."
    )
  return PreActResNet(in_shape, num_classes, placement=placement, **kwargs)
