"""The Pallas forward kernel of grid_sample (``_pallas_sampler.py``).

On the CPU the kernel runs in Pallas interpret mode: the same kernel body,
every load and store emulated by XLA ops, so these tests check its index
arithmetic, masks, tap order and wiring without a GPU. Shapes are tiny:
each new option set compiles a new interpreted kernel.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_torch
from jax.test_util import check_grads

import stn_jax
from stn_jax.ops import _pallas_sampler, _sampler_math

COMBINATIONS = list(
  itertools.product(stn_jax.MODES, stn_jax.PADDING_MODES, [False, True])
)


def inputs(n=2, h=5, w=7, c=3, ho=4, wo=6, seed=0):
  """Image and grid with points inside, on and far outside the edges,
  and undefined (nan, inf) points."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(n, h, w, c)).astype(np.float32)
  grid = rng.uniform(-1.4, 1.4, size=(n, ho, wo, 2)).astype(np.float32)
  grid[0, 0, 0] = (-1.0, 1.0)  # the corners exactly
  grid[0, 0, 1] = (1.0, -1.0)
  grid[0, 0, 2] = (7.3, -9.6)  # far out: reflection folds several times
  grid[0, 0, 3] = (np.nan, 0.2)
  grid[0, 0, 4] = (0.1, np.inf)
  grid[-1, -1, -1] = (-np.inf, np.nan)
  return image, grid


def sample(sampler, image, grid, **options):
  with _pallas_sampler.use_sampler(sampler):
    return stn_jax.grid_sample(image, grid, **options)


