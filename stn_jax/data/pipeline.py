"""Input pipeline: arrays -> seeded, checkpointable, sharded device batches.

The split is held in memory (read once from ``tfds.data_source``, see
:mod:`stn_jax.data.datasets`). grain runs the stream of batches: batch ``k``
of the run is batch ``k % B`` of epoch ``k // B`` of a permutation drawn from
``(seed, epoch)``, so every epoch is reshuffled; grain's iterator state is a
small dict that a checkpoint can hold, so a resumed run continues at exactly
the next batch, and grain's worker threads prepare batches ahead. Each batch
is one NumPy gather, so data is never the bottleneck (measured in
``experiments/results/data.md``).

An optional ``preprocess`` step changes each host batch before it is
normalised; the pipeline knows no dataset by name. The one the configs use
is on-the-fly distortion (:class:`stn_jax.data.distortions.OnTheFly`), which
draws every example's distortion from ``(seed, 'train', index, epoch)``:
fresh each epoch, reproducible, and restored exactly with the iterator
state. The default is the fixed, built dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stn_jax.normalization import Normalization


def data_sharding(devices=None) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over ``devices``
  (default: every local device)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return NamedSharding(
    Mesh(np.array(devices), ("data",)), PartitionSpec("data")
  )


def epoch_order(seed: int, epoch: int, size: int, shuffle: bool = True):
  """The order of the examples in ``epoch``: a permutation drawn from
  ``(seed, epoch)`` (``np.random.default_rng``), or ``arange`` without
  ``shuffle``."""
  if not shuffle:
    return np.arange(size)
  return np.random.default_rng([seed, epoch]).permutation(size)


class InputPipeline(Iterator):
  """Batches of ``{'image': float32 (B, H, W, C), 'label': int32 (B,), ...}``.

  Args:
    arrays: the split, a dict of equal-length arrays with ``image`` uint8
      (N, H, W, C) and ``label``.
    batch_size: the global batch; must divide by the number of devices.
    seed: shuffle seed (and on-the-fly distortion seed).
    shuffle: shuffle (True for training, False for evaluation).
    num_epochs: None repeats forever; an int stops after that many epochs.
    drop_remainder: drop each epoch's last partial batch (training). Without
      it an epoch yields every example exactly once (evaluation).
    normalization: uint8 images become ``normalization(images)``, float32
      (default :class:`~stn_jax.normalization.Normalization()`: plain [0, 1]
      scaling).
    preprocess: None, or a step applied to each host batch before
      normalisation: ``preprocess(batch, arrays=, indices=, epochs=,
      seed=)`` returns the new batch, and ``preprocess.output_shape(shape)``
      gives (and checks) the image shape it makes from the split's.
    sharding: where batches go (default :func:`data_sharding`); ``False``
      keeps NumPy arrays on the host.
    num_threads: grain threads preparing batches ahead (0: in the caller).
    rows: None, or a slice of each batch's rows to make (the rows one
      process of a multi-process run feeds; the permutation is the same
      on every process). Default: all of them.
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    normalization: Normalization | None = None,
    preprocess=None,
    sharding=None,
    num_threads: int = 2,
    rows: slice | None = None,
  ):
    if "image" not in arrays or "label" not in arrays:
      raise ValueError(
        f"arrays must hold 'image' and 'label'; got keys {sorted(arrays)}."
      )
    self._arrays = dict(arrays)
    self._size = len(self._arrays["label"])
    if not isinstance(batch_size, int) or batch_size <= 0:
      raise ValueError(
        f"batch_size must be a positive int; got {batch_size!r}."
      )
    if self._size == 0:
      raise ValueError("arrays must not be empty.")
    self._sharding = data_sharding() if sharding is None else sharding
    if self._sharding is not False:
      devices = self._sharding.mesh.size
      if batch_size % devices:
        raise ValueError(
          f"batch_size must be divisible by the number of "
          f"devices ({devices}); got {batch_size}."
        )
    if preprocess is not None:
      preprocess.output_shape(self._arrays["image"].shape[1:])  # checks
    self._preprocess = preprocess
    self._rows = rows if rows is not None else slice(None)
    self._orders = {}
    self._seed = seed
    self._shuffle = shuffle
    self._batch_size = batch_size
    self._normalization = normalization or Normalization()
    if drop_remainder:
      self._batches_per_epoch = self._size // batch_size
      if self._batches_per_epoch == 0:
        raise ValueError(
          f"batch_size ({batch_size}) is larger than the "
          f"split ({self._size}) and drop_remainder is set."
        )
    else:
      self._batches_per_epoch = -(-self._size // batch_size)
    dataset = grain.MapDataset.range(self._batches_per_epoch).repeat(num_epochs)
    dataset = dataset.map_with_index(lambda k, _: self._batch_at(k))
    self._iterator = iter(
      dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)
      )
    )

  def _order(self, epoch: int) -> np.ndarray:
    """The permutation of ``epoch``, cached for it and the epoch before
    (grain's threads may straddle an epoch boundary)."""
    order = self._orders.get(epoch)
    if order is None:
      order = epoch_order(self._seed, epoch, self._size, self._shuffle)
      kept = {e: o for e, o in self._orders.items() if e == epoch - 1}
      self._orders = {**kept, epoch: order}  # one atomic swap
    return order

  def _batch_at(self, position: int) -> dict[str, np.ndarray]:
    epoch, batch = divmod(position, self._batches_per_epoch)
    indices = self._order(epoch)[
      batch * self._batch_size : (batch + 1) * self._batch_size
    ][self._rows]
    return self.host_batch(np.full(len(indices), epoch), indices)

  def __len__(self) -> int:
    """Examples per epoch."""
    return self._size

  def get_state(self) -> dict:
    """The position in the stream, for a checkpoint."""
    return self._iterator.get_state()

  def set_state(self, state: dict) -> None:
    """Continues from a state of :meth:`get_state`."""
    self._iterator.set_state(state)

  def host_batch(self, epochs, indices) -> dict[str, np.ndarray]:
    """The NumPy batch of the given examples (used by ``__next__``)."""
    batch = {k: v[indices] for k, v in self._arrays.items()}
    if self._preprocess is not None:
      batch = self._preprocess(
        batch,
        arrays=self._arrays,
        indices=indices,
        epochs=epochs,
        seed=self._seed,
      )
    batch["image"] = self._normalization(batch["image"])
    batch["label"] = batch["label"].astype(np.int32)
    batch["epoch"] = np.asarray(epochs, np.int32)
    return batch

  def __next__(self) -> dict:
    batch = next(self._iterator)
    if self._sharding is False:
      return batch
    return {
      k: jax.make_array_from_process_local_data(self._sharding, v)
      for k, v in batch.items()
    }


