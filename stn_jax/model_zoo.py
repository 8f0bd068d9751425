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
labels and logits of a few real test images, which :func:`stn_jax.model_packaging.verify` checks
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

(:func:`stn_jax.model_packaging.package`) measures the test error, writes
the card, weights and check file into
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


def probe_images(in_shape, *, count: int = 8, seed: int = 0) -> np.ndarray:
  """``count`` uint8 noise images of shape ``in_shape`` ``(H, W, C)``,
  ``(count, H, W, C)``, drawn from ``seed``: the data-free inputs of a
  pretrained model's check (the same on every machine)."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, *in_shape), dtype=np.uint8)


def read_check(name: str, *, models_dir: os.PathLike | None = None) -> dict:
  """The check file of the pretrained model ``name`` as a dict of arrays
  (``probe_seed``, ``probe_logits`` ``(8, classes)``, ``indices``,
  ``labels``, ``logits`` ``(K, classes)``)."""
  path = pathlib.Path(models_dir or MODELS_DIR) / name / CHECK
  with np.load(path) as stored:
    return {key: stored[key] for key in stored.files}


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

  from stn_jax import cli, model_packaging

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
      found = model_packaging.verify(positional[1], full=values.full)
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
    card = model_packaging.package(
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
