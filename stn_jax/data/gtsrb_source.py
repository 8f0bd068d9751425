"""Reading GTSRB from either offline layout.

1. The 32x32 copy (``<data_dir>/gtsrb/{train,test}.npz``, verified by
   sha256): images are the whole frame, already resized to 32x32.
2. The official archives, extracted (``<data_dir>/gtsrb/`` or
   ``<data_dir>/GTSRB/``): ``Final_Training/Images/NNNNN/*.ppm`` with
   ``GT-NNNNN.csv`` in each class folder, and ``Final_Test/Images/*.ppm``
   with ``GT-final_test.csv`` (from GTSRB_Final_Test_GT.zip) in that folder
   or next to ``Final_Test``. Images are read at their original size and
   resized (whole frame, bilinear) to the requested size.

Both give the same fields: images uint8 (N, S, S, 3), labels (N,), the sign's
box ``roi`` [x1, y1, x2, y2] and ``size`` (width, height) in original
pixels, and ``track`` (the physical sign a training image belongs to, unique
across classes as ``class * 1000 + track``; -1 for test images).
"""

from __future__ import annotations

import csv
import hashlib
import pathlib

import numpy as np
from PIL import Image

from stn_jax.data.sources import SourceError, resolve_data_dir

NPZ_SHA256 = {
  "train.npz": "fd703f5856e18db99103f507fd6cc3c99bc20e2cc1b2f295797069f7532a0381",
  "test.npz": "e2bc788cba6f9901c1950ebe3f3bf087b2002344649ccce0f85d6722e0e8e860",
}
NUM_CLASSES = 43
OFFICIAL_SIZES = {"train": 39209, "test": 12630}
HOW_TO_GET_GTSRB = (
  "Either put the 32x32 copy (train.npz, test.npz) in <data_dir>/gtsrb/, or "
  "extract the official GTSRB_Final_Training_Images.zip, "
  "GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip into "
  "<data_dir>/gtsrb/ (giving Final_Training/Images/... and "
  "Final_Test/Images/...); point the data directory at it with the "
  "data_dir config value or $STN_DATA_DIR."
)


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def find_layout(data_dir=None) -> tuple[str, pathlib.Path]:
  """``('npz' | 'official', folder)`` of the GTSRB sources found."""
  root = resolve_data_dir(data_dir)
  looked = []
  for folder in (root / "gtsrb", root / "GTSRB", root):
    looked.append(str(folder))
    if (folder / "train.npz").is_file():
      return "npz", folder
    if (folder / "Final_Training" / "Images").is_dir():
      return "official", folder
  raise SourceError(
    f"No GTSRB sources: looked for train.npz or "
    f"Final_Training/Images in {', '.join(looked)}. "
    f"{HOW_TO_GET_GTSRB}"
  )


def _load_npz(folder: pathlib.Path, split: str, image_size: int, checksums):
  path = folder / f"{split}.npz"
  if not path.is_file():
    raise SourceError(
      f"Missing GTSRB file {path.name}: looked in {folder}. {HOW_TO_GET_GTSRB}"
    )
  if checksums is not None:
    digest = _sha256(path)
    if digest != checksums[path.name]:
      raise SourceError(
        f"Checksum mismatch for {path}: sha256 is {digest}, "
        f"expected {checksums[path.name]}. {HOW_TO_GET_GTSRB}"
      )
  with np.load(path) as data:
    images = data["images"]
    labels = data["labels"].astype(np.int64)
    roi = data["roi_orig"].astype(np.int32)
    size = data["size_orig"].astype(np.int32)
    if split == "train":
      track = labels.astype(np.int32) * 1000 + data["track"].astype(np.int32)
    else:
      track = np.full(len(labels), -1, np.int32)
  if images.shape[1:3] != (image_size, image_size):
    images = np.stack([_resize(image, image_size) for image in images])
  return dict(images=images, labels=labels, roi=roi, size=size, track=track)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(
    Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
  )


def _read_csv(path: pathlib.Path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f, delimiter=";"))