def torch_sample(image, grid, mode, padding_mode, align_corners):
  torch = pytest.importorskip("torch")
  out = torch.nn.functional.grid_sample(
    torch.tensor(image.transpose(0, 3, 1, 2).copy()),
    torch.tensor(grid),
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  return out.numpy().transpose(0, 2, 3, 1)


@requires_torch
@pytest.mark.parametrize("mode,padding_mode,align_corners", COMBINATIONS)
def test_values_equal_xla_and_torch(mode, padding_mode, align_corners):
  image, grid = inputs()
  options = dict(
    mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  got = np.asarray(sample("pallas", image, grid, **options))
  xla = np.asarray(sample("xla", image, grid, **options))
  # The same taps summed in the same order; XLA may contract the cubic
  # weights' polynomials differently (1.5e-6 seen).
  atol = 1e-5 if mode == "bicubic" else 1e-6
  np.testing.assert_allclose(got, xla, atol=atol, rtol=0)
  defined = np.isfinite(grid).all(-1)
  assert not got[~defined].any()  # undefined points read 0
  # PyTorch's value at an undefined point is itself undefined.
  want = torch_sample(image, np.where(defined[..., None], grid, 0), **options)
  np.testing.assert_allclose(got[defined], want[defined], atol=1e-5, rtol=0)


def test_blocks_with_a_tail_and_channels_split_over_programs():
  # 7 * 5 = 35 points in blocks of 8 (the last one partly past the end),
  # 70 channels in two programs of 64 lanes (the second mostly repeats).
  image, grid = inputs(n=2, h=4, w=3, c=70, ho=7, wo=5, seed=1)
  points = jnp.asarray(grid.reshape(2, -1, 2))
  got = _pallas_sampler.forward(
    jnp.asarray(image), points, "bilinear", "border", False, block=8
  )
  want = _sampler_math.forward(
    jnp.asarray(image), points, "bilinear", "border", False
  )
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_fill_padding_and_one_channel():
  image, grid = inputs(c=1, seed=2)
  options = dict(padding_mode="fill", fill_value=0.5)
  got = sample("pallas", image, grid, **options)
  want = sample("xla", image, grid, **options)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
  "mode,padding_mode,align_corners",
  [
    ("bilinear", "zeros", False),
    ("bilinear", "reflection", True),
    ("bicubic", "border", False),
    ("nearest", "zeros", True),
  ],
)
def test_gradients_equal_xla(mode, padding_mode, align_corners):
  image, grid = inputs(seed=3)
  cotangent = np.random.default_rng(4).normal(size=(2, 4, 6, 3))
  options = dict(
    mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )

  def loss(image, grid):
    return jnp.vdot(stn_jax.grid_sample(image, grid, **options), cotangent)

  grads = {}
  for sampler in ("pallas", "xla"):
    with _pallas_sampler.use_sampler(sampler):
      grads[sampler] = jax.grad(loss, argnums=(0, 1))(image, grid)
  for got, want in zip(grads["pallas"], grads["xla"]):
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  assert np.abs(grads["pallas"][0]).max() > 0.1  # not trivially zero
  if mode != "nearest":
    assert np.abs(grads["pallas"][1]).max() > 0.1


def test_gradients_match_finite_differences():
  # Float64, grid points off the pixel lattice (no kink within eps); the
  # finite differences evaluate the Pallas kernel itself.
  rng = np.random.default_rng(5)
  with jax.enable_x64(True), _pallas_sampler.use_sampler("pallas"):
    image = jnp.asarray(rng.normal(size=(1, 4, 5, 2)))
    pixel = rng.integers(-1, 5, size=(1, 3, 3, 2)) + rng.uniform(
      0.2, 0.8, size=(1, 3, 3, 2)
    )
    grid = jnp.asarray((2 * pixel + 1) / np.array([5, 4]) - 1)  # align False
    fn = functools.partial(
      stn_jax.grid_sample, mode="bilinear", padding_mode="reflection"
    )
    assert "pallas_call" in str(jax.make_jaxpr(fn)(image, grid))
    check_grads(fn, (image, grid), order=1, modes=("rev",), eps=1e-6, atol=1e-6)


def test_jit_vmap_and_unbatched_inputs():
  image, grid = inputs(n=3, seed=6)
  image, grid = jnp.asarray(image), jnp.asarray(grid)
  options = dict(mode="bilinear", padding_mode="zeros")
  with _pallas_sampler.use_sampler("pallas"):
    fn = jax.jit(functools.partial(stn_jax.grid_sample, **options))
    jitted = fn(image, grid)
    unbatched = jax.vmap(fn)(image, grid)  # each call sees (H, W, C)
    shared = jax.vmap(fn, in_axes=(None, 0))(image[0], grid)
    nested = jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None))(
      image, grid
    )
    grad = jax.vmap(jax.grad(lambda i, g: fn(i, g).sum(), argnums=1))(
      image, grid
    )
    assert "pallas_call" in str(jax.make_jaxpr(fn)(image, grid))
  with _pallas_sampler.use_sampler("xla"):
    want = stn_jax.grid_sample(image, grid, **options)
    want_shared = stn_jax.grid_sample(
      jnp.broadcast_to(image[0], image.shape), grid, **options
    )
    want_grad = jax.grad(
      lambda g: stn_jax.grid_sample(image, g, **options).sum()
    )(grid)
  for got in (jitted, unbatched):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  np.testing.assert_allclose(shared, want_shared, atol=1e-6, rtol=0)
  assert nested.shape == (3, 3, 4, 6, 3)
  for i, j in itertools.product(range(3), range(3)):
    np.testing.assert_allclose(
      nested[i, j],
      stn_jax.grid_sample(image[i], grid[j], **options),
      atol=1e-6,
      rtol=0,
    )
  np.testing.assert_allclose(grad, want_grad, atol=1e-6, rtol=0)


