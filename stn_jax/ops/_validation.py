"""Input checks shared by the spatial ops.

Every check raises ``ValueError`` whose message names the argument, what was
expected and what was given, so that a wrong call fails before tracing.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def check_choice(name: str, value, choices: Sequence[str]) -> str:
  """Returns ``value`` if it is one of ``choices``; raises otherwise."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
      f"{name} must be one of {', '.join(repr(c) for c in choices)}; "
      f"got {value!r}."
    )
  return value


def check_bool(name: str, value) -> bool:
  """Returns ``value`` if it is a Python or NumPy bool; raises otherwise."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(
      f"{name} must be a bool; got {value!r} of type {type(value).__name__}."
    )
  return bool(value)


def check_out_shape(name: str, value) -> tuple[int, int]:
  """Returns ``value`` as a ``(height, width)`` tuple of positive ints."""
  try:
    shape = tuple(value)
  except TypeError:
    shape = None
  if (
    shape is None
    or len(shape) != 2
    or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
      for s in shape
    )
  ):
    raise ValueError(
      f"{name} must be a (height, width) pair of positive ints; got {value!r}."
    )
  return int(shape[0]), int(shape[1])


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
  if not hasattr(value, "shape") or not hasattr(value, "dtype"):
    value = np.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.floating):
    raise ValueError(
      f"{name} must have a floating dtype (float32, bfloat16, "
      f"float16 or float64); got dtype {value.dtype}."
    )
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
