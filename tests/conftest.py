"""Shared fixtures and helpers of the test suite."""

import atexit
import importlib.util
import os
import pathlib
import shutil
import tempfile

# One persistent XLA compilation cache for the whole test session, set
# before JAX is imported: the xdist workers and every training subprocess
# inherit it, so the same tiny models compile once instead of once per
# process. (Tests of the cache itself point the runs at their own folder.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="stn_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # removed by the process that made it (the workers inherit the variable)
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Most of the suite's time is XLA compiling small programs that then run
# for milliseconds, so its processes (workers and training subprocesses)
# compile with LLVM's cheap settings: XLA's backend optimisation level 0,
# no expensive LLVM passes (JAX's ``jax_disable_most_optimizations``). The
# HLO passes (fusion, layout) are XLA's usual ones, and every identity the
# tests check holds at either level; compilation takes about 25% less time
# on the 2-core CI machine. JAX_DISABLE_MOST_OPTIMIZATIONS=0 checks the
# optimised code instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# On a GPU, XLA's defaults trade exactness for speed: float32 matrix
# products and convolutions round their inputs (TF32-like, ~1e-3) and
# scatters add in a varying order. Many tests check identities that hold only
# in full float32 and a fixed order (a population equals separate runs, a
# resumed run equals an unbroken one, batches equal one call), so the suite
# asks for both, as PyTorch's own tests turn TF32 off. On a CPU neither
# changes a number. Users' runs keep XLA's defaults (docs/accelerators.md).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
if "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true"
  ).strip()

import data_fixtures  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

# XLA_FLAGS for a test process with four host (CPU) devices. XLA's CPU
# collectives abort a program when one device is 40 s late to an
# all-reduce; on 2 loaded cores (two test workers, a low-priority run) a
# device thread can be, so the abort waits 10 minutes instead.
FOUR_HOST_DEVICES = (
  "--xla_force_host_platform_device_count=4 "
  "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
)
HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(
  not HAS_TORCH, reason="torch is not installed"
)


def pythonpath(*folders) -> str:
  """``folders`` first, then the inherited ``$PYTHONPATH``: a subprocess's
  value that keeps whatever the environment put there (where packages are
  not installed, e.g. the GPU session's wheels on ``PYTHONPATH``)."""
  inherited = os.environ.get("PYTHONPATH", "")
  return os.pathsep.join([*map(str, folders), *filter(None, [inherited])])


def check_gradients_under_jit(fn, args):
  """``fn``'s reverse-mode gradients against finite differences, in
  float64, with ``fn`` under jit (one compilation for every evaluation;
  op by op, each primitive compiles on its own)."""
  import jax
  import jax.numpy as jnp
  from jax.test_util import check_grads

  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in args)
    check_grads(
      jax.jit(fn), args, order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5
    )