def _official_rows(folder: pathlib.Path, split: str):
  """(image path, csv row, track) for every image of the split."""
  if split == "train":
    images_dir = folder / "Final_Training" / "Images"
    class_dirs = sorted(p for p in images_dir.iterdir() if p.is_dir())
    if not class_dirs:
      raise SourceError(f"No class folders in {images_dir}. {HOW_TO_GET_GTSRB}")
    for class_dir in class_dirs:
      annotations = class_dir / f"GT-{class_dir.name}.csv"
      if not annotations.is_file():
        raise SourceError(
          f"Missing GTSRB file {annotations.name}: looked in "
          f"{class_dir}. {HOW_TO_GET_GTSRB}"
        )
      for row in _read_csv(annotations):
        label = int(row["ClassId"])
        track = label * 1000 + int(row["Filename"].split("_")[0])
        yield class_dir / row["Filename"], row, track
  else:
    images_dir = folder / "Final_Test" / "Images"
    candidates = [
      images_dir / "GT-final_test.csv",
      folder / "Final_Test" / "GT-final_test.csv",
      folder / "GT-final_test.csv",
    ]
    annotations = next((c for c in candidates if c.is_file()), None)
    if annotations is None:
      raise SourceError(
        "Missing GTSRB file GT-final_test.csv (the test labels "
        "from GTSRB_Final_Test_GT.zip): looked in "
        f"{', '.join(str(c.parent) for c in candidates)}. "
        f"{HOW_TO_GET_GTSRB}"
      )
    for row in _read_csv(annotations):
      if "ClassId" not in row:
        raise SourceError(
          f"{annotations} has no ClassId column: use "
          "GT-final_test.csv from GTSRB_Final_Test_GT.zip."
        )
      yield images_dir / row["Filename"], row, -1


def _load_official(folder: pathlib.Path, split: str, image_size: int):
  images, labels, roi, size, track = [], [], [], [], []
  for path, row, track_id in _official_rows(folder, split):
    if not path.is_file():
      raise SourceError(
        f"Missing GTSRB image {path.name}: looked in "
        f"{path.parent}. {HOW_TO_GET_GTSRB}"
      )
    with Image.open(path) as image:
      images.append(
        np.asarray(
          image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        )
      )
    labels.append(int(row["ClassId"]))
    roi.append([int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")])
    size.append([int(row["Width"]), int(row["Height"])])
    track.append(track_id)
  return dict(
    images=np.stack(images).astype(np.uint8),
    labels=np.array(labels, np.int64),
    roi=np.array(roi, np.int32),
    size=np.array(size, np.int32),
    track=np.array(track, np.int32),
  )


def load_gtsrb(
  split: str, *, image_size: int = 32, data_dir=None, checksums=NPZ_SHA256
) -> dict[str, np.ndarray]:
  """Reads one official GTSRB split ('train' or 'test') from either layout.

  Returns:
    dict with ``images`` uint8 (N, image_size, image_size, 3), ``labels``
    int64, ``roi`` int32 (N, 4), ``size`` int32 (N, 2), ``track`` int32.
  """
  if split not in OFFICIAL_SIZES:
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
  if not isinstance(image_size, int) or image_size < 8:
    raise ValueError(f"image_size must be an int >= 8; got {image_size!r}.")
  layout, folder = find_layout(data_dir)
  if layout == "npz":
    return _load_npz(folder, split, image_size, checksums)
  return _load_official(folder, split, image_size)


def validation_tracks(
  track: np.ndarray, labels: np.ndarray, *, fraction: float = 0.1, seed: int = 0
) -> np.ndarray:
  """Boolean mask of training images whose whole track is held out.

  In each class, ``ceil(fraction * tracks)`` tracks (at least one) are
  chosen with ``seed``: the 30 frames of a track are near-duplicates, so a
  validation split by image would leak.
  """
  rng = np.random.default_rng(seed)
  held_out = []
  for label in np.unique(labels):
    tracks = np.unique(track[labels == label])
    count = max(1, int(np.ceil(fraction * len(tracks))))
    held_out.extend(
      rng.choice(tracks, size=min(count, len(tracks)), replace=False)
    )
  return np.isin(track, held_out)