class DeviceInput:
  """The training split kept on the device, and the batch indices into it.

  The same batches as :class:`InputPipeline` (without ``preprocess``):
  batch ``k`` is batch ``k % B`` of epoch ``k // B`` of
  :func:`epoch_order`, and the position is kept in the same state dict
  (``{'next_index': k}``), so a run can switch between the two at a
  checkpoint. Only int32 indices (with each example's epoch and seed)
  travel to the device each dispatch; the uint8 images are gathered,
  optionally distorted, and normalised inside the step (:meth:`gather`).

  Args:
    arrays: the split (``image`` uint8 (N, H, W, C), ``label``).
    batch_size: the global batch.
    seed: shuffle seed (and the augmentation's key seed).
    normalization: applied on the device to the gathered uint8 images.
    augment: None, or a step of :mod:`stn_jax.data.device_augment`
      (``OnTheFly`` distortion or ``RandomAffine`` jitter) run inside the
      step on every gathered batch before normalisation. Its stream is
      drawn with ``jax.random``, not the host steps' NumPy.
  """

  def __init__(
    self,
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    seed: int = 0,
    normalization: Normalization | None = None,
    augment=None,
  ):
    self._size = len(arrays["label"])
    self._batch_size = batch_size
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**31):
      raise ValueError(
        f"seed must be an int in [0, 2**31) for the split on the device; "
        f"got {seed!r}."
      )
    self._seed = int(seed)
    self._batches_per_epoch = self._size // batch_size
    if self._batches_per_epoch == 0:
      raise ValueError(
        f"batch_size ({batch_size}) is larger than the split ({self._size})."
      )
    self.normalization = normalization or Normalization()
    self.augment = augment
    if augment is not None:
      augment.output_shape(np.shape(arrays["image"])[1:])  # checks
    self._next = 0
    self._orders: dict[int, np.ndarray] = {}

  @staticmethod
  def device_arrays(arrays: Mapping[str, np.ndarray], sharding=None) -> dict:
    """What :meth:`gather` reads: the uint8 images and int32 labels, put on
    the device (``sharding``: e.g. replicated over a mesh)."""
    host = {
      "image": np.asarray(arrays["image"], np.uint8),
      "label": np.asarray(arrays["label"], np.int32),
    }
    return jax.device_put(host, sharding)

  def gather(self, data: dict, inputs: dict) -> dict:
    """``{'image': normalised float32 (..., B, H, W, C), 'label': (..., B)}``
    for ``inputs`` from :meth:`indices` (``index``, ``epoch``, ``seed``: int
    (..., B)); traceable (runs inside the step).

    The normalisation is a lookup in a (256, C) table made on the host by
    :class:`~stn_jax.normalization.Normalization` itself, so the batches
    are bitwise those of the host pipeline (XLA would turn the division
    by 255 into a multiplication, which rounds differently). An
    ``augment`` step renders whole pixel values, so the lookup applies to
    its output too.
    """
    index = inputs["index"]
    images = data["image"][index]
    if self.augment is not None:
      lead = index.shape
      flat = lambda x: x.reshape(-1, *x.shape[len(lead) :])
      images = self.augment(
        flat(images),
        sources=data["image"],
        index=index.reshape(-1),
        epoch=inputs["epoch"].reshape(-1),
        seed=inputs["seed"].reshape(-1),
      )
      images = images.reshape(*lead, *images.shape[1:])
    channels = images.shape[-1]
    table = np.broadcast_to(
      self.normalization(np.arange(256, dtype=np.uint8)[:, None]),
      (256, channels),
    )
    return {
      "image": jax.numpy.asarray(table)[
        images.astype(np.int32), np.arange(channels)
      ],
      "label": data["label"][index],
    }

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {
        epoch: epoch_order(self._seed, epoch, self._size),
        **{e: o for e, o in self._orders.items() if e == epoch - 1},
      }
    return self._orders[epoch]

  def indices(self, count: int | None = None) -> dict[str, np.ndarray]:
    """The next batch's ``{'index', 'epoch', 'seed'}``, int32 (B,) each, or
    the next ``count`` batches' (count, B); advances the position."""
    rows, epochs = [], []
    for position in range(self._next, self._next + (count or 1)):
      epoch, batch = divmod(position, self._batches_per_epoch)
      start = batch * self._batch_size
      rows.append(self._order(epoch)[start : start + self._batch_size])
      epochs.append(epoch)
    self._next += count or 1
    index = np.stack(rows).astype(np.int32)
    out = {
      "index": index,
      "epoch": np.broadcast_to(
        np.asarray(epochs, np.int32)[:, None], index.shape
      ).copy(),
      "seed": np.full(index.shape, self._seed, np.int32),
    }
    return out if count is not None else {k: v[0] for k, v in out.items()}

  def get_state(self) -> dict:
    """The position, as :meth:`InputPipeline.get_state` writes it."""
    return {"next_index": self._next}

  def set_state(self, state: dict) -> None:
    """Continues from a state of :meth:`get_state` (or of an
    :class:`InputPipeline` over the same split and batch size)."""
    self._next = int(state["next_index"])
