"""Localisation networks and the SpatialTransformer layer (Flax NNX)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stn_jax import ops
from stn_jax.models.convolution import conv
from stn_jax.models.pooling import max_pool


def regression_head(
  in_features: int, identity: np.ndarray, rngs: nnx.Rngs
) -> nnx.Linear:
  """The last localisation layer: zero weights, bias = the identity
  transform, so training starts from the identity (the paper's init)."""
  return nnx.Linear(
    in_features,
    len(identity),
    kernel_init=nnx.initializers.zeros_init(),
    bias_init=lambda *_: jnp.asarray(identity),
    rngs=rngs,
  )


class FCLocalisation(nnx.Module):
  """Fully connected localisation net (ST-FCN: 3 layers of 32 units)."""

  def __init__(
    self,
    in_shape: Sequence[int],
    identity: np.ndarray,
    *,
    hidden: Sequence[int] = (32, 32, 32),
    rngs: nnx.Rngs,
  ):
    sizes = [int(np.prod(in_shape)), *hidden]
    self.hidden = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
    )
    self.head = regression_head(sizes[-1], identity, rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.head(x)


class ConvLocalisation(nnx.Module):
  """Convolutional localisation net (ST-CNN): on a ``downsample``-times
  max-pooled input, conv 5x5 -> max-pool 2 -> conv 5x5 -> FC -> params."""

  def __init__(
    self,
    in_shape: Sequence[int],
    identity: np.ndarray,
    *,
    channels: Sequence[int] = (20, 20),
    hidden: int = 20,
    downsample: int = 2,
    rngs: nnx.Rngs,
  ):
    height, width, in_channels = in_shape
    self.downsample = downsample
    self.conv1 = conv(in_channels, channels[0], (5, 5), rngs=rngs)
    self.conv2 = conv(channels[0], channels[1], (5, 5), rngs=rngs)
    h = height // downsample // 2
    w = width // downsample // 2
    self.fc = nnx.Linear(h * w * channels[1], hidden, rngs=rngs)
    self.head = regression_head(hidden, identity, rngs)

  def __call__(self, x):
    if self.downsample > 1:
      d = self.downsample
      x = max_pool(x, d)
    x = max_pool(nnx.relu(self.conv1(x)), 2)
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.fc(x.reshape(x.shape[0], -1)))
    return self.head(x)


class SpatialTransformer(nnx.Module):
  """A spatial transformer: localisation net -> grid -> sampler.

  Works on any NHWC feature map. For inspection, :meth:`transform_params`
  gives the regressed parameters, :meth:`grid` the sampling grid and
  :meth:`sample` samples any map (e.g. the image) at a grid.

  Args:
    in_shape: ``(H, W, C)`` of the input feature map.
    transform: ``'affine'``, ``'projective'``, ``'tps'`` or ``'attention'``.
    out_size: ``(H_out, W_out)``; default the input's.
    localisation: ``'conv'`` or ``'fc'``.
    localisation_kwargs: passed to the localisation net.
    mode, padding_mode, align_corners: sampler options (``grid_sample``).
    num_control_points: K for ``tps``.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    transform: str = "affine",
    out_size: Sequence[int] | None = None,
    localisation: str = "conv",
    localisation_kwargs=None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    num_control_points: int = 16,
    rngs: nnx.Rngs,
  ):
    identity = ops.identity_params(
      transform, num_control_points=num_control_points
    )
    nets = {"conv": ConvLocalisation, "fc": FCLocalisation}
    if localisation not in nets:
      raise ValueError(
        f"localisation must be one of {sorted(nets)}; got {localisation!r}."
      )
    self.localisation = nets[localisation](
      tuple(in_shape), identity, rngs=rngs, **(localisation_kwargs or {})
    )
    self.transform = transform
    self.out_size = tuple(out_size or in_shape[:2])
    self.mode = mode
    self.padding_mode = padding_mode
    self.align_corners = align_corners

  def transform_params(self, x):
    """The regressed transformation parameters ``(N, P)`` for input ``x``
    (layout: :mod:`stn_jax.ops.transforms`)."""
    return self.localisation(x)

  def grid(self, x):
    """The sampling grid ``(N, H_out, W_out, 2)`` for input ``x``."""
    return ops.params_to_grid(
      self.transform,
      self.localisation(x),
      self.out_size,
      align_corners=self.align_corners,
    )

  def sample(self, x, grid):
    """``x (N, H, W, C)`` sampled at ``grid (N, H_out, W_out, 2)`` with
    this transformer's sampler options (``mode``, ``padding_mode``,
    ``align_corners``)."""
    return ops.grid_sample(
      x,
      grid,
      mode=self.mode,
      padding_mode=self.padding_mode,
      align_corners=self.align_corners,
    )

  def __call__(self, x):
    return self.sample(x, self.grid(x))


class SpatialTransformer3D(nnx.Module):
  """A volumetric spatial transformer: localisation net -> 3-D affine grid
  -> trilinear (or nearest) sampler.

  Works on any NDHWC volume. The localisation net is fully connected (as
  ST-FCN's) and regresses the 12 entries of ``theta (3, 4)``, row-major,
  starting from the identity.

  Args:
    in_shape: ``(D, H, W, C)`` of the input volume.
    out_size: ``(D_out, H_out, W_out)``; default the input's.
    hidden: the localisation net's hidden layer sizes.
    mode, padding_mode, align_corners: sampler options
      (:func:`stn_jax.ops.grid_sample_3d`).
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    out_size: Sequence[int] | None = None,
    hidden: Sequence[int] = (32, 32),
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
    rngs: nnx.Rngs,
  ):
    if len(in_shape) != 4:
      raise ValueError(f"in_shape must be (D, H, W, C); got {tuple(in_shape)}.")
    identity = np.eye(3, 4, dtype=np.float32).ravel()
    self.localisation = FCLocalisation(
      tuple(in_shape), identity, hidden=hidden, rngs=rngs
    )
    self.out_size = tuple(int(s) for s in (out_size or in_shape[:3]))
    self.mode = mode
    self.padding_mode = padding_mode
    self.align_corners = align_corners

  def transform_params(self, x):
    """``theta`` ``(N, 3, 4)`` (output -> input) for input ``x``."""
    return self.localisation(x).reshape(-1, 3, 4)

  def grid(self, x):
    """The sampling grid ``(N, D_out, H_out, W_out, 3)`` for ``x``."""
    return ops.affine_grid_3d(
      self.transform_params(x), self.out_size, align_corners=self.align_corners
    )

  def __call__(self, x):
    return ops.grid_sample_3d(
      x,
      self.grid(x),
      mode=self.mode,
      padding_mode=self.padding_mode,
      align_corners=self.align_corners,
    )


