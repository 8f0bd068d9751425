"""Datasets for stn_jax: verified offline sources (more with the data issue)."""

from stn_jax.data.sources import (MNIST_SHA256, SourceError, load_mnist,
                                  read_idx, resolve_data_dir)

__all__ = ["MNIST_SHA256", "SourceError", "load_mnist", "read_idx",
           "resolve_data_dir"]
