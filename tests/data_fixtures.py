"""Tiny synthetic sources in the real layouts, for builder tests."""

import csv
import gzip
import hashlib

import numpy as np
from PIL import Image


def write_idx(path, array, compress=True):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
    int(d).to_bytes(4, "big") for d in array.shape
  )
  data = header + np.asarray(array, np.uint8).tobytes()
  if compress:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return hashlib.sha256(data).hexdigest()


def digit_like(rng, n):
  """Blobby 28x28 'digits': a bright random stroke in the centre."""
  images = np.zeros((n, 28, 28), np.uint8)
  for image in images:
    y, x = rng.integers(8, 20, size=2)
    image[y - 4 : y + 4, x - 1 : x + 2] = 255
    image[y - 1 : y + 1, x - 4 : x + 4] = rng.integers(100, 255)
  return images


def make_mnist(root, sizes=(("train", 24), ("t10k", 12)), seed=0):
  """Writes tiny MNIST IDX files; returns (checksums, {prefix: (x, y)})."""
  rng = np.random.default_rng(seed)
  (root / "mnist").mkdir(parents=True, exist_ok=True)
  checksums, arrays = {}, {}
  for prefix, n in sizes:
    images, labels = digit_like(rng, n), rng.integers(0, 10, size=n)
    arrays[prefix] = (images, labels)
    for kind, array in (
      ("images-idx3-ubyte", images),
      ("labels-idx1-ubyte", labels),
    ):
      name = f"{prefix}-{kind}"
      checksums[name] = write_idx(root / "mnist" / name, array)
  return checksums, arrays


def make_gtsrb_npz(root, n_train=60, n_test=10, seed=0):
  """The 32x32 offline layout: train.npz / test.npz."""
  rng = np.random.default_rng(seed)
  folder = root / "gtsrb"
  folder.mkdir(parents=True, exist_ok=True)
  labels = np.repeat(np.arange(3), n_train // 3)
  # 10 frames per track, tracks numbered within each class
  track = ((np.arange(n_train) % (n_train // 3)) // 10).astype(np.int32)
  for split, n, extra in (
    ("train", n_train, {"track": track}),
    ("test", n_test, {}),
  ):
    np.savez(
      folder / f"{split}.npz",
      images=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
      labels=(labels if split == "train" else rng.integers(0, 3, n)).astype(
        np.int64
      ),
      roi_orig=np.tile(np.array([[2, 3, 20, 21]], np.int16), (n, 1)),
      size_orig=np.tile(np.array([[30, 31]], np.int16), (n, 1)),
      filenames=np.array([f"{i:05d}.ppm" for i in range(n)]),
      **extra,
    )
  return folder


def make_gtsrb_official(root, seed=0):
  """The official archive layout: PPMs of varying size with GT CSVs.

  2 classes x 2 tracks x 3 frames for training, 4 test images.
  """
  rng = np.random.default_rng(seed)
  header = [
    "Filename",
    "Width",
    "Height",
    "Roi.X1",
    "Roi.Y1",
    "Roi.X2",
    "Roi.Y2",
    "ClassId",
  ]
  train = root / "gtsrb" / "Final_Training" / "Images"
  for label in range(2):
    class_dir = train / f"{label:05d}"
    class_dir.mkdir(parents=True)
    rows = []
    for track in range(2):
      for frame in range(3):
        w, h = rng.integers(15, 60, size=2)
        name = f"{track:05d}_{frame:05d}.ppm"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
          class_dir / name
        )
        rows.append([name, w, h, 1, 2, w - 2, h - 3, label])
    with open(class_dir / f"GT-{label:05d}.csv", "w", newline="") as f:
      writer = csv.writer(f, delimiter=";", lineterminator="\r\n")
      writer.writerow(header)
      writer.writerows(rows)
  test = root / "gtsrb" / "Final_Test" / "Images"
  test.mkdir(parents=True)
  rows = []
  for i in range(4):
    w, h = rng.integers(15, 60, size=2)
    name = f"{i:05d}.ppm"
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
      test / name
    )
    rows.append([name, w, h, 1, 1, w - 1, h - 1, i % 2])
  with open(test / "GT-final_test.csv", "w", newline="") as f:
    writer = csv.writer(f, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
  return root / "gtsrb"
