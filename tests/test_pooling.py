"""stn_jax.models.pooling.max_pool against flax's reduce_window pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from stn_jax.models.pooling import max_pool


def reference(x, window):
  return nnx.max_pool(x, (window, window), strides=(window, window))


def tied(shape, seed=0):
  """Small integers: many windows hold their maximum more than once."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(-2, 3, shape), jnp.float32)


@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (21, 21)])
def test_values_and_gradients_bitwise_equal_to_flax(window, size):
  x = tied((3, *size, 4), seed=window)
  cotangent = jnp.asarray(
    np.random.default_rng(1).normal(size=reference(x, window).shape),
    jnp.float32,
  )
  ours, ours_vjp = jax.vjp(lambda x: max_pool(x, window), x)
  theirs, theirs_vjp = jax.vjp(lambda x: reference(x, window), x)
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_array_equal(
    ours_vjp(cotangent)[0], theirs_vjp(cotangent)[0]
  )


def test_gradient_goes_to_the_first_maximum_in_raster_order():
  # One 2x2 window with its maximum at (0, 1) and (1, 0): (0, 1) takes it.
  x = jnp.asarray([[0.0, 5.0], [5.0, 1.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: max_pool(x, 2).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0, 1], [0, 0]])


def test_gradient_matches_finite_differences():
  # Distinct values, so the maximum does not move under a small step.
  x = jnp.asarray(
    np.random.default_rng(2).permutation(2 * 6 * 6 * 3).reshape(2, 6, 6, 3),
    jnp.float64 if jax.config.jax_enable_x64 else jnp.float32,
  )
  check_grads(lambda x: max_pool(x, 2), (x,), order=1, modes=("rev",), eps=0.1)


def test_jit_and_vmap():
  x = tied((2, 3, 6, 6, 2))
  expected = jnp.stack([reference(m, 2) for m in x])
  np.testing.assert_array_equal(
    jax.jit(jax.vmap(lambda m: max_pool(m, 2)))(x), expected
  )
  grads = jax.vmap(jax.grad(lambda m: max_pool(m, 2).sum()))(x)
  expected_grads = jnp.stack(
    [jax.grad(lambda m: reference(m, 2).sum())(m) for m in x]
  )
  np.testing.assert_array_equal(grads, expected_grads)


def test_bad_input_is_refused_with_the_argument_named():
  with pytest.raises(ValueError, match="window must be a positive int; got 0"):
    max_pool(jnp.zeros((1, 4, 4, 1)), 0)
  with pytest.raises(ValueError, match=r"x must be \(N, H, W, C\)"):
    max_pool(jnp.zeros((4, 4, 1)), 2)


def test_forward_mode_equals_flax_and_reverse_mode():
  # Distinct values: flax's and ours pick the same maximum.
  x = jnp.asarray(
    np.random.default_rng(3).permutation(2 * 6 * 6 * 2).reshape(2, 6, 6, 2),
    jnp.float32,
  )
  t = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)
  _, ours = jax.jvp(lambda x: max_pool(x, 2), (x,), (t,))
  _, theirs = jax.jvp(lambda x: reference(x, 2), (x,), (t,))
  np.testing.assert_array_equal(ours, theirs)
  f = lambda x: max_pool(x, 2).sum(axis=(1, 2))  # noqa: E731
  np.testing.assert_array_equal(jax.jacfwd(f)(x), jax.jacrev(f)(x))