def test_selection(monkeypatch):
  image, grid = inputs(n=1)

  def jaxpr():  # a new function each time: jit's trace cache would keep
    # the first trace's choice (the switch is read when tracing)
    return str(jax.make_jaxpr(lambda *a: stn_jax.grid_sample(*a))(image, grid))

  monkeypatch.delenv(_pallas_sampler.ENV_VAR, raising=False)
  assert _pallas_sampler.selected() == "xla"
  assert "pallas_call" not in jaxpr()
  monkeypatch.setenv(_pallas_sampler.ENV_VAR, "pallas")
  assert _pallas_sampler.selected() == "pallas"
  assert "pallas_call" in jaxpr()
  with _pallas_sampler.use_sampler("xla"):  # overrides the variable
    assert "pallas_call" not in jaxpr()
  monkeypatch.setenv(_pallas_sampler.ENV_VAR, "triton")
  with pytest.raises(ValueError, match="STN_JAX_SAMPLER"):
    stn_jax.grid_sample(image, grid)
  with pytest.raises(ValueError, match="use_sampler"):
    _pallas_sampler.use_sampler("cuda").__enter__()


@pytest.mark.parametrize(
  "channels,mode,padding_mode",
  [(3, "bilinear", "zeros"), (32, "nearest", "reflection")],
)
def test_lowers_to_triton_for_cuda(channels, mode, padding_mode):
  # Pallas' Triton lowering runs here (no GPU): every op of the kernel has
  # a Triton rule and every block is a power of two. PTX is not built.
  text = _pallas_sampler.lower_for_cuda(
    (2, 6, 5, channels), (2, 40, 2), mode, padding_mode, True
  )
  assert "__gpu$xla.gpu.triton" in text
  assert "stn_grid_sample_forward" in text


# Volumes: every mode, padding mode and align_corners value appears (not
# every combination: each one compiles a kernel).
VOLUME_OPTIONS = [
  ("bilinear", "zeros", False),
  ("bilinear", "border", True),
  ("bilinear", "reflection", True),
  ("nearest", "reflection", False),
]


@requires_torch
@pytest.mark.parametrize("mode,padding_mode,align_corners", VOLUME_OPTIONS)
def test_volumes_equal_xla_and_torch(mode, padding_mode, align_corners):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(7)
  image = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
  grid = rng.uniform(-1.4, 1.4, size=(2, 2, 3, 4, 3)).astype(np.float32)
  grid[0, 0, 0, 0] = (np.nan, 0.1, 0.2)
  grid[1, 1, 1, 1] = (9.3, -7.7, 3.3)
  cotangent = rng.normal(size=(2, 2, 3, 4, 3)).astype(np.float32)
  options = dict(
    mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )

  def loss(image, grid):
    return jnp.vdot(stn_jax.grid_sample_3d(image, grid, **options), cotangent)

  results = {}
  for sampler in ("pallas", "xla"):
    with _pallas_sampler.use_sampler(sampler):
      out = stn_jax.grid_sample_3d(image, grid, **options)
      results[sampler] = (out, *jax.grad(loss, argnums=(0, 1))(image, grid))
  for got, want in zip(results["pallas"], results["xla"]):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  got = np.asarray(results["pallas"][0])
  defined = np.isfinite(grid).all(-1)
  assert not got[~defined].any()
  want = torch.nn.functional.grid_sample(
    torch.tensor(image.transpose(0, 4, 1, 2, 3).copy()),
    torch.tensor(np.where(defined[..., None], grid, 0)),
    **options,
  )
  want = want.numpy().transpose(0, 2, 3, 4, 1)
  np.testing.assert_allclose(got[defined], want[defined], atol=1e-5, rtol=0)


def test_volume_kernel_lowers_to_triton_and_is_used():
  text = _pallas_sampler.lower_for_cuda(
    (2, 3, 4, 5, 3), (2, 24, 3), "bilinear", "reflection", False
  )
  assert "__gpu$xla.gpu.triton" in text
  image, grid = np.ones((1, 2, 2, 2, 1)), np.zeros((1, 1, 1, 1, 3))
  with _pallas_sampler.use_sampler("pallas"):
    jaxpr = jax.make_jaxpr(lambda *a: stn_jax.grid_sample_3d(*a))(image, grid)
  assert "pallas_call" in str(jaxpr)
