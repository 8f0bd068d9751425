"""A labelled grid of examples as a PNG, to look at a dataset."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def grid_image(
  images, labels, *, columns: int = 8, scale: int = 3, title: str | None = None
) -> Image.Image:
  """Tiles images with their labels.

  Args:
    images: uint8 ``(N, H, W)`` or ``(N, H, W, C)`` with C in {1, 3}.
    labels: ``(N,)`` ints or strings drawn under each tile.
    columns: tiles per row.
    scale: nearest-neighbour upscaling of each tile.
    title: optional first line.

  Returns:
    A PIL image.
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  n, h, w = images.shape[:3]
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
  for i in range(n):
    r, c = divmod(i, columns)
    x = pad + c * (tile_w + pad)
    y = top + pad + r * (tile_h + label_h + pad)
    tile = Image.fromarray(images[i]).resize((tile_w, tile_h), Image.NEAREST)
    canvas.paste(tile.convert("RGB"), (x, y))
    draw.text((x, y + tile_h), str(labels[i]), fill="black")
  return canvas
