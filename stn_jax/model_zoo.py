"""Trained models that ship with stn_jax: ``stn_jax.pretrained(name)``.

Each entry is one folder ``stn_jax/pretrained_models/<name>/`` holding its
card, ``card.json`` (the registry entry: the run's config and input shape,
its training step, the test error measured on the run's test split with
:meth:`~stn_jax.inference.Restored.predict`, the command that trained it,
the commit and machine, and the weights file's name, size and sha256), and
its weights ``weights.npz`` (every parameter of the model's ``nnx.State``,
keyed by its ``/``-joined path, float32 or bfloat16). Its check file
``check.npz`` holds no images: the logits the run's own checkpoint gave on
seeded noise probes (:func:`probe_images`, rebuilt from the seed), which
check the loaded model without any data, and the test-split indices,
labels and logits of a few real test images, which :func:`verify` checks
against the test split read from the data directory.

Weights over about 5 MB are not in the package: the card gives their
``url`` (a release download) and they are downloaded on first use into
``<download cache>/pretrained/<name>/`` (``$STN_DATA_DIR``, else
``~/.cache/stn_jax/data``; :mod:`stn_jax.data.download`), from
``$STN_DATA_MIRROR/pretrained/<name>/<file>`` when a mirror is set.
Every load checks the sha256, downloaded or shipped.

Adding an entry (see ``docs/pretrained.md``)::

  python -m stn_jax.model_zoo package --workdir=RUN --name=NAME \\
    --command="python -m stn_jax.main --config=... --workdir=RUN"

measures the test error, writes the card, weights and check file into
``stn_jax/pretrained_models/NAME/`` (``--out=DIR``: ``DIR/NAME/``, e.g.
for a large model's release file, with ``--url``; its card and check file are
then copied into the package), and nothing else is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys

import numpy as np

from stn_jax import provenance

MODELS_DIR = pathlib.Path(__file__).parent / "pretrained_models"
CARD = "card.json"
WEIGHTS = "weights.npz"
CHECK = "check.npz"
DTYPES = ("float32", "bfloat16")
# Weights larger than this go to a release download, not the package.
MAX_SHIPPED_BYTES = 5 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Card:
  """A pretrained model's registry entry (``card.json``).

  Attributes:
    name: the entry's name (its folder).
    description: one line on what the model is.
    dataset: the run's dataset (``config.dataset``).
    model: the run's model name (``config.model``).
    test_error: error on the dataset's whole test split, a fraction,
      measured with ``predict`` on the packaged weights.
    test_examples: the size of that split.
    step: the training step of the weights.
    command: the command that trained the run.
    commit: the stn_jax commit the weights were packaged at.
    machine: where they were measured.
    weights: file name of the weights.
    sha256: the weights file's sha256.
    size: its size in bytes.
    dtype: ``'float32'`` or ``'bfloat16'``.
    url: where a weights file that is not shipped is downloaded from
      (``''`` when it is in the package).
    config: the run's config as a dict.
    in_shape: ``(H, W, C)`` of the model's input.
  """

  name: str
  description: str
  dataset: str
  model: str
  test_error: float
  test_examples: int
  step: int
  command: str
  commit: str
  machine: str
  weights: str
  sha256: str
  size: int
  dtype: str
  url: str
  config: dict
  in_shape: tuple[int, ...]

  @classmethod
  def read(cls, folder: os.PathLike) -> Card:
    """The card in ``folder`` (``card.json``)."""
    path = pathlib.Path(folder) / CARD
    with open(path) as f:
      data = json.load(f)
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(fields - set(data))
    if missing:
      raise ValueError(f"{path} lacks the fields {', '.join(missing)}.")
    data = {k: data[k] for k in fields}
    data["in_shape"] = tuple(data["in_shape"])
    return cls(**data)

  def write(self, folder: os.PathLike) -> None:
    """Writes ``card.json`` into ``folder``."""
    data = dataclasses.asdict(self)
    data["in_shape"] = list(self.in_shape)
    with open(pathlib.Path(folder) / CARD, "w") as f:
      json.dump(data, f, indent=2, sort_keys=True)
      f.write("\n")


def cards(models_dir: os.PathLike | None = None) -> dict[str, Card]:
  """Every entry of the registry, ``{name: Card}``, sorted by name."""
  folder = pathlib.Path(models_dir or MODELS_DIR)
  found = {}
  if folder.is_dir():
    for entry in sorted(folder.iterdir()):
      if (entry / CARD).is_file():
        found[entry.name] = Card.read(entry)
  return found


def sha256_of(path: os.PathLike) -> str:
  """The sha256 (hex) of a file."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _verify(path: pathlib.Path, card: Card) -> None:
  actual = sha256_of(path)
  if actual != card.sha256:
    raise ValueError(
      f"pretrained model {card.name!r}: {path} fails its sha256 check "
      f"(expected {card.sha256}, got {actual}); delete it so that it is "
      "downloaded again, or reinstall stn_jax."
    )


