"""Max pooling over non-overlapping windows, with a fast exact gradient.

Every pooling layer of the paper networks is a ``k x k`` max pool with
stride ``k`` (no overlap, no padding). ``nnx.max_pool`` computes it with
XLA's ``reduce_window``, whose reverse mode is ``select_and_scatter``: on
XLA's CPU backend that gradient takes 50-100x the forward's time (on a
2-core AMD EPYC: 94 ms against 0.9 ms for a ``(256, 21, 21, 20)`` map) and
was the largest single cost of the RTS ST-CNN's training step
(``experiments/results/cpu_profile.md``).

:func:`max_pool` gives the same numbers: the forward pass is a plain
maximum over each window, and the gradient goes, as ``select_and_scatter``
sends it, to the first maximum of each window in raster order (row by row,
left to right), with every other position zero. For finite inputs the
values and gradients are bitwise equal to ``nnx.max_pool``'s (tested); the
derivative is a custom JVP whose tangent is the first maximum's, linear in
the tangent, so forward mode works and reverse mode is its transpose: a
broadcast and a select that XLA fuses into one pass. Windows holding a
``nan`` may route the gradient differently.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Max pooling of ``x (N, H, W, C)`` over ``window x window`` blocks
  with stride ``window`` and no padding (rows and columns beyond the last
  whole block are dropped, as with ``'VALID'`` padding).

  Returns ``(N, H // window, W // window, C)``, equal to
  ``nnx.max_pool(x, (window, window), strides=(window, window))``, gradient
  included (see the module docstring).
  """
  if not isinstance(window, int) or window < 1:
    raise ValueError(f"window must be a positive int; got {window!r}.")
  if x.ndim != 4:
    raise ValueError(f"x must be (N, H, W, C); got shape {x.shape}.")
  if window == 1:
    return x
  return _max_pool(x, window)


def _blocks(x, window):
  n, h, w, c = x.shape
  rows, cols = h // window, w // window
  x = x[:, : rows * window, : cols * window]
  return x.reshape(n, rows, window, cols, window, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool(x, window):
  # reduce_window: XLA's CPU forward is fastest this way (a reshape and
  # max copies the map first when the size is not a multiple of window).
  return jax.lax.reduce_window(
    x,
    -jnp.inf,
    jax.lax.max,
    (1, window, window, 1),
    (1, window, window, 1),
    "VALID",
  )


@_max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
  """The tangent of each window's first maximum (raster order). It is
  linear in the tangent with a mask fixed by the primal, so reverse mode
  transposes it into a broadcast and a select, which XLA fuses."""
  (x,), (tangent,) = primals, tangents
  pooled = _max_pool(x, window)
  blocks = _blocks(x, window)
  first = jnp.full(pooled.shape, window * window - 1, jnp.int32)
  for position in reversed(range(window * window - 1)):
    a, b = divmod(position, window)
    first = jnp.where(blocks[:, :, a, :, b, :] == pooled, position, first)
  positions = jnp.arange(window * window, dtype=jnp.int32).reshape(
    1, 1, window, 1, window, 1
  )
  chosen = jnp.where(
    positions == first[:, :, None, :, None, :],
    _blocks(tangent, window),
    jnp.zeros((), tangent.dtype),
  )
  return pooled, chosen.sum(axis=(2, 4))
