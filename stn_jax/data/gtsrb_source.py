"""Reading GTSRB from either offline layout.

They are looked for in the data directory, then in the download cache
(:func:`stn_jax.data.sources.search_dirs`). When neither has them, the three
official archives are downloaded into the cache, verified by their
published md5 (no sha256 of them is published), and extracted there in
layout 2.

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
import os
import pathlib
import shutil
import zipfile

import numpy as np
from absl import logging
from PIL import Image

from stn_jax.data import download
from stn_jax.data.sources import SourceError, fetch_or_explain, search_dirs

NPZ_SHA256 = {
  "train.npz": "fd703f5856e18db99103f507fd6cc3c99bc20e2cc1b2f295797069f7532a0381",
  "test.npz": "e2bc788cba6f9901c1950ebe3f3bf087b2002344649ccce0f85d6722e0e8e860",
}
NUM_CLASSES = 43
OFFICIAL_SIZES = {"train": 39209, "test": 12630}
# md5 of the official archives, as published with download code: the two
# test archives in torchvision (torchvision/datasets/gtsrb.py), all three in
# a public dataset-preparation script (`DATASET_FILE_SUM_DICT`, found by
# code search; it agrees with torchvision on the test archives). No sha256
# of these archives is published anywhere we could find, so they are
# verified by md5 (an integrity check against corruption, not a defence
# against a malicious mirror).
ARCHIVE_MD5 = {
  "GTSRB_Final_Training_Images.zip": "f33fd80ac59bff73c82d25ab499e03a3",
  "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
  "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
# What each archive gives, relative to the gtsrb/ folder (after dropping the
# archives' leading GTSRB/).
_ARCHIVE_CONTENT = {
  "GTSRB_Final_Training_Images.zip": "Final_Training",
  "GTSRB_Final_Test_Images.zip": "Final_Test",
  "GTSRB_Final_Test_GT.zip": "GT-final_test.csv",
}
HOW_TO_GET_GTSRB = (
  "Provide GTSRB in one of three ways: (1) download: let stn_jax fetch the "
  "official GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip "
  "and GTSRB_Final_Test_GT.zip (network access to "
  f"{download.DEFAULT_BASE_URLS['gtsrb']}; they are extracted into the "
  f"download cache, ${download.CACHE_ENV} or ~/.cache/stn_jax/data); (2) "
  f"mirror: set ${download.MIRROR_ENV} (or the data_mirror config value, "
  "--data_mirror) to a URL whose gtsrb/ folder holds those three archives; "
  "(3) data directory: put the 32x32 copy (train.npz, test.npz) in "
  "<data_dir>/gtsrb/, or extract the three archives into <data_dir>/gtsrb/ "
  "(giving Final_Training/Images/... and Final_Test/Images/...), and point "
  "the source_dir config value (--source_dir) or $STN_DATA_DIR at "
  "<data_dir>."
)


def _digest(path: pathlib.Path, algorithm: str = "sha256") -> str:
  digest = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _sha256(path: pathlib.Path) -> str:
  return _digest(path, "sha256")


def _verify_archive(name: str, archive_md5, origin: str):
  def verify(path: pathlib.Path) -> None:
    if archive_md5 is not None:
      digest = _digest(path, "md5")
      if digest != archive_md5[name]:
        raise SourceError(
          f"Checksum mismatch for {name} downloaded from {origin}: md5 is "
          f"{digest}, expected {archive_md5[name]}; nothing was written "
          "to the cache."
        )
    if not zipfile.is_zipfile(path):
      raise SourceError(
        f"{name} downloaded from {origin} is not a zip archive; nothing "
        "was written to the cache."
      )

  return verify


def _extract(archive: pathlib.Path, folder: pathlib.Path, content: str):
  """Extracts ``archive`` (dropping a leading ``GTSRB/``) into a staging
  folder, then renames its ``content`` into ``folder``: ``content`` appears
  whole or not at all."""
  staging = folder / f".extract-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  try:
    with zipfile.ZipFile(archive) as zf:
      for info in zf.infolist():
        parts = pathlib.PurePosixPath(info.filename).parts
        if parts[:1] == ("GTSRB",):
          parts = parts[1:]
        if info.is_dir() or not parts:
          continue
        if info.filename.startswith("/") or ".." in parts:
          raise SourceError(
            f"{archive} holds an unsafe path {info.filename!r}."
          )
        target = staging.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
    if not (staging / content).exists():
      raise SourceError(
        f"{archive} has no {content} (nor GTSRB/{content}): not the "
        "official archive?"
      )
    os.replace(staging / content, folder / content)
  except zipfile.BadZipFile as error:
    raise SourceError(f"Cannot extract {archive}: {error}.") from error
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def ensure_archives(
  folder: pathlib.Path, *, mirror=None, archive_md5=ARCHIVE_MD5, missing=""
) -> pathlib.Path:
  """Downloads (verified by md5) and extracts each official archive whose
  content is not yet in ``folder`` (the cache's ``gtsrb/``); an archive is
  deleted once extracted. Returns ``folder``."""
  folder.mkdir(parents=True, exist_ok=True)
  with download.file_lock(folder / ".extract.lock"):
    for name, content in _ARCHIVE_CONTENT.items():
      if content == "GT-final_test.csv":
        present = any(p.is_file() for p in _test_labels_candidates(folder))
      else:
        present = (folder / content / "Images").is_dir()
      if present:
        continue
      url = download.source_url("gtsrb", name, mirror=mirror)
      archive = fetch_or_explain(
        "gtsrb",
        name,
        folder / name,
        missing=missing or f"Missing GTSRB {content} in {folder}",
        how_to=HOW_TO_GET_GTSRB,
        mirror=mirror,
        verify=_verify_archive(name, archive_md5, url),
      )
      _extract(archive, folder, content)
      archive.unlink()
  return folder


def find_layout(
  data_dir=None,
  *,
  prefer_official: bool = False,
  mirror: str | None = None,
  archive_md5=ARCHIVE_MD5,
) -> tuple[str, pathlib.Path]:
  """``('npz' | 'official', folder)`` of the GTSRB sources found.

  Args:
    data_dir: the data directory; the download cache is searched after it.
    prefer_official: take the official layout wherever it is found before
      the 32x32 copy (for sizes above 32, which the copy can only upsample).
    mirror: base URL for downloads (else ``$STN_DATA_MIRROR`` or the
      official archive).
    archive_md5: expected md5 of each archive, by name (None: not checked;
      tests of synthetic archives).

  When no directory has either layout, the official archives are
  downloaded and extracted into the cache (:func:`ensure_archives`).
  """
  looked, found = [], []
  for root in search_dirs(data_dir):
    for folder in (root / "gtsrb", root / "GTSRB", root):
      looked.append(str(folder))
      if (folder / "train.npz").is_file():
        found.append(("npz", folder))
      if (folder / "Final_Training" / "Images").is_dir():
        found.append(("official", folder))
  cache = download.cache_dir() / "gtsrb"
  if found:
    official = [f for f in found if f[0] == "official"]
    layout, folder = official[0] if prefer_official and official else found[0]
    if layout == "official" and folder == cache:  # complete a partial cache
      ensure_archives(folder, mirror=mirror, archive_md5=archive_md5)
    return layout, folder
  missing = (
    "No GTSRB sources: looked for train.npz or Final_Training/Images in "
    f"{', '.join(looked)}"
  )
  ensure_archives(
    cache, mirror=mirror, archive_md5=archive_md5, missing=missing
  )
  return "official", cache


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


def _test_labels_candidates(folder: pathlib.Path) -> list[pathlib.Path]:
  """Where GT-final_test.csv (from GTSRB_Final_Test_GT.zip) may be."""
  return [
    folder / "Final_Test" / "Images" / "GT-final_test.csv",
    folder / "Final_Test" / "GT-final_test.csv",
    folder / "GT-final_test.csv",
  ]


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
    candidates = _test_labels_candidates(folder)
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


MIN_SIZE, MAX_SIZE = 8, 256


def check_image_size(image_size) -> int:
  """``image_size`` if it is an int in [MIN_SIZE, MAX_SIZE], else a
  ValueError naming the valid range."""
  if (
    not isinstance(image_size, int)
    or isinstance(image_size, bool)
    or not MIN_SIZE <= image_size <= MAX_SIZE
  ):
    raise ValueError(
      f"GTSRB image size must be an int in [{MIN_SIZE}, {MAX_SIZE}] (the "
      f"original images are 15 to 250 px); got {image_size!r}."
    )
  return image_size


def load_gtsrb(
  split: str,
  *,
  image_size: int = 32,
  data_dir=None,
  checksums=NPZ_SHA256,
  mirror: str | None = None,
  archive_md5=ARCHIVE_MD5,
) -> dict[str, np.ndarray]:
  """Reads one official GTSRB split ('train' or 'test') from either layout.

  Sizes above 32 prefer the official layout wherever it is found (see
  :func:`find_layout`); from the 32x32 copy they are upsampled (a warning
  says so). ``mirror`` and ``archive_md5`` are for downloads.

  Returns:
    dict with ``images`` uint8 (N, image_size, image_size, 3), ``labels``
    int64, ``roi`` int32 (N, 4), ``size`` int32 (N, 2), ``track`` int32.
  """
  if split not in OFFICIAL_SIZES:
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
  check_image_size(image_size)
  layout, folder = find_layout(
    data_dir,
    prefer_official=image_size > 32,
    mirror=mirror,
    archive_md5=archive_md5,
  )
  if layout == "npz":
    if image_size > 32:
      logging.warning(
        "GTSRB %dx%d from the 32x32 copy in %s is upsampled: results on it "
        "are 32x32-resolution results (use the official archives).",
        image_size,
        image_size,
        folder,
      )
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
