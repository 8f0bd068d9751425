"""Datasets: verified offline sources, TFDS builders, the input pipeline.

- :mod:`stn_jax.data.sources`: data directory, MNIST IDX files and checksums.
- :mod:`stn_jax.data.distortions`: the paper's distortions (R, RTS, P, E, TC).
- :mod:`stn_jax.data.distorted_mnist`, :mod:`stn_jax.data.gtsrb`: builders.
- :mod:`stn_jax.data.datasets`: names -> built datasets -> arrays.
- :mod:`stn_jax.data.pipeline`: seeded, checkpointable, sharded batches.

Command line: ``python -m stn_jax.data {build,preview} ...``.
"""

from stn_jax.data.datasets import build, get_builder, load_arrays
from stn_jax.data.pipeline import InputPipeline, data_sharding
from stn_jax.data.sources import (
  MNIST_SHA256,
  SourceError,
  load_mnist,
  read_idx,
  resolve_data_dir,
)

__all__ = [
  "InputPipeline",
  "MNIST_SHA256",
  "SourceError",
  "build",
  "data_sharding",
  "get_builder",
  "load_arrays",
  "load_mnist",
  "read_idx",
  "resolve_data_dir",
]
