"""A Pallas forward kernel for ``grid_sample`` and ``grid_sample_3d``
(opt-in, for the GPU).

What it is: the forward pass of ``_sampler_math.forward`` (images) and
``volumetric.forward`` (volumes) as one Pallas kernel, for the GPU, where
XLA's gathers of 3-channel NHWC pixels reached only 7-9% of an H200's
memory bandwidth (``experiments/results/accelerator/README.md``). Each
program owns a block of output points of one image and a block of its
channels: it loads the points' coordinates, computes every tap's pixel
index and weight with the XLA path's own function
(``_sampler_math.point_taps``, ``volumetric.voxel_taps``: one home for the
coordinate, padding and weight rules), gathers each tap's channels with
masked loads (an invalid tap reads 0 and costs no memory traffic) and
writes the weighted sum. Taps are summed in the XLA path's order, so values
agree with it to float rounding.

It is forward-only. ``_sampler_autodiff.sample`` (images) and
``volumetric._pallas_forward`` (volumes) call it for their primal; the
JVP, its transpose and every higher derivative are the XLA machinery, so
gradients are unchanged and exact.

Selection (read by ``grid_sample`` and ``grid_sample_3d`` each time they
are traced; images pass it down as a static option, so the samplers'
custom-derivative traces never mix):

* ``STN_JAX_SAMPLER=xla`` (or unset): the XLA path (and the C++ forward
  kernel on the CPU), as before. The default everywhere.
* ``STN_JAX_SAMPLER=pallas``: this kernel, for every mode (images:
  ``bilinear``, ``nearest``, ``bicubic``; volumes: ``bilinear``,
  ``nearest``), padding mode (``'fill'`` too: it is built from two
  ``'zeros'`` samples) and ``align_corners``: nothing falls back. On a CUDA
  GPU it is compiled by Pallas' Triton backend; on the CPU it runs in
  Pallas interpret mode (slow, exact: for tests); on any other platform
  (TPU, ROCm) the XLA path is used.
* ``use_sampler('pallas')`` (a context manager) overrides the variable in
  this thread, for code that compares both in one process (the benchmark).

An unknown value raises ``ValueError`` naming the variable. Only tracing
reads the choice: a function already jitted keeps the one it was traced
with (``jax.jit(grid_sample)`` called again with the same shapes does not
retrace).

Verified on a CPU only (jax 0.10.2):

* values equal to the XLA path and to PyTorch, gradients, jit, vmap,
  batched and unbatched: in interpret mode (``tests/test_pallas_sampler.py``);
* the kernel lowers to Triton IR: ``jax.jit(...).lower(...,
  lowering_platforms=('cuda',))`` runs Pallas' Triton lowering on this CPU
  (``lower_for_cuda``; tested for images and volumes). That checks that
  every op of the kernel has a Triton lowering rule (so the tap functions
  round with ``_sampler_math.round_half_even``: ``round`` has none in jax
  0.10.2) and that every loaded and stored block has a power-of-two size
  (points and channels per program are powers of two; a 3-channel image
  is read as 4 lanes, the 4th a repeat of the 3rd).
* read in the lowering's source, not run: a gather
  ``image_ref.at[n, index[:, None], c[None, :]]`` becomes pointer offsets
  ``n * H * W * C + index * C + c`` (64-bit when the image exceeds 4 GiB)
  and one masked ``tt.load``.

Unverified until a GPU runs it: that the Triton IR compiles to PTX and
runs correctly (the device's JAX, 0.11.2 at the last lease, may differ);
its speed, and so the block-size heuristic (``points_per_program``) and
the grid order; that the dead load Pallas emits before every store
(``swap`` returns the old value) is removed by Triton's dead-code
elimination.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from stn_jax.ops import _sampler_math

__all__ = [
  "ENV_VAR",
  "SAMPLERS",
  "forward",
  "lower_for_cuda",
  "points_per_program",
  "selected",
  "use_sampler",
]

ENV_VAR = "STN_JAX_SAMPLER"
SAMPLERS = ("xla", "pallas")
# Channels per program, at most: wider images split their channels over
# programs (each recomputes the taps, which is cheap next to the loads).
MAX_CHANNELS_PER_PROGRAM = 64
# Elements (points x channel lanes) per program's output block.
_BLOCK_ELEMENTS = 4096
_MAX_POINTS_PER_PROGRAM = 1024

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "stn_jax_sampler", default=None
)


def _check(name: str, source: str) -> str:
  if name not in SAMPLERS:
    raise ValueError(
      f"{source} must be one of {', '.join(map(repr, SAMPLERS))}; got {name!r}."
    )
  return name


def selected() -> str:
  """The forward sampler asked for: ``'xla'`` (default) or ``'pallas'``.

  ``use_sampler``'s value where one is active, else ``$STN_JAX_SAMPLER``.
  """
  name = _override.get()
  if name is not None:
    return name
  return _check(os.environ.get(ENV_VAR, "xla") or "xla", f"${ENV_VAR}")


@contextlib.contextmanager
def use_sampler(name: str):
  """Within the block, ``grid_sample`` traces with forward sampler
  ``name`` (``'xla'`` or ``'pallas'``), whatever ``$STN_JAX_SAMPLER``
  says. Only tracing reads it: a function jitted inside the block keeps
  its choice when called outside."""
  token = _override.set(_check(name, "use_sampler's name"))
  try:
    yield
  finally:
    _override.reset(token)


def _channels_per_program(channels: int) -> int:
  return min(pl.next_power_of_2(channels), MAX_CHANNELS_PER_PROGRAM)


def points_per_program(channels: int) -> int:
  """Output points per program (a power of two): blocks of about
  ``_BLOCK_ELEMENTS`` point-channel lanes, at most 1024 points. A first
  guess for a GPU (4 warps of 32 threads, ~32 lanes per thread), to be
  tuned on one."""
  lanes = _channels_per_program(channels)
  return max(16, min(_MAX_POINTS_PER_PROGRAM, _BLOCK_ELEMENTS // lanes))


def _taps(coords, spatial, mode, padding_mode, align_corners):
  """[(pixel index within the image, valid, weight)] of points given as
  one array per axis (x, y[, z]) in an image of ``spatial`` (H, W) or
  (D, H, W): the XLA paths' own tap functions."""
  if len(spatial) == 2:
    return [
      (tap.index, tap.valid, tap.weight)
      for tap in _sampler_math.point_taps(
        *coords, *spatial, mode, padding_mode, align_corners
      )
    ]
  from stn_jax.ops import volumetric  # imports sampling, which imports us

  return volumetric.voxel_taps(
    *coords, *spatial, mode, padding_mode, align_corners
  )


