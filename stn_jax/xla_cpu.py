"""Which kernels XLA's CPU backend compiles a run's steps with.

jaxlib 0.10 gives convolutions, matrix products and reductions to
YNNPACK. At the paper networks' shapes YNNPACK's convolution weight
gradients ran at 5-20 GFLOP/s on a 2-core AMD EPYC, and Eigen's (XLA's
older CPU kernels) 1.5-7x faster, near the CPU's peak; Eigen's forward
passes were up to 2x faster too, except for layers with one input channel
(``experiments/bench_conv.py``, ``experiments/results/cpu_profile.md``).
Keeping YNNPACK for matrix products and reductions only made the whole
steps no faster, so ``'eigen'`` turns off every YNNPACK fusion.

A run chooses with ``config.xla_cpu_library`` (:data:`LIBRARIES`):

- ``'eigen'``: no YNNPACK fusions; convolutions and matrix products by
  Eigen, the rest by XLA's own loops.
- ``'ynnpack'``: jaxlib's default. Workdirs written before the key existed
  read it: it is what they ran with.
- ``'auto'`` (the default): ``'eigen'`` with one CPU device, ``'ynnpack'``
  with several host devices (a 4-device population step compiled with
  Eigen's kernels once hung in an all-reduce, in CI on 2 cores).

The choice is made per compiled step (``jax.jit(...,
compiler_options=...)``, :func:`compiler_options`): the training and
evaluation steps of a run are compiled with it, and every other jitted
function of the process keeps XLA's defaults. Accelerators ignore it. The
two libraries give the same values up to float rounding, so the key is safe
to change when a run resumes.
"""

from __future__ import annotations

import jax
import ml_collections

LIBRARIES = ("auto", "eigen", "ynnpack")

# The value of XLA's ``xla_cpu_experimental_ynn_fusion_type`` option per
# library; a library not here needs no option (XLA's default).
_YNN_FUSION_TYPES = {"eigen": ""}


def check_library(library) -> None:
  """Refuses a ``config.xla_cpu_library`` not in :data:`LIBRARIES`."""
  if library not in LIBRARIES:
    raise ValueError(
      "config.xla_cpu_library must be one of "
      f"{', '.join(LIBRARIES)}; got {library!r}."
    )


def resolve_library(library: str) -> str | None:
  """``library`` with ``'auto'`` resolved, on the CPU backend: ``'eigen'``
  with one device, ``'ynnpack'`` with several (host devices); None on
  other backends (the choice is the CPU's)."""
  check_library(library)
  if jax.default_backend() != "cpu":
    return None
  if library == "auto":
    return "eigen" if jax.device_count() == 1 else "ynnpack"
  return library


def compiler_options(library: str) -> dict[str, str] | None:
  """The ``compiler_options`` of ``jax.jit`` that make XLA's CPU backend
  compile one computation with ``library`` (:data:`LIBRARIES`); None where
  nothing needs setting (``'ynnpack'``, jaxlib's own default, or not the
  CPU backend)."""
  fusion_types = _YNN_FUSION_TYPES.get(resolve_library(library))
  if fusion_types is None:
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": fusion_types}


def config_library(config: ml_collections.ConfigDict) -> str:
  """``config.xla_cpu_library``, or ``'ynnpack'`` for a config written
  before the key existed (what it ran with)."""
  from stn_jax import config_schema  # config_schema lists LIBRARIES

  return config_schema.get(config, "xla_cpu_library")


def step_compiler_options(
  config: ml_collections.ConfigDict,
) -> dict[str, str] | None:
  """:func:`compiler_options` for the library ``config`` names: what a
  run's training and evaluation steps are compiled with."""
  return compiler_options(config_library(config))


def step_library(config: ml_collections.ConfigDict) -> str | None:
  """The library ``config``'s steps are compiled with, ``'auto'`` resolved
  (:func:`resolve_library`; None off the CPU backend): what its layers are
  built for and its log's first line names."""
  return resolve_library(config_library(config))
