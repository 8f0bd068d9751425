"""grid_sample: exactness, gradients, robustness, dtypes, jit and vmap."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import requires_torch
from jax.test_util import check_grads

import stn_jax

COMBINATIONS = list(
  itertools.product(stn_jax.MODES, stn_jax.PADDING_MODES, [False, True])
)
# (N, H, W, C, H_out, W_out): odd and even sizes, output != input size,
# C in {1, 3, 32}.
SHAPES = [(2, 5, 6, 1, 4, 7), (1, 7, 8, 3, 9, 9), (2, 4, 5, 32, 6, 3)]


def random_inputs(shape, seed=0, reach=1.5):
  n, h, w, c, ho, wo = shape
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, size=(n, h, w, c)).astype(np.float32)
  grid = rng.uniform(-reach, reach, size=(n, ho, wo, 2)).astype(np.float32)
  return image, grid


def sampler(mode, padding_mode, align_corners):
  return jax.jit(
    functools.partial(
      stn_jax.grid_sample,
      mode=mode,
      padding_mode=padding_mode,
      align_corners=align_corners,
    )
  )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode,padding_mode,align_corners", COMBINATIONS)
def test_matches_numpy_reference(shape, mode, padding_mode, align_corners):
  image, grid = random_inputs(shape)
  got = sampler(mode, padding_mode, align_corners)(image, grid)
  want = reference.grid_sample(image, grid, mode, padding_mode, align_corners)
  assert got.dtype == jnp.float32
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def torch_grid_sample(
  image, grid, cotangent, mode, padding_mode, align_corners
):
  import torch

  timage = torch.tensor(image.transpose(0, 3, 1, 2).copy(), requires_grad=True)
  tgrid = torch.tensor(grid, requires_grad=True)
  out = torch.nn.functional.grid_sample(
    timage,
    tgrid,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  out.backward(torch.tensor(cotangent.transpose(0, 3, 1, 2).copy()))
  return (
    out.detach().numpy().transpose(0, 2, 3, 1),
    timage.grad.numpy().transpose(0, 2, 3, 1),
    tgrid.grad.numpy(),
  )


@requires_torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode,padding_mode,align_corners", COMBINATIONS)
def test_matches_torch_values_and_gradients(
  shape, mode, padding_mode, align_corners, sampler_path
):
  image, grid = random_inputs(shape, seed=1)
  n, _, _, c, ho, wo = shape
  cotangent = (
    np.random.default_rng(2).normal(size=(n, ho, wo, c)).astype(np.float32)
  )
  want_out, want_image_grad, want_grid_grad = torch_grid_sample(
    image, grid, cotangent, mode, padding_mode, align_corners
  )
  fn = functools.partial(
    stn_jax.grid_sample,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  out, vjp = jax.vjp(fn, jnp.asarray(image), jnp.asarray(grid))
  image_grad, grid_grad = jax.jit(vjp)(jnp.asarray(cotangent))
  np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=0)
  np.testing.assert_allclose(image_grad, want_image_grad, atol=1e-4, rtol=0)
  np.testing.assert_allclose(grid_grad, want_grid_grad, atol=1e-4, rtol=0)


@requires_torch
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_matches_torch_on_an_identity_grid(
  padding_mode, align_corners, sampler_path
):
  # Grid points exactly on pixel centres and borders: where the clamp and
  # reflection derivatives have their edge cases.
  import torch

  image = np.random.default_rng(0).normal(size=(1, 5, 4, 2)).astype(np.float32)
  theta = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
  grid = np.asarray(
    stn_jax.affine_grid(theta, (5, 4), align_corners=align_corners)
  )
  tgrid = torch.nn.functional.affine_grid(
    torch.tensor(theta), (1, 2, 5, 4), align_corners=align_corners
  ).numpy()
  np.testing.assert_allclose(grid, tgrid, atol=1e-6, rtol=0)
  cotangent = np.ones((1, 5, 4, 2), np.float32)
  for mode in stn_jax.MODES:
    want = torch_grid_sample(
      image, grid, cotangent, mode, padding_mode, align_corners
    )
    fn = functools.partial(
      stn_jax.grid_sample,
      mode=mode,
      padding_mode=padding_mode,
      align_corners=align_corners,
    )
    out, vjp = jax.vjp(fn, jnp.asarray(image), jnp.asarray(grid))
    got = (out, *vjp(jnp.asarray(cotangent)))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_identity_reproduces_image():
  image = np.random.default_rng(0).uniform(size=(2, 7, 6, 3)).astype(np.float32)
  theta = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (2, 1, 1))
  for align_corners in (False, True):
    grid = stn_jax.affine_grid(theta, (7, 6), align_corners=align_corners)
    for mode in stn_jax.MODES:
      out = stn_jax.grid_sample(
        image, grid, mode=mode, align_corners=align_corners
      )
      np.testing.assert_allclose(out, image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradients_match_finite_differences(
  mode, padding_mode, align_corners, sampler_path
):
  with jax.enable_x64(True):
    image, grid = random_inputs((2, 5, 4, 3, 3, 4), seed=3, reach=1.2)
    fn = functools.partial(
      stn_jax.grid_sample,
      mode=mode,
      padding_mode=padding_mode,
      align_corners=align_corners,
    )
    check_grads(
      fn,
      (jnp.asarray(image, jnp.float64), jnp.asarray(grid, jnp.float64)),
      order=1,
      modes=("rev",),
      eps=1e-6,
      atol=1e-5,
      rtol=1e-5,
    )


def test_nearest_has_zero_grid_gradient(sampler_path):
  image, grid = random_inputs((1, 4, 4, 2, 3, 3))
  grad = jax.grad(
    lambda g: stn_jax.grid_sample(image, g, mode="nearest").sum()
  )(grid)
  np.testing.assert_array_equal(grad, 0)


def test_kernel_and_xla_paths_agree(monkeypatch):
  from stn_jax.ops import _cpu_kernel

  if not _cpu_kernel.enabled("float32"):
    pytest.skip(
      "the CPU kernel is not in use (not the CPU backend, or no compiler)"
    )
  image, grid = random_inputs((3, 9, 8, 3, 7, 10), seed=5)
  cotangent = (
    np.random.default_rng(6).normal(size=(3, 7, 10, 3)).astype(np.float32)
  )
  results = {}
  for path in ("kernel", "xla"):
    if path == "xla":
      monkeypatch.setattr(_cpu_kernel, "enabled", lambda dtype: False)
    for mode, padding_mode, align_corners in COMBINATIONS:
      fn = functools.partial(
        stn_jax.grid_sample,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=align_corners,
      )
      _, vjp = jax.vjp(fn, jnp.asarray(image), jnp.asarray(grid))
      results[path, mode, padding_mode, align_corners] = vjp(
        jnp.asarray(cotangent)
      )
  for combination in COMBINATIONS:
    for a, b in zip(
      results[("kernel", *combination)], results[("xla", *combination)]
    ):
      np.testing.assert_allclose(
        a, b, atol=2e-5, rtol=0, err_msg=str(combination)
      )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_kernel_equals_the_xla_forward(monkeypatch, dtype):
  """The bilinear forward kernel against the XLA forward: every padding and
  corner convention, points inside, outside, far outside, on the border and
  undefined, channel counts with and without a compiled-in width, and enough
  images that the work is split into chunks over the thread pool."""
  from stn_jax.ops import _cpu_kernel

  if not _cpu_kernel.enabled(dtype):
    pytest.skip(
      "the CPU kernel is not in use (not the CPU backend, or no compiler)"
    )
  cases = []
  for channels in (1, 3, 5):
    image, grid = random_inputs((40, 12, 11, channels, 9, 13), seed=channels)
    grid[0, 0, :4] = [[np.nan, 0], [0, np.inf], [1e30, -1e30], [-3e38, 3e38]]
    grid[1, 0, :4] = [[-1, -1], [1, 1], [-1, 1], [1, -1]]  # corners
    cases.append((image.astype(dtype), grid.astype(dtype)))
  with jax.enable_x64(dtype == "float64"):
    results = {}
    for path in ("kernel", "xla"):
      if path == "xla":
        monkeypatch.setattr(_cpu_kernel, "enabled", lambda dtype: False)
      for k, (image, grid) in enumerate(cases):
        for padding_mode in stn_jax.PADDING_MODES:
          for align_corners in (False, True):
            fn = jax.jit(
              functools.partial(
                stn_jax.grid_sample,
                padding_mode=padding_mode,
                align_corners=align_corners,
              )
            )
            if path == "kernel":
              text = fn.lower(image, grid).as_text()
              assert _cpu_kernel._target(dtype, "forward") in text
            key = (k, padding_mode, align_corners)
            results[path, key] = np.asarray(fn(image, grid))
  for key in {key for _, key in results}:
    got, want = results["kernel", key], results["xla", key]
    assert np.isfinite(got).all(), key
    tolerance = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(
      got, want, rtol=tolerance, atol=tolerance, err_msg=str(key)
    )


def test_bilinear_kernel_beyond_the_bordered_bound_equals_xla(monkeypatch):
  """Above FORWARD_MAX_IMAGE_ELEMENTS the bilinear backward takes the
  kernel's blocked path (and the forward XLA's): still the XLA gradients."""
  from stn_jax.ops import _cpu_kernel

  if not _cpu_kernel.enabled("float32"):
    pytest.skip(
      "the CPU kernel is not in use (not the CPU backend, or no compiler)"
    )
  side = int(np.sqrt(_cpu_kernel.FORWARD_MAX_IMAGE_ELEMENTS)) + 1
  rng = np.random.default_rng(3)
  image = jnp.asarray(rng.uniform(size=(1, side, side, 1)), jnp.float32)
  grid = jnp.asarray(rng.uniform(-1.1, 1.1, size=(1, 6, 7, 2)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(1, 6, 7, 1)), jnp.float32)
  results = []
  for path in ("kernel", "xla"):
    if path == "xla":
      monkeypatch.setattr(_cpu_kernel, "enabled", lambda dtype: False)
    out, vjp = jax.vjp(stn_jax.grid_sample, image, grid)
    results.append((out, *vjp(cotangent)))
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_forward_kernel_is_bilinear_only_and_bounded_in_image_size():
  from stn_jax.ops import _cpu_kernel

  if not _cpu_kernel.enabled("float32"):
    pytest.skip(
      "the CPU kernel is not in use (not the CPU backend, or no compiler)"
    )
  target = _cpu_kernel._target("float32", "forward")

  def lowered(image_shape, mode):
    image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    grid = jax.ShapeDtypeStruct((image_shape[0], 4, 4, 2), jnp.float32)
    fn = functools.partial(stn_jax.grid_sample, mode=mode)
    return jax.jit(fn).lower(image, grid).as_text()  # traced, not allocated

  assert target in lowered((2, 30, 30, 3), "bilinear")
  assert target not in lowered((2, 30, 30, 3), "nearest")
  assert target not in lowered((2, 30, 30, 3), "bicubic")
  # An image whose bordered copy exceeds the bound uses the XLA forward.
  side = int(np.sqrt(_cpu_kernel.FORWARD_MAX_IMAGE_ELEMENTS))
  assert not _cpu_kernel.has_forward((1, side, side, 1), "bilinear")
  assert _cpu_kernel.has_forward((1, side - 4, side - 4, 1), "bilinear")
  assert target not in lowered((1, side, side, 1), "bilinear")
  with pytest.raises(ValueError, match="got mode 'nearest'"):
    _cpu_kernel.forward(
      jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 3, 2)), "nearest", "zeros", False
    )


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
@pytest.mark.parametrize("mode", stn_jax.MODES)
def test_non_finite_grid_reads_zero_with_finite_gradients(
  mode, padding_mode, sampler_path
):
  image = np.random.default_rng(0).uniform(size=(1, 6, 5, 2)).astype(np.float32)
  grid = (
    np.random.default_rng(1)
    .uniform(-1, 1, size=(1, 2, 6, 2))
    .astype(np.float32)
  )
  bad = [np.nan, np.inf, -np.inf]
  grid[0, 0, :3, 0] = bad
  grid[0, 0, 3:6, 1] = bad
  grid[0, 1, 0] = [1e30, -1e30]
  grid[0, 1, 1] = [-3e38, 3e38]
  fn = functools.partial(
    stn_jax.grid_sample, mode=mode, padding_mode=padding_mode
  )
  out, vjp = jax.vjp(fn, jnp.asarray(image), jnp.asarray(grid))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0, 0], 0)  # undefined points
  image_grad, grid_grad = vjp(jnp.ones_like(out))
  assert np.all(np.isfinite(image_grad)) and np.all(np.isfinite(grid_grad))
  np.testing.assert_array_equal(grid_grad[0, 0], 0)
  # The finite points agree with the reference; huge ones are far outside.
  want = reference.grid_sample(image, grid, mode, padding_mode)
  np.testing.assert_allclose(out[0, 1, 2:], want[0, 1, 2:], atol=1e-5)


def test_non_finite_pixels_outside_the_taps_do_not_leak(sampler_path):
  image = np.ones((1, 4, 4, 1), np.float32)
  image[0, :, 3] = np.inf  # last column, never read below
  grid = np.array([[[[-0.75, -0.75], [-0.5, 0.25]]]], np.float32)  # pixels 0-2
  out, vjp = jax.vjp(stn_jax.grid_sample, jnp.asarray(image), jnp.asarray(grid))
  np.testing.assert_allclose(out, 1.0)
  assert np.all(np.isfinite(vjp(jnp.ones_like(out))[1]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_output_dtype_equals_input_dtype(dtype):
  image, grid = random_inputs((2, 6, 6, 3, 5, 5))
  out = stn_jax.grid_sample(jnp.asarray(image, dtype), jnp.asarray(grid, dtype))
  assert out.dtype == dtype
  want = reference.grid_sample(
    np.asarray(jnp.asarray(image, dtype), np.float32),
    np.asarray(jnp.asarray(grid, dtype), np.float32),
  )
  tolerance = {jnp.bfloat16: 2e-2, jnp.float16: 2e-3, jnp.float32: 1e-5}[dtype]
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=tolerance)
  grads = jax.grad(
    lambda i, g: stn_jax.grid_sample(i, g).astype(jnp.float32).sum(),
    argnums=(0, 1),
  )(jnp.asarray(image, dtype), jnp.asarray(grid, dtype))
  assert grads[0].dtype == dtype and grads[1].dtype == dtype


def test_unbatched_and_vmap_equal_batched():
  image, grid = random_inputs((3, 5, 6, 2, 4, 4))
  batched = stn_jax.grid_sample(image, grid, mode="bicubic")
  single = stn_jax.grid_sample(image[1], grid[1], mode="bicubic")
  np.testing.assert_allclose(single, batched[1], atol=1e-6)
  mapped = jax.vmap(functools.partial(stn_jax.grid_sample, mode="bicubic"))(
    image, grid
  )
  np.testing.assert_allclose(mapped, batched, atol=1e-6)
  # A batched call inside vmap (a population of models), gradients included.
  stacked = jnp.stack([image, image[::-1]])
  grids = jnp.stack([grid, grid])
  loss = lambda i, g: jax.vmap(stn_jax.grid_sample)(i, g).sum()
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(stacked, grids)
  want = jax.grad(lambda i, g: stn_jax.grid_sample(i, g).sum(), argnums=(0, 1))(
    image, grid
  )
  np.testing.assert_allclose(grads[0][0], want[0], atol=1e-5)
  np.testing.assert_allclose(grads[1][0], want[1], atol=1e-5)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(image=np.zeros((4, 4)), grid=np.zeros((1, 2, 2, 2))), "image"),
    (dict(image=np.zeros((1, 4, 4, 1)), grid=np.zeros((1, 2, 2, 3))), "grid"),
    (
      dict(image=np.zeros((2, 4, 4, 1)), grid=np.zeros((3, 2, 2, 2))),
      "batch size",
    ),
    (
      dict(image=np.zeros((1, 4, 4, 1)), grid=np.zeros((2, 2, 2))),
      "both have a batch axis",
    ),
    (
      dict(image=np.zeros((1, 4, 4, 1), np.int32), grid=np.zeros((1, 2, 2, 2))),
      "image must have a floating dtype",
    ),
    (
      dict(
        image=np.zeros((1, 4, 4, 1)), grid=np.zeros((1, 2, 2, 2)), mode="linear"
      ),
      "mode must be one of",
    ),
    (
      dict(
        image=np.zeros((1, 4, 4, 1)),
        grid=np.zeros((1, 2, 2, 2)),
        padding_mode="wrap",
      ),
      "padding_mode must be one of",
    ),
    (
      dict(
        image=np.zeros((1, 4, 4, 1)),
        grid=np.zeros((1, 2, 2, 2)),
        align_corners=1,
      ),
      "align_corners must be a bool",
    ),
    (
      dict(image=np.zeros((1, 0, 4, 1)), grid=np.zeros((1, 2, 2, 2))),
      "must not be empty",
    ),
  ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    stn_jax.grid_sample(**kwargs)


def test_error_message_says_expected_and_given():
  with pytest.raises(ValueError) as error:
    stn_jax.grid_sample(np.zeros((1, 4, 4, 1)), np.zeros((1, 2, 2, 3)))
  message = str(error.value)
  assert "(N, H_out, W_out, 2)" in message and "(1, 2, 2, 3)" in message


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", stn_jax.MODES)
def test_reflection_far_outside_matches_reference(
  mode, align_corners, sampler_path
):
  # Points many pixels outside are mirrored back in, tap by tap for bicubic
  # (PyTorch's rule); they must not be bounded before reflecting.
  image = np.random.default_rng(7).uniform(size=(1, 6, 7, 2)).astype(np.float32)
  grid = (
    np.random.default_rng(8)
    .uniform(-5, 5, size=(1, 4, 9, 2))
    .astype(np.float32)
  )
  fn = functools.partial(
    stn_jax.grid_sample,
    mode=mode,
    padding_mode="reflection",
    align_corners=align_corners,
  )
  np.testing.assert_allclose(
    fn(image, grid),
    reference.grid_sample(image, grid, mode, "reflection", align_corners),
    atol=1e-5,
  )
  if mode != "nearest":
    with jax.enable_x64(True):
      check_grads(
        fn,
        (jnp.asarray(image, jnp.float64), jnp.asarray(grid, jnp.float64)),
        order=1,
        modes=("rev",),
        eps=1e-6,
        atol=1e-5,
        rtol=1e-5,
      )


@pytest.mark.parametrize(
  "mode, padding_mode",
  [(m, "zeros") for m in stn_jax.MODES]
  + [("bilinear", p) for p in stn_jax.ALL_PADDING_MODES[1:]],
)
def test_deterministic_backward_equals_the_default(
  mode, padding_mode, sampler_path
):
  rng = np.random.default_rng(5)
  image = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  # many points on few pixels: every pixel gets many contributions
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, (2, 7, 6, 2)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)

  def gradients(deterministic):
    loss = lambda i, g: (
      stn_jax.grid_sample(
        i,
        g,
        mode=mode,
        padding_mode=padding_mode,
        deterministic=deterministic,
      )
      * weights
    ).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(image, grid)

  default, fixed, again = gradients(False), gradients(True), gradients(True)
  for a, b, c in zip(default, fixed, again):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b, c)


def test_deterministic_segment_sum_matches_numpy_add_at():
  from stn_jax.ops._sampler_math import segment_sum_sorted

  rng = np.random.default_rng(0)
  index = rng.integers(0, 7, 200)
  values = rng.normal(size=(200, 2))
  want = np.zeros((9, 2))
  np.add.at(want, index, values)
  with jax.enable_x64(True):
    segment_sum = jax.jit(segment_sum_sorted, static_argnums=2)
    got = segment_sum(jnp.asarray(index), jnp.asarray(values), 9)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_images_beyond_32_bit_pixel_indices_are_refused_without_allocating():
  image = jax.ShapeDtypeStruct((2**15, 2**8, 2**8, 1), jnp.float32)  # 2**31
  grid = jax.ShapeDtypeStruct((2**15, 1, 1, 2), jnp.float32)
  with pytest.raises(ValueError, match=r"image has 2,147,483,648 pixels"):
    jax.eval_shape(stn_jax.grid_sample, image, grid)
  # one pixel fewer per image row count is fine (shapes only, nothing runs)
  small = jax.ShapeDtypeStruct((2**15 - 1, 2**8, 2**8, 1), jnp.float32)
  grid = jax.ShapeDtypeStruct((2**15 - 1, 1, 1, 2), jnp.float32)
  out = jax.eval_shape(stn_jax.grid_sample, small, grid)
  assert out.shape == (2**15 - 1, 1, 1, 1)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", stn_jax.MODES)
def test_reflection_of_taps_on_a_multiple_of_the_span(
  mode, align_corners, sampler_path
):
  """Taps exactly on a mirror (e.g. pixel 41 of a 42-wide image with
  align_corners) were reflected to the opposite edge when XLA computed
  floor(41 / 41) as floor(41 * (1 / 41)) = 0; it did so for some batch
  sizes and not others (seen: 50 points wrong, 1 point right)."""
  rng = np.random.default_rng(3)
  for height, width in ((8, 42), (42, 42), (5, 13)):
    image = rng.uniform(size=(1, height, width, 1)).astype(np.float32)
    grid = np.zeros((1, 3, 50, 2), np.float32)
    grid[..., 0] = np.linspace(1.0001, 1.04, 50)  # just past the right edge
    grid[:, 1, :, 0] = np.linspace(-1.04, -1.0001, 50)  # the left edge
    grid[:, 2, :, 0] = np.linspace(2.9, 3.1, 50)  # a whole period away
    grid[..., 1] = np.linspace(-1.0, 1.0, 3)[None, :, None]
    want = reference.grid_sample(image, grid, mode, "reflection", align_corners)
    for points in (50, 7, 1):
      got = stn_jax.grid_sample(
        image,
        grid[:, :, :points],
        mode=mode,
        padding_mode="reflection",
        align_corners=align_corners,
      )
      np.testing.assert_allclose(
        got, want[:, :, :points], atol=1e-5, err_msg=f"{height}x{width}"
      )
