"""Making and checking a pretrained model: :func:`package` a finished run
into the registry of :mod:`stn_jax.model_zoo`, and :func:`verify` an
installed one against the run it came from.

``python -m stn_jax.model_zoo package ...`` and ``... verify NAME`` call
these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from stn_jax import provenance
from stn_jax.model_zoo import (
  CHECK,
  DTYPES,
  MAX_SHIPPED_BYTES,
  MODELS_DIR,
  WEIGHTS,
  Card,
  cards,
  load,
  probe_images,
  read_check,
  save_weights,
  sha256_of,
)


def load_test_split(config, **where) -> tuple[np.ndarray, np.ndarray]:
  """``(uint8 images, labels)`` of a run's whole test split
  (``config.dataset``); ``where`` overrides ``tfds_dir``, ``source_dir``,
  ``data_mirror``."""
  from stn_jax.data import datasets

  kwargs = dict(
    tfds_dir=config.get("tfds_dir", "") or None,
    source_dir=config.get("source_dir", "") or None,
    data_mirror=config.get("data_mirror", "") or None,
  )
  kwargs.update({k: v for k, v in where.items() if v})
  arrays = datasets.load_arrays(config.dataset, "test", **kwargs)
  return np.asarray(arrays["image"]), np.asarray(arrays["label"])


def package(
  workdir: str,
  name: str,
  *,
  command: str,
  description: str = "",
  out: os.PathLike | None = None,
  dtype: str = "float32",
  url: str = "",
  num_samples: int = 16,
  **where,
) -> Card:
  """Packages the run ``workdir`` as the pretrained model ``name``.

  Writes ``weights.npz``, ``card.json`` and ``check.npz`` into
  ``<out>/<name>/`` (``out`` defaults to ``stn_jax/pretrained_models``),
  after measuring the test error of the packaged weights (converted to
  ``dtype``) on the whole test split. ``check.npz`` (:func:`write_check`)
  holds the logits that ``restore(workdir).predict`` gives on seeded noise
  probes and on the first ``num_samples`` test images, with their indices
  and labels, but no image.

  Raises:
    ValueError: a bad name or dtype, weights over 5 MB without ``url``.
  """
  from flax import nnx

  from stn_jax.inference import restore

  if not name or not all(c.isalnum() or c == "_" for c in name):
    raise ValueError(
      f"name must be letters, digits and underscores; got {name!r}."
    )
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}.")
  if not command:
    raise ValueError("command must be the command that trained the run.")
  folder = pathlib.Path(out or MODELS_DIR) / name
  folder.mkdir(parents=True, exist_ok=True)
  restored = restore(workdir)
  _, state = nnx.split(restored.model)
  weights = folder / WEIGHTS
  save_weights(state, weights, dtype=dtype)
  size = weights.stat().st_size
  if size > MAX_SHIPPED_BYTES and not url:
    raise ValueError(
      f"the weights of {name!r} are {size} bytes, over the "
      f"{MAX_SHIPPED_BYTES} shipped in the package: give the url of the "
      "release download (--url) and --out outside the package."
    )
  config = json.loads(restored.config.to_json_best_effort())
  card = Card(
    name=name,
    description=description,
    dataset=restored.config.dataset,
    model=restored.config.model,
    test_error=0.0,
    test_examples=0,
    step=restored.step,
    command=command,
    commit=provenance.commit_description(
      cwd=str(pathlib.Path(__file__).parent)
    ),
    machine=provenance.machine_description(),
    weights=WEIGHTS,
    sha256=sha256_of(weights),
    size=size,
    dtype=dtype,
    url=url,
    config=config,
    in_shape=restored.in_shape,
  )
  card.write(folder)
  # Measure what a user gets: the packaged file, loaded as users load it.
  loaded = load(name, models_dir=folder.parent)
  images, labels = load_test_split(restored.config, **where)
  logits = loaded.predict(images)
  error = float(np.mean(np.argmax(logits, -1) != labels))
  card = dataclasses.replace(card, test_error=error, test_examples=len(labels))
  card.write(folder)
  # The check's logits come from the run's own checkpoint (restore), so a
  # test of the packaged file against them is a test of the packaging.
  write_check(folder, restored, images, labels, num_samples=num_samples)
  return card


def write_check(
  folder: os.PathLike,
  restored,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  num_samples: int = 16,
  probe_seed: int = 0,
) -> None:
  """Writes ``<folder>/check.npz``: ``probe_seed`` and ``probe_logits``
  (``restored.predict`` on :func:`stn_jax.model_zoo.probe_images`), and ``indices``,
  ``labels`` and ``logits`` of the first ``num_samples`` of the test split
  ``images`` (uint8 ``(N, H, W, C)``) and ``labels`` ``(N,)``. No image is
  written: the probes are rebuilt from the seed, the test images read from
  the data directory (:func:`verify`)."""
  probes = probe_images(restored.in_shape, seed=probe_seed)
  indices = np.arange(min(num_samples, len(images)))
  np.savez(
    pathlib.Path(folder) / CHECK,
    probe_seed=np.int64(probe_seed),
    probe_logits=np.asarray(restored.predict(probes)),
    indices=indices,
    labels=np.asarray(labels)[indices],
    logits=np.asarray(restored.predict(np.asarray(images)[indices])),
  )


def _tolerance(card: Card) -> float:
  # float32 weights reproduce the run's logits up to float error; bfloat16
  # weights only to their 8-bit mantissa.
  return 1e-4 if card.dtype == "float32" else 0.1


def verify(
  name: str,
  *,
  models_dir: os.PathLike | None = None,
  real: bool = True,
  full: bool = False,
  **where,
) -> dict:
  """Checks the pretrained model ``name`` against the run it came from.

  Always: its weights' sha256 (on load) and its logits on the seeded noise
  probes against the run's own (no data needed). With ``real``: its logits
  on the check's real test images, read by index from the test split in
  the data directory (``where``: ``tfds_dir``, ``source_dir``,
  ``data_mirror``; the dataset is built or downloaded if it is missing).
  With ``full``: its error on the whole test split against the card's.

  Returns:
    ``{'probe_max_diff': float, 'real_max_diff': float, 'real_correct':
    int, 'real_count': int, 'test_error': float}``, the last four only
    where measured. Differences are the largest absolute logit difference.

  Raises:
    ValueError: a difference over the tolerance (1e-4 for float32
      weights, 0.1 for bfloat16), another test error, or bad weights.
  """
  model = load(name, models_dir=models_dir)  # raises for an unknown name
  card = cards(models_dir)[name]
  check = read_check(name, models_dir=models_dir)
  tolerance = _tolerance(card)
  found = {}

  def compare(what, logits, expected):
    diff = float(np.max(np.abs(np.asarray(logits) - expected)))
    if not diff <= tolerance:
      raise ValueError(
        f"pretrained model {name!r}: its logits on {what} differ from the "
        f"run's by up to {diff:.3g} (tolerance {tolerance}); its weights "
        "do not reproduce the run."
      )
    return diff

  probes = probe_images(card.in_shape, seed=int(check["probe_seed"]))
  found["probe_max_diff"] = compare(
    "the noise probes", model.predict(probes), check["probe_logits"]
  )
  if real or full:
    images, labels = load_test_split(model.config, **where)
    indices = check["indices"]
    if not np.array_equal(labels[indices], check["labels"]):
      raise ValueError(
        f"pretrained model {name!r}: the test split read from the data "
        "directory has other labels at the check's indices than the run's; "
        "it is another version of the dataset."
      )
    logits = model.predict(images[indices])
    found["real_max_diff"] = compare(
      f"test images {indices.tolist()}", logits, check["logits"]
    )
    found["real_correct"] = int(np.sum(logits.argmax(1) == check["labels"]))
    found["real_count"] = len(indices)
    if full:
      logits = model.predict(images)
      error = float(np.mean(np.argmax(logits, -1) != labels))
      found["test_error"] = error
      if abs(error - card.test_error) * len(labels) > 1.5:
        raise ValueError(
          f"pretrained model {name!r}: test error {100 * error:.2f}% on "
          f"{len(labels)} images, the card says "
          f"{100 * card.test_error:.2f}% on {card.test_examples}."
        )
  return found
