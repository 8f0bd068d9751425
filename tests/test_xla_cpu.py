"""The XLA CPU kernel choice (stn_jax.xla_cpu): per compiled step, the
same values under both libraries, 'auto' by device count, old configs."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import MNIST
from jax import lax

from stn_jax import xla_cpu

on_cpu = pytest.mark.skipif(
  jax.default_backend() != "cpu", reason="the choice is the CPU backend's"
)


def _ynn_convolutions(compiled_text: str) -> int:
  """YNNPACK fusions whose op is a convolution in a compiled module."""
  return sum(
    "__ynn_fusion" in line and "conv_general_dilated" in line
    for line in compiled_text.splitlines()
  )


@on_cpu
def test_the_library_is_set_per_compiled_step():
  """'eigen' compiles the one jitted computation that asks without
  YNNPACK fusions (YNNPACK still compiles the others), and both
  libraries compute the same convolution and gradients."""
  rng = np.random.default_rng(31)
  x = jnp.asarray(rng.normal(size=(8, 10, 10, 32)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(7, 7, 32, 32)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(8, 10, 10, 32)), jnp.float32)

  def loss(x, kernel):
    y = lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(y * g)

  step = jax.value_and_grad(loss, argnums=(0, 1))
  default = jax.jit(step).lower(x, kernel).compile()
  if not _ynn_convolutions(default.as_text()):
    pytest.skip("this jaxlib compiles no convolution with YNNPACK")
  options = xla_cpu.compiler_options("eigen")
  eigen = jax.jit(step, compiler_options=options).lower(x, kernel).compile()
  assert "__ynn_fusion" not in eigen.as_text()
  assert xla_cpu.compiler_options("ynnpack") is None
  assert xla_cpu.compiler_options("auto") == options  # one device here
  (value, grads), (value_e, grads_e) = default(x, kernel), eigen(x, kernel)
  np.testing.assert_allclose(value_e, value, rtol=1e-5)
  for ours, theirs in zip(grads_e, grads):  # float rounding of their scale
    scale = float(jnp.max(jnp.abs(theirs)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("library", ["mkl", None, "Eigen"])
def test_a_bad_library_is_refused_with_its_name(library):
  with pytest.raises(ValueError, match="xla_cpu_library must be one of"):
    xla_cpu.compiler_options(library)
  with pytest.raises(ValueError, match=repr(library)):
    xla_cpu.resolve_library(library)


@on_cpu
def test_a_config_gives_its_library_and_an_old_one_ynnpack():
  config = MNIST.get_config("model=cnn,small=true")
  assert xla_cpu.config_library(config) == "auto"
  assert xla_cpu.step_library(config) == "eigen"  # one CPU device
  assert xla_cpu.step_compiler_options(config) == xla_cpu.compiler_options(
    "eigen"
  )
  config.xla_cpu_library = "ynnpack"
  assert xla_cpu.step_library(config) == "ynnpack"
  assert xla_cpu.step_compiler_options(config) is None
  # A config written before the key existed ran with jaxlib's default.
  old = ml_collections.ConfigDict(config.to_dict())
  del old["xla_cpu_library"]
  assert xla_cpu.config_library(old) == "ynnpack"
  assert xla_cpu.step_library(old) == "ynnpack"
  assert xla_cpu.step_compiler_options(old) is None


@on_cpu
def test_auto_is_ynnpack_with_several_host_devices():
  """Eigen's kernels once hung a 4-device all-reduce, so 'auto' keeps
  XLA's default when the process has several host devices."""
  code = (
    "import jax; from stn_jax import xla_cpu; "
    "print(jax.device_count(), xla_cpu.resolve_library('auto'), "
    "xla_cpu.compiler_options('auto'), xla_cpu.resolve_library('eigen'))"
  )
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  ).stdout.split()
  assert out == ["4", "ynnpack", "None", "eigen"]
