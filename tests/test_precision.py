"""Every matrix product inside the spatial ops asks for full float32.

On GPUs XLA's default float32 matmul rounds its inputs (TF32-like): on an
H200 this put affine_grid_3d 3e-4 away from PyTorch (experiments/results/
accelerator/parity_torch_cuda.md). The CPU ignores the precision setting, so
the CPU suite cannot see that error; it can see the request. This checks,
in the forward and the reverse pass of each op, that every dot_general says
Precision.HIGHEST.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from stn_jax import ops


def _dot_precisions(jaxpr):
  """The precision parameter of every dot_general in ``jaxpr``, nested
  jaxprs (pjit, custom_jvp/vjp, scan, cond) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn.params["precision"])
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _dot_precisions(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _dot_precisions(sub)
  return found


def _is_highest(precision):
  highest = jax.lax.Precision.HIGHEST
  if isinstance(precision, tuple):
    return all(p == highest for p in precision)
  return precision == highest


RNG = np.random.default_rng(0)
THETA_2D = jnp.asarray(RNG.normal(size=(2, 2, 3)), jnp.float32)
THETA_3D = jnp.asarray(RNG.normal(size=(2, 3, 4)), jnp.float32)
HOMOGRAPHY = jnp.asarray(
  np.eye(3) + 0.05 * RNG.normal(size=(2, 3, 3)), jnp.float32
)
CONTROL = jnp.asarray(
  stn_jax.tps_source_points(9) + 0.05 * RNG.normal(size=(2, 9, 2)),
  jnp.float32,
)
SOURCE = jnp.asarray(
  stn_jax.tps_source_points(9) + 0.02 * RNG.normal(size=(9, 2)), jnp.float32
)

CASES = {
  "affine_grid": (lambda t: ops.affine_grid(t, (5, 6)), THETA_2D),
  "affine_grid_3d": (lambda t: ops.affine_grid_3d(t, (3, 4, 5)), THETA_3D),
  "projective_grid": (lambda h: ops.projective_grid(h, (5, 6)), HOMOGRAPHY),
  "tps_grid": (lambda c: ops.tps_grid(c, (5, 6)), CONTROL),
  "tps_grid, learned source points": (
    lambda s: ops.tps_grid(CONTROL, (5, 6), source_points=s),
    SOURCE,
  ),
  **{
    f"params_to_grid {name}": (
      lambda p, name=name: ops.params_to_grid(name, p, (5, 6)),
      jnp.stack([ops.identity_params(name)] * 2) + 0.01,
    )
    for name in ops.TRANSFORMS
  },
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_matrix_product_asks_for_full_float32(name):
  fn, argument = CASES[name]

  def forward_and_reverse(x):
    out, vjp = jax.vjp(fn, x)
    return out, vjp(jnp.ones_like(out))

  # The suite runs with JAX_DEFAULT_MATMUL_PRECISION=highest (conftest.py),
  # which would mark every dot; users' runs have no such default.
  with jax.default_matmul_precision(None):
    jaxpr = jax.make_jaxpr(forward_and_reverse)(argument)
  precisions = _dot_precisions(jaxpr.jaxpr)
  bad = [p for p in precisions if not _is_highest(p)]
  assert not bad, f"{name}: {len(bad)} of {len(precisions)} dots at {bad}"
