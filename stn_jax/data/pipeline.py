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
      if self._shuffle:
        rng = np.random.default_rng([self._seed, epoch])
        order = rng.permutation(self._size)
      else:
        order = np.arange(self._size)
      kept = {e: o for e, o in self._orders.items() if e == epoch - 1}
      self._orders = {**kept, epoch: order}  # one atomic swap
    return order

  def _batch_at(self, position: int) -> dict[str, np.ndarray]:
    epoch, batch = divmod(position, self._batches_per_epoch)
    indices = self._order(epoch)[
      batch * self._batch_size : (batch + 1) * self._batch_size
    ]
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
