"""Shared test helpers."""

import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH,
                                    reason="torch is not installed")


@pytest.fixture(params=["kernel", "xla"])
def sampler_path(request, monkeypatch):
  """Runs a test with the CPU kernel backward pass and with the XLA one."""
  from stn_jax.ops import _cpu_kernel
  if request.param == "xla":
    monkeypatch.setattr(_cpu_kernel, "enabled", lambda dtype: False)
  elif not _cpu_kernel.enabled("float32"):
    pytest.skip("the CPU kernel is not available (no C++ compiler?)")
  return request.param