def weights_path(card: Card, models_dir: os.PathLike | None = None):
  """The verified weights file of ``card``: the shipped one, else the
  download cache's, downloaded (and verified) first if needed.

  Raises:
    ValueError: the file fails its sha256 check.
    stn_jax.data.download.DownloadError: it cannot be downloaded.
  """
  shipped = pathlib.Path(models_dir or MODELS_DIR) / card.name / card.weights
  if shipped.is_file():
    _verify(shipped, card)
    return shipped
  from stn_jax.data import download  # light: standard library only

  cached = download.cache_dir() / "pretrained" / card.name / card.weights
  if not cached.is_file():
    mirror = os.environ.get(download.MIRROR_ENV)
    if mirror:
      url = f"{mirror.rstrip('/')}/pretrained/{card.name}/{card.weights}"
    elif card.url:
      url = card.url
    else:
      raise FileNotFoundError(
        f"pretrained model {card.name!r}: its weights {shipped} are missing "
        "and its card gives no url; reinstall stn_jax."
      )
    if download.offline():
      raise download.DownloadError(
        f"pretrained model {card.name!r} must be downloaded from {url}, but "
        f"${download.OFFLINE_ENV} disables downloads; put {card.weights} "
        f"in {cached.parent} or unset it."
      )
    download.download(url, cached, verify=lambda path: _verify(path, card))
  _verify(cached, card)
  return cached


def save_weights(state, path: os.PathLike, *, dtype: str = "float32") -> None:
  """Writes an ``nnx.State``'s arrays to ``path`` (``.npz``), keyed by
  their ``/``-joined paths; bfloat16 is stored as its uint16 bits."""
  import jax

  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}.")
  arrays = {}
  for key, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = "/".join(
      str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
      for k in key
    )
    value = np.asarray(leaf)
    if dtype == "bfloat16" and np.issubdtype(value.dtype, np.floating):
      value = value.astype(jax.numpy.bfloat16).view(np.uint16)
    arrays[name] = value
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def load_weights(state, path: os.PathLike, *, dtype: str = "float32"):
  """``state`` (an ``nnx.State``) with every array read from ``path``
  (written by :func:`save_weights`), in ``state``'s dtypes.

  Raises:
    ValueError: a parameter is missing, extra or of another shape.
  """
  import jax
  import ml_dtypes

  with np.load(path) as stored:
    stored = dict(stored)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  values = []
  for key, leaf in leaves:
    name = "/".join(
      str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
      for k in key
    )
    if name not in stored:
      raise ValueError(f"{path} lacks the parameter {name}.")
    value = stored.pop(name)
    if dtype == "bfloat16" and value.dtype == np.uint16:
      value = value.view(ml_dtypes.bfloat16)
    if value.shape != leaf.shape:
      raise ValueError(
        f"{path}: parameter {name} has shape {value.shape}; the model "
        f"expects {leaf.shape}."
      )
    values.append(jax.numpy.asarray(value.astype(leaf.dtype)))
  if stored:
    raise ValueError(
      f"{path} holds parameters the model lacks: {', '.join(sorted(stored))}."
    )
  return jax.tree_util.tree_unflatten(treedef, values)


def load(name: str, *, models_dir: os.PathLike | None = None):
  """The pretrained model ``name`` as a :class:`stn_jax.inference.Restored`
  (what ``stn_jax.restore(workdir)`` returns for the run it came from).

  Raises:
    ValueError: unknown name, or weights that fail their checksum.
  """
  import ml_collections
  from flax import nnx

  from stn_jax import models
  from stn_jax.inference import Restored

  registry = cards(models_dir)
  if name not in registry:
    raise ValueError(
      f"name must be one of the pretrained models "
      f"{', '.join(registry) or '(none installed)'}; got {name!r}."
    )
  card = registry[name]
  path = weights_path(card, models_dir)
  config = ml_collections.ConfigDict(card.config)
  # Abstract parameters (shapes only): no random initialisation to compile.
  model = nnx.eval_shape(lambda: models.from_config(config, card.in_shape))
  graphdef, state = nnx.split(model)
  state = load_weights(state, path, dtype=card.dtype)
  return Restored(config, nnx.merge(graphdef, state), card.in_shape, card.step)


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


