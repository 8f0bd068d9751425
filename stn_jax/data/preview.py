"""A labelled grid of examples as a PNG, to look at a dataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def _gray_or_rgb(image: np.ndarray) -> np.ndarray:
  """``image (H, W)`` or ``(H, W, C)``, C in {1, 3}, as (H, W) or (H, W, 3)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
    raise ValueError(
      "images: expected tiles of shape (H, W) or (H, W, C) with C in {1, 3}, "
      f"got a tile of shape {image.shape}"
    )
  return image


def grid_image(
  images, labels, *, columns: int = 8, scale: int = 3, title: str | None = None
) -> Image.Image:
  """Tiles images with their labels.

  Args:
    images: uint8 ``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3}, or a
      sequence of N such tiles of differing sizes (a transformer's output
      beside its input, say): every tile is drawn at the largest height and
      width among them, times ``scale``, by nearest-neighbour resizing.
    labels: ``(N,)`` ints or strings drawn under each tile.
    columns: tiles per row.
    scale: nearest-neighbour upscaling of the largest tile.
    title: optional first line.

  Returns:
    A PIL image.

  Raises:
    ValueError: a tile that is not (H, W) or (H, W, 1 or 3), or ``labels``
      not one per tile.
  """
  tiles = [_gray_or_rgb(image) for image in images]
  n = len(tiles)
  if len(labels) != n:
    raise ValueError(f"labels: expected one per image ({n}), got {len(labels)}")
  h = max((tile.shape[0] for tile in tiles), default=0)
  w = max((tile.shape[1] for tile in tiles), default=0)
  rows = -(-n // columns)
  tile_w, tile_h = w * scale, h * scale
  label_h, pad = 12, 4
  top = 16 if title else 0
  canvas = Image.new(
    "RGB",
    (
      columns * (tile_w + pad) + pad,
      top + rows * (tile_h + label_h + pad) + pad,
    ),
    "white",
  )
  draw = ImageDraw.Draw(canvas)
  if title:
    draw.text((pad, 2), title, fill="black")
  for i, array in enumerate(tiles):
    r, c = divmod(i, columns)
    x = pad + c * (tile_w + pad)
    y = top + pad + r * (tile_h + label_h + pad)
    tile = Image.fromarray(array).resize((tile_w, tile_h), Image.NEAREST)
    canvas.paste(tile.convert("RGB"), (x, y))
    draw.text((x, y + tile_h), str(labels[i]), fill="black")
  return canvas


def pairs_image(
  inputs: Sequence[np.ndarray],
  outputs: Sequence[np.ndarray],
  labels: Sequence[int],
  *,
  title: str,
  columns: int = 8,
) -> Image.Image:
  """Each input beside its transformer output (``in <label>``, ``ST out``).

  Args:
    inputs: uint8 ``(N, H, W, C)`` images.
    outputs: uint8 ``(N, H_out, W_out, C)`` transformer outputs; their size
      may differ from the inputs' (a transformer after a ResNet stage
      samples at the feature map's size), and each is drawn at the inputs'
      tile size.
    labels: ``(N,)`` class labels of the inputs.
    title: the first line.
    columns: tiles per row (two per pair).

  Raises:
    ValueError: ``outputs`` or ``labels`` not one per input.
  """
  if not len(inputs) == len(outputs) == len(labels):
    raise ValueError(
      "outputs, labels: expected one per input "
      f"({len(inputs)}), got {len(outputs)} outputs and {len(labels)} labels"
    )
  tiles, captions = [], []
  for image, out, label in zip(inputs, outputs, labels):
    tiles += [image, out]
    captions += [f"in {int(label)}", "ST out"]
  return grid_image(tiles, captions, columns=columns, title=title)