def _xla_forward(image, grid, mode, padding_mode, align_corners):
  """The XLA path's forward of a 2-D or 3-D image."""
  if image.ndim == 4:
    return _sampler_math.forward(image, grid, mode, padding_mode, align_corners)
  from stn_jax.ops import volumetric

  return volumetric.forward(image, grid, mode, padding_mode, align_corners)


def _kernel(
  grid_ref,
  image_ref,
  out_ref,
  *,
  spatial,
  channels,
  points,
  block,
  lanes,
  mode,
  padding_mode,
  align_corners,
):
  """One program: ``block`` points x ``lanes`` channels of one image.

  Refs are whole arrays: grid (N, P, 2 or 3), image (N, H * W, C) or
  (N, D * H * W, C), out (N, P, C). Lanes past the last point or channel repeat the last one
  (clamped indices): every load and store stays in bounds and a repeated
  lane writes the same value as the lane it repeats, so no store needs a
  mask (interpret mode's masked store would race a masked-off lane's old
  value against the real one at a repeated index).
  """
  first = pl.program_id(0) * block
  n = pl.program_id(1)
  first_channel = pl.program_id(2) * lanes
  p = jnp.minimum(first + jnp.arange(block, dtype=jnp.int32), points - 1)
  c = jnp.minimum(
    first_channel + jnp.arange(lanes, dtype=jnp.int32), channels - 1
  )
  coords = [plt.load(grid_ref.at[n, p, k]) for k in range(len(spatial))]
  zeros = jnp.zeros((block, lanes), out_ref.dtype)
  out = 0
  for index, valid, weight in _taps(
    coords, spatial, mode, padding_mode, align_corners
  ):
    valid = jnp.broadcast_to(valid[:, None], (block, lanes))
    values = plt.load(
      image_ref.at[n, index[:, None], c[None, :]], mask=valid, other=zeros
    )
    # The XLA paths' expression and order (``_sampler_math.forward``).
    out = out + weight[:, None] * values
  plt.store(out_ref.at[n, p[:, None], c[None, :]], out)