def check_jit_vmap_and_unbatched(fn, args):
  """``fn`` on a batch (leading axis of every argument) equals
  ``jax.vmap(fn)`` on it and ``fn`` on its second example alone, in float32
  and under jit."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  args = tuple(jnp.asarray(a, jnp.float32) for a in args)
  batched = jax.jit(fn)(*args)
  np.testing.assert_allclose(
    jax.jit(jax.vmap(fn))(*args), batched, rtol=1e-5, atol=1e-5
  )
  single = jax.jit(fn)(*(a[1] for a in args))
  np.testing.assert_allclose(single, batched[1], rtol=1e-5, atol=1e-5)


def experiment_script(name: str):
  """``experiments/<name>.py`` imported as a module, as when it runs as a
  script (its folder first on ``sys.path``, so its sibling imports work)."""
  import sys

  folder = str(REPO / "experiments")
  sys.path.insert(0, folder)
  try:
    spec = importlib.util.spec_from_file_location(
      f"experiments_{name}", REPO / "experiments" / f"{name}.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
  finally:
    sys.path.remove(folder)
  return script


def _config_module(name):
  from stn_jax import config_args

  return config_args.load_config_module(str(REPO / "configs" / f"{name}.py"))


MNIST = _config_module("mnist")
GTSRB = _config_module("gtsrb")


def tiny(config, tfds_dir, **overrides):
  """``config`` shrunk to a few steps of batch 8 on the tiny datasets."""
  config.tfds_dir = str(tfds_dir)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_steps = 2
  config.log_every = 1
  config.eval_every = 1000
  config.checkpoint_every = 1000
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(autouse=True, scope="session")
def _no_downloads(tmp_path_factory):
  """No test downloads anything unless it asks to (tests/test_downloads.py
  serves files from 127.0.0.1), and the download cache is an empty
  temporary folder, never the user's: in this process and in every
  subprocess a test starts (training CLIs, Ray workers), through
  ``$XDG_CACHE_HOME``. (A user who has downloaded MNIST into
  ~/.cache/stn_jax/data, as ``make train`` does without ../shared, would
  otherwise give a test's deliberately missing dataset its sources.)"""
  from stn_jax.data import download
  from stn_jax.ops import _cpu_kernel

  xdg = tmp_path_factory.mktemp("xdg_cache")
  cache = download.cache_dir_from({"XDG_CACHE_HOME": str(xdg)})
  cache.mkdir(parents=True)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("STN_DATA_OFFLINE", "1")
    patch.delenv("STN_DATA_MIRROR", raising=False)
    # The C++ kernels' builds stay where they are (keyed by their sources
    # and the CPU): only the download cache is the suite's own.
    patch.setenv("STN_JAX_CACHE_DIR", _cpu_kernel._cache_dir())
    patch.setenv("XDG_CACHE_HOME", str(xdg))
    patch.setattr(download, "cache_dir", lambda: cache)
    yield


def write_mnist_config_with_sweep(folder, sweep_source: str):
  """``folder/tiny_config.py``: configs/mnist.py plus ``sweep_source`` (a
  ``def sweep_tiny(add): ...``), with the common.py it imports beside it;
  returns its path."""
  (folder / "common.py").write_text(
    (REPO / "configs" / "common.py").read_text()
  )
  path = folder / "tiny_config.py"
  path.write_text(
    (REPO / "configs" / "mnist.py").read_text() + "\n\n" + sweep_source
  )
  return path


def _cpu_kernel_missing_reason() -> str:
  import jax

  if jax.default_backend() != "cpu":
    return (
      "the C++ kernel serves the CPU backend only; this run's backend is "
      f"{jax.default_backend()}"
    )
  return (
    "the CPU kernel did not build (no C++ compiler, or STN_JAX_CPU_KERNEL=0)"
  )


@pytest.fixture(params=["kernel", "xla"])
def sampler_path(request, monkeypatch):
  """Runs a test with the CPU kernel backward pass and with the XLA one."""
  from stn_jax.ops import _cpu_kernel

  if request.param == "xla":
    monkeypatch.setattr(_cpu_kernel, "enabled", lambda dtype: False)
  elif not _cpu_kernel.enabled("float32"):
    pytest.skip(_cpu_kernel_missing_reason())
  return request.param


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory):
  """Tiny distorted_mnist/{rts,plain} and gtsrb/32 built from synthetic
  sources; returns the TFDS directory."""
  from stn_jax.data import datasets

  root = tmp_path_factory.mktemp("tiny")
  checksums, _ = data_fixtures.make_mnist(
    root / "src", sizes=(("train", 32), ("t10k", 16))
  )
  for name in ("distorted_mnist/rts", "distorted_mnist/plain"):
    datasets.build(
      name, tfds_dir=root / "tfds", source_dir=root / "src", checksums=checksums
    )
  data_fixtures.make_gtsrb_npz(root / "src")
  datasets.build(
    "gtsrb/32", tfds_dir=root / "tfds", source_dir=root / "src", checksums=None
  )
  return root / "tfds"


def pytest_runtest_logreport(report):
  """With ``STN_TEST_FAILURE_LOG=PATH``, each failure's report is appended to
  PATH as it happens (by the process that ran the test), so a suite stopped
  at a time limit (the lent GPU's calls) still says why tests failed."""
  path = os.environ.get("STN_TEST_FAILURE_LOG")
  # An xdist controller's copy of a worker's report carries ``node``.
  if not path or not report.failed or hasattr(report, "node"):
    return
  with open(path, "a") as f:
    f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
