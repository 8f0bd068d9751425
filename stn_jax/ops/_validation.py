"""Input checks shared by the spatial ops.

Every check raises ``ValueError`` whose message names the argument, what was
expected and what was given, so that a wrong call fails before tracing.
Arguments that fix a shape or a code path (``out_shape``, ``align_corners``,
``mode``, ``num_control_points``) must be static: a traced value gets a
message saying so and how to keep it static.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value) -> bool:
  """Whether ``value`` is a JAX tracer (its value is unknown at trace time)."""
  return isinstance(value, jax.core.Tracer)


def concrete_value(value) -> np.ndarray | None:
  """``value`` as a NumPy array, or None if it is traced (not concrete)."""
  if is_traced(value):
    return None
  try:
    return np.asarray(value)
  except (jax.errors.ConcretizationTypeError, TypeError):
    return None


def raise_if_traced(name: str, value, expected: str):
  """Raises the "must be static" error if ``value`` is (or holds) a tracer.

  Args:
    name: argument name used in the message.
    value: the value, or a tuple/list of values.
    expected: what a static value is, e.g. ``"a Python bool"``.
  """
  items = value if isinstance(value, (tuple, list)) else (value,)
  if any(is_traced(item) for item in items):
    raise ValueError(
      f"{name} must be static ({expected}), not a traced value: it fixes "
      "a shape or a code path when the function is traced. Pass it as a "
      "static argument (jax.jit(f, static_argnums=...) or "
      "static_argnames=...) or bind it with functools.partial; got "
      f"{value!r}."
    )


def _is_int(value) -> bool:
  """A Python/NumPy int, or a concrete 0-d integer array (not a bool)."""
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return (
    isinstance(value, jax.Array)
    and not is_traced(value)
    and value.shape == ()
    and jnp.issubdtype(value.dtype, jnp.integer)
  )


def check_choice(name: str, value, choices: Sequence[str]) -> str:
  """Returns ``value`` if it is one of ``choices``; raises otherwise."""
  raise_if_traced(name, value, "a Python str")
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
      f"{name} must be one of {', '.join(repr(c) for c in choices)}; "
      f"got {value!r}."
    )
  return value


def check_bool(name: str, value) -> bool:
  """Returns ``value`` as a bool if it is a Python, NumPy or concrete JAX
  bool (a 0-d bool array); raises otherwise, saying so if it is traced."""
  raise_if_traced(name, value, "a Python bool")
  if (
    isinstance(value, jax.Array)
    and value.shape == ()
    and value.dtype == jnp.bool_
  ):
    return bool(value)
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(
      f"{name} must be a bool; got {value!r} of type {type(value).__name__}."
    )
  return bool(value)


def check_out_shape(name: str, value) -> tuple[int, int]:
  """Returns ``value`` as a ``(height, width)`` tuple of positive ints.

  Python and NumPy ints are accepted, and concrete (untraced) JAX integer
  scalars; a traced value raises the "must be static" error, and a zero
  size (an empty grid) the usual one.
  """
  raise_if_traced(name, value, "a (height, width) pair of Python ints")
  try:
    shape = tuple(value)
  except TypeError:
    shape = None
  if shape is not None:
    raise_if_traced(name, shape, "a (height, width) pair of Python ints")
  if (
    shape is None
    or len(shape) != 2
    or not all(_is_int(s) and s > 0 for s in shape)
  ):
    raise ValueError(
      f"{name} must be a (height, width) pair of positive ints (a zero "
      f"size would give an empty grid); got {value!r}."
    )
  return int(shape[0]), int(shape[1])


def check_not_empty(name: str, array, description: str):
  """Raises unless every dimension of ``array`` is positive (N included)."""
  if 0 in tuple(array.shape):
    raise ValueError(
      f"{name} must not be empty: shape {description} with every size > 0 "
      f"(the batch N included); got shape {tuple(array.shape)}."
    )


# Flattened pixel indices are int32: at most this many pixels per call.
MAX_INDEXED_PIXELS = 2**31 - 1


def check_index_range(name: str, shape, description: str) -> None:
  """Raises unless the pixels of ``shape`` (every axis but the last, the
  channels) can be indexed with int32, the samplers' flattened indices.
  A symbolic dimension (``jax.export`` shape polymorphism, e.g. the batch
  size) is not known until the call: only the constant ones are checked."""
  constant = [d for d in tuple(shape)[:-1] if isinstance(d, (int, np.integer))]
  pixels = int(np.prod(constant, dtype=np.int64))
  if pixels > MAX_INDEXED_PIXELS:
    raise ValueError(
      f"{name} has {pixels:,} pixels in shape {description} = "
      f"{tuple(shape)}; the samplers index pixels with 32-bit integers, at "
      f"most {MAX_INDEXED_PIXELS:,} per call. Split the batch."
    )


def as_float_array(name: str, value):
  """``value`` as an array (NumPy if it has no dtype yet); raises unless
  its dtype is floating."""
  if not hasattr(value, "shape") or not hasattr(value, "dtype"):
    value = np.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.floating):
    raise ValueError(
      f"{name} must have a floating dtype (float32, bfloat16, "
      f"float16 or float64); got dtype {value.dtype}."
    )
  return value


def check_float_array(
  name: str, value, trailing_shape: tuple[int | None, ...], description: str
) -> tuple[jnp.ndarray, bool]:
  """Checks a floating array of shape ``(N, *trailing)`` or ``trailing``.

  Args:
    name: argument name used in error messages.
    value: the array (anything ``jnp.asarray`` takes).
    trailing_shape: the unbatched shape; ``None`` entries match any size.
    description: a readable form of the expected shape, e.g. ``"(N, 2, 3)"``.

  Returns:
    ``(array, batched)``: the array with a leading batch axis (added if the
    input was unbatched) and whether the input already had one.
  """
  value = as_float_array(name, value)
  rank = len(trailing_shape)
  if value.ndim not in (rank, rank + 1):
    raise ValueError(
      f"{name} must have shape {description} (or the same "
      f"without the batch axis); got shape {tuple(value.shape)}."
    )
  batched = value.ndim == rank + 1
  tail = tuple(value.shape[1:] if batched else value.shape)
  for got, want in zip(tail, trailing_shape):
    if want is not None and got != want:
      raise ValueError(
        f"{name} must have shape {description} (or the same "
        f"without the batch axis); got shape "
        f"{tuple(value.shape)}."
      )
  array = jnp.asarray(value)
  return (array if batched else array[None]), batched


def compute_dtype(*dtypes) -> jnp.dtype:
  """The dtype used for arithmetic: float32 for half types, else the widest."""
  widest = jnp.result_type(*dtypes)
  if jnp.finfo(widest).bits < 32:
    return jnp.dtype(jnp.float32)
  return jnp.dtype(widest)


def check_fill_value(name: str, value, channels: int) -> jnp.ndarray:
  """Returns a padding fill value of shape ``()`` or ``(channels,)``.

  Python numbers and real arrays are accepted; traced arrays too (only their
  shape and dtype are checked).
  """
  if isinstance(value, (bool, np.bool_)):
    raise ValueError(
      f"{name} must be a number or a float array of shape () "
      f"or ({channels},); got {value!r}."
    )
  if isinstance(value, (int, float, np.integer, np.floating)):
    return jnp.asarray(float(value))
  if not hasattr(value, "shape") or not hasattr(value, "dtype"):
    try:
      value = np.asarray(value)
    except (TypeError, ValueError):
      raise ValueError(
        f"{name} must be a number or a float array of shape () "
        f"or ({channels},); got {value!r}."
      ) from None
  if not (
    jnp.issubdtype(value.dtype, jnp.floating)
    or jnp.issubdtype(value.dtype, jnp.integer)
  ):
    raise ValueError(
      f"{name} must be a number or a float array of shape () "
      f"or ({channels},); got dtype {value.dtype}."
    )
  if tuple(value.shape) not in ((), (channels,)):
    raise ValueError(
      f"{name} must be a number or a float array of shape () "
      f"or ({channels},) (one value per channel); got shape "
      f"{tuple(value.shape)}."
    )
  return jnp.asarray(value)


def check_same_batching(
  names: tuple[str, str],
  batched: tuple[bool, bool],
  shapes: tuple[tuple[int, ...], tuple[int, ...]],
):
  """Raises unless two checked arrays are both batched (same N) or both not.

  ``shapes`` are the shapes with the batch axis (as returned by
  :func:`check_float_array`).
  """
  (a, b), (shape_a, shape_b) = names, shapes
  if batched[0] != batched[1]:
    given_a = shape_a if batched[0] else shape_a[1:]
    given_b = shape_b if batched[1] else shape_b[1:]
    raise ValueError(
      f"{a} and {b} must both have a batch axis or both lack "
      f"one; got {a} shape {tuple(given_a)} and {b} shape "
      f"{tuple(given_b)}."
    )
  if shape_a[0] != shape_b[0]:
    raise ValueError(
      f"{b} must have the batch size of {a}; got {a} shape "
      f"{tuple(shape_a)} and {b} shape {tuple(shape_b)}."
    )


def check_points(
  name: str, value, description: str = "(N, K, 2)", min_points: int = 1
) -> tuple[jnp.ndarray, bool]:
  """Checks a float point set ``(N, K, 2)`` or ``(K, 2)`` with K >= min."""
  points, batched = check_float_array(name, value, (None, 2), description)
  if points.shape[1] < min_points:
    raise ValueError(
      f"{name} must hold at least {min_points} points, shape "
      f"{description} with K >= {min_points}; got shape "
      f"{tuple(np.shape(value))}."
    )
  return points, batched


# Relative tolerance of the degenerate point checks: points closer than this
# times the RMS spread of the set coincide, and a set whose spread across its
# main direction is below this times the spread along it lies on a line.
DEGENERATE_RTOL = 1e-6


def _point(p) -> str:
  return f"({p[0]:.6g}, {p[1]:.6g})"


def check_tps_points(name: str, points, *, allow_duplicates: bool = False):
  """Raises unless concrete ``(K, 2)`` points can anchor a thin plate spline.

  The thin plate spline system is singular when two points coincide or all
  points lie on one line (its affine part is then undetermined): the solve
  gives ``nan`` or meaningless values. Both are checked with the relative
  tolerance ``DEGENERATE_RTOL``. O(K^2) time and memory, like the system.

  Args:
    name: argument name used in the message (e.g. ``"src[3]"``).
    points: ``(K, 2)`` NumPy array (concrete values).
    allow_duplicates: skip the coincidence check (a regularised fit, whose
      system stays invertible with repeated points).
  """
  points = np.asarray(points, np.float64)
  if not np.isfinite(points).all():
    raise ValueError(
      f"{name} must be finite; got {int((~np.isfinite(points)).sum())} "
      "nan/inf coordinates."
    )
  centred = points - points.mean(0)
  spread = np.sqrt((centred**2).sum(-1).mean())
  tol = DEGENERATE_RTOL * spread
  if not allow_duplicates:
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    squared[np.diag_indices(len(points))] = np.inf
    i, j = np.unravel_index(np.argmin(squared), squared.shape)
    if np.sqrt(squared[i, j]) <= tol:
      i, j = sorted((int(i), int(j)))
      raise ValueError(
        f"{name} must be distinct points (the thin plate spline system is "
        f"singular otherwise); got points {i} and {j} at distance "
        f"{np.sqrt(squared[i, j]):.3g} (<= {DEGENERATE_RTOL:g} x the RMS "
        f"spread {spread:.3g}): {_point(points[i])} and {_point(points[j])}."
      )
  singular = np.linalg.svd(centred, compute_uv=False)
  if len(singular) < 2 or singular[1] <= DEGENERATE_RTOL * singular[0]:
    across = singular[1] if len(singular) > 1 else 0.0
    raise ValueError(
      f"{name} must not all lie on one line (the thin plate spline system "
      f"is singular otherwise); got {len(points)} points whose spread "
      f"across their main direction is {across:.3g}, along it "
      f"{singular[0]:.3g}."
    )