def _call(image, grid, mode, padding_mode, align_corners, block, interpret):
  """The pallas_call: image (N, [D,] H, W, C), grid (N, P, 2 or 3) ->
  (N, P, C)."""
  n, *spatial, channels = image.shape
  pixels = math.prod(spatial)
  points = grid.shape[1]
  lanes = _channels_per_program(channels)
  block = block or points_per_program(channels)
  if block & (block - 1) or block < 1:
    raise ValueError(f"points per program must be a power of two; got {block}")
  kernel = functools.partial(
    _kernel,
    spatial=tuple(spatial),
    channels=channels,
    points=points,
    block=block,
    lanes=lanes,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  return pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((n, points, channels), image.dtype),
    # Point blocks first: Pallas puts the first axis on CUDA's x, which
    # the hardware usually schedules fastest, so programs running together
    # read neighbouring parts of one image (a guess to measure).
    grid=(pl.cdiv(points, block), n, pl.cdiv(channels, lanes)),
    interpret=interpret,
    compiler_params=None if interpret else plt.CompilerParams(num_warps=4),
    name="stn_grid_sample_forward",
  )(grid, image.reshape(n, pixels, channels))


@functools.cache
def _batchable(mode, padding_mode, align_corners, block):
  """The kernel for these options, its vmap folded into the batch axis."""

  @jax.custom_batching.custom_vmap
  def sample(image, grid):
    def xla(image, grid):
      return _xla_forward(image, grid, mode, padding_mode, align_corners)

    options = (mode, padding_mode, align_corners, block)
    return jax.lax.platform_dependent(
      image,
      grid,
      default=xla,
      cpu=lambda *args: _call(*args, *options, interpret=True),
      cuda=lambda *args: _call(*args, *options, interpret=False),
    )

  @sample.def_vmap
  def _fold(axis_size, in_batched, image, grid):
    folded = []
    for x, batched in zip((image, grid), in_batched):
      if not batched:
        x = jnp.broadcast_to(x, (axis_size, *x.shape))
      folded.append(x.reshape(axis_size * x.shape[1], *x.shape[2:]))
    out = sample(*folded)
    return out.reshape(axis_size, -1, *out.shape[1:]), True

  return sample


def forward(image, grid, mode, padding_mode, align_corners, block=None):
  """image (N, H, W, C), grid (N, P, 2) -> (N, P, C), like
  ``_sampler_math.forward``; or a volume (N, D, H, W, C), grid (N, P, 3),
  like ``volumetric.forward``. Options static; ``padding_mode`` one of
  PyTorch's three; volumes: bilinear or nearest. The Pallas kernel on
  CUDA (compiled) and the CPU (interpreted), the XLA path elsewhere.
  ``block``: points per program, a power of two (default
  ``points_per_program(C)``). Not differentiable by itself:
  ``_sampler_autodiff.sample`` (2-D) and ``volumetric`` (3-D) supply its
  derivatives."""
  return _batchable(mode, padding_mode, align_corners, block)(image, grid)


def lower_for_cuda(image_shape, grid_shape, mode, padding_mode, align_corners):
  """StableHLO text of the compiled (Triton) kernel for CUDA (image
  ``(N, [D,] H, W, C)``, grid ``(N, P, 2 or 3)``, float32), lowered on
  this machine, whatever its backend: runs Pallas' Triton lowering, which
  raises if an op of the kernel has no Triton rule or a block is not a
  power of two. Compiling that IR to PTX needs a GPU and is not done."""
  image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  grid = jax.ShapeDtypeStruct(grid_shape, jnp.float32)
  fn = jax.jit(
    functools.partial(
      _call,
      mode=mode,
      padding_mode=padding_mode,
      align_corners=align_corners,
      block=None,
      interpret=False,
    )
  )
  return fn.trace(image, grid).lower(lowering_platforms=("cuda",)).as_text()