class ICSpatialTransformer(SpatialTransformer):
  """The inverse compositional spatial transformer (IC-STN, Lin & Lucey,
  CVPR 2017): one localisation net applied ``recurrences`` times.

  With ``M_0 = I``, step ``k`` warps the ORIGINAL input with ``M_k`` (at
  the input's size), regresses an update ``D_k`` from it and composes
  ``M_{k+1} = M_k @ D_k`` (3x3 maps from output to input coordinates,
  :func:`stn_jax.ops.params_to_matrix`); the output samples the original
  input once, with ``M_K``. The update head starts at the identity (zero
  weights, identity bias), so at initialisation every ``D_k`` and the
  composed warp are the identity. ``recurrences = 1`` is the plain
  :class:`SpatialTransformer` with the same parameters.

  :meth:`transform_params` returns the composed warp's flat parameters
  (``affine``: 6, ``projective``: 8 with ``h33 = 1``), :meth:`grid` its
  grid, so every tool that reads a transformer reads the composed warp.

  Args:
    in_shape: ``(H, W, C)`` of the input feature map.
    transform: ``'affine'`` or ``'projective'``.
    recurrences: K >= 1, the number of updates.
    **kwargs: ``out_size``, ``localisation``, ``localisation_kwargs``,
      ``mode``, ``padding_mode``, ``align_corners``: as
      :class:`SpatialTransformer`.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    transform: str = "affine",
    recurrences: int = 4,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    if transform not in ("affine", "projective"):
      raise ValueError(
        "transform of an IC-STN must be 'affine' or 'projective' (maps "
        f"that compose as 3x3 matrices); got {transform!r}."
      )
    if (
      isinstance(recurrences, bool)
      or not isinstance(recurrences, (int, np.integer))
      or recurrences < 1
    ):
      raise ValueError(f"recurrences must be an int >= 1; got {recurrences!r}.")
    super().__init__(in_shape, transform=transform, rngs=rngs, **kwargs)
    self.recurrences = int(recurrences)
    self.in_size = tuple(in_shape[:2])

  def updates(self, x):
    """The composed warps ``(K + 1, N, 3, 3)`` ``M_0 = I, ..., M_K`` for
    input ``x (N, H, W, C)``."""
    warp = jnp.broadcast_to(jnp.eye(3, dtype=x.dtype), (x.shape[0], 3, 3))
    warps = [warp]
    for _ in range(self.recurrences):
      if len(warps) == 1:
        seen = x  # M_0 = I: sampling with the identity returns x
      else:
        grid = ops.params_to_grid(
          self.transform,
          ops.matrix_to_params(self.transform, warp),
          self.in_size,
          align_corners=self.align_corners,
        )
        seen = self.sample(x, grid)
      update = ops.params_to_matrix(self.transform, self.localisation(seen))
      warp = jnp.einsum(
        "nij,njk->nik", warp, update, precision=jax.lax.Precision.HIGHEST
      )
      warps.append(warp)
    return jnp.stack(warps)

  def transform_params(self, x):
    """The composed warp's flat parameters ``(N, P)`` for input ``x``."""
    return ops.matrix_to_params(self.transform, self.updates(x)[-1])

  def grid(self, x):
    """The composed warp's sampling grid ``(N, H_out, W_out, 2)``."""
    return ops.params_to_grid(
      self.transform,
      self.transform_params(x),
      self.out_size,
      align_corners=self.align_corners,
    )