def probe_images(in_shape, *, count: int = 8, seed: int = 0) -> np.ndarray:
  """``count`` uint8 noise images of shape ``in_shape`` ``(H, W, C)``,
  ``(count, H, W, C)``, drawn from ``seed``: the data-free inputs of a
  pretrained model's check (the same on every machine)."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, *in_shape), dtype=np.uint8)


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
  (``restored.predict`` on :func:`probe_images`), and ``indices``,
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


def read_check(name: str, *, models_dir: os.PathLike | None = None) -> dict:
  """The check file of the pretrained model ``name`` as a dict of arrays
  (``probe_seed``, ``probe_logits`` ``(8, classes)``, ``indices``,
  ``labels``, ``logits`` ``(K, classes)``)."""
  path = pathlib.Path(models_dir or MODELS_DIR) / name / CHECK
  with np.load(path) as stored:
    return {key: stored[key] for key in stored.files}


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


USAGE = """python -m stn_jax.model_zoo [list | package --workdir=RUN \
--name=NAME --command=CMD [--description=TEXT] [--out=DIR] \
[--dtype=float32|bfloat16] [--url=URL] | verify NAME [--full]]

list (the default): the pretrained models with their test errors.
package: makes RUN (a training workdir) the pretrained model NAME: measures
its test error on the whole test split, writes card.json, weights.npz and
check.npz into stn_jax/pretrained_models/NAME (or --out/NAME).
verify NAME [--full]: checks NAME's weights against the run's logits on
noise probes and on real test images (read from the data directory);
--full: also its error on the whole test split against the card's.
"""


def main(argv=None) -> int:
  """``python -m stn_jax.model_zoo``; returns the exit status."""
  from absl import flags

  from stn_jax import cli

  values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "package: the run.", flag_values=values)
  flags.DEFINE_string("name", None, "package: entry name.", flag_values=values)
  flags.DEFINE_string(
    "command", "", "package: the training command.", flag_values=values
  )
  flags.DEFINE_string(
    "description", "", "package: one line.", flag_values=values
  )
  flags.DEFINE_string(
    "out", None, "package: output folder.", flag_values=values
  )
  flags.DEFINE_enum(
    "dtype", "float32", DTYPES, "package: weights dtype.", flag_values=values
  )
  flags.DEFINE_string(
    "url", "", "package: release download URL.", flag_values=values
  )
  flags.DEFINE_bool(
    "full", False, "verify: the whole test split too.", flag_values=values
  )

  def body(positional):
    command = positional[0] if positional else "list"
    if command == "list" and len(positional) <= 1:
      for card in cards().values():
        print(
          f"{card.name}: {card.description} test error "
          f"{100 * card.test_error:.2f}% on {card.test_examples} "
          f"{card.dataset} test images (step {card.step})"
        )
      return 0
    if command == "verify" and len(positional) == 2:
      found = verify(positional[1], full=values.full)
      print(
        f"{positional[1]}: logits equal the run's (largest difference "
        f"{found['probe_max_diff']:.2g} on noise probes, "
        f"{found['real_max_diff']:.2g} on {found['real_count']} test images, "
        f"{found['real_correct']} right)"
        + (
          f"; test error {100 * found['test_error']:.2f}% as on its card"
          if "test_error" in found
          else ""
        )
      )
      return 0
    if command != "package" or len(positional) != 1:
      raise ValueError(
        "expected one command: list, package, or verify NAME; got "
        f"{positional}."
      )
    if not values.workdir or not values.name:
      raise ValueError("package needs --workdir and --name.")
    card = package(
      values.workdir,
      values.name,
      command=values.command,
      description=values.description,
      out=values.out,
      dtype=values.dtype,
      url=values.url,
    )
    print(
      f"{card.name}: test error {100 * card.test_error:.2f}% on "
      f"{card.test_examples} images; weights {card.size} bytes, sha256 "
      f"{card.sha256}"
    )
    return 0

  return cli.run(
    body, values, argv, prog="python -m stn_jax.model_zoo", doc=USAGE
  )


if __name__ == "__main__":
  sys.exit(main())
