"""Every JAX transform of grid_sample and the grids, against the same
transforms of an independent plain-jnp sampler written here.

The reference below is written from the definitions (PyTorch's documented
conventions; its coordinate rules are tests/reference.py's, run on jnp
arrays), shares no code with stn_jax and is differentiated by plain JAX
autodiff: forward mode, reverse mode and every higher order are JAX's
own. stn_jax's sampler instead differentiates by a custom JVP whose
transpose is the C++ kernel on the CPU (``sampler_path`` runs each test
with the kernel and with the XLA path).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import keys_kernel, pad_coordinate, pixel_coordinate

from stn_jax import ops

_pixel = pixel_coordinate  # plain arithmetic: works on jnp arrays as is


def _padded(pixel, size, padding_mode, align_corners):
  return pad_coordinate(pixel, size, padding_mode, align_corners, xp=jnp)


def _keys(distance):
  return keys_kernel(distance, xp=jnp)


def _read(image, ys, xs):
  """image (H, W, C) at integer-valued pixel arrays; zero outside."""
  h, w, _ = image.shape
  inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
  yc = jnp.clip(ys, 0, h - 1).astype(jnp.int32)
  xc = jnp.clip(xs, 0, w - 1).astype(jnp.int32)
  return jnp.where(inside[..., None], image[yc, xc], 0.0)


def _reference_one(image, grid, mode, padding_mode, align_corners):
  """image (H, W, C), grid (Ho, Wo, 2) -> (Ho, Wo, C), plain jnp."""
  h, w, _ = image.shape
  px = _pixel(grid[..., 0], w, align_corners)
  py = _pixel(grid[..., 1], h, align_corners)
  if mode == "bicubic":  # a 4 x 4 patch of taps, read in one gather
    offsets = jnp.arange(-1.0, 3.0)
    tx = jnp.floor(px)[..., None] + offsets  # (Ho, Wo, 4)
    ty = jnp.floor(py)[..., None] + offsets
    wx = _keys(px[..., None] - tx)
    wy = _keys(py[..., None] - ty)
    patch = _read(
      image,
      _padded(ty, h, padding_mode, align_corners)[..., :, None],
      _padded(tx, w, padding_mode, align_corners)[..., None, :],
    )  # (Ho, Wo, 4, 4, C)
    return jnp.einsum("...j,...i,...jic->...c", wy, wx, patch)
  px = _padded(px, w, padding_mode, align_corners)
  py = _padded(py, h, padding_mode, align_corners)
  if mode == "nearest":
    return _read(image, jnp.round(py), jnp.round(px))
  x0, y0 = jnp.floor(px), jnp.floor(py)
  fx, fy = px - x0, py - y0
  return (
    ((1 - fx) * (1 - fy))[..., None] * _read(image, y0, x0)
    + (fx * (1 - fy))[..., None] * _read(image, y0, x0 + 1)
    + ((1 - fx) * fy)[..., None] * _read(image, y0 + 1, x0)
    + (fx * fy)[..., None] * _read(image, y0 + 1, x0 + 1)
  )


def reference_sample(image, grid, mode, padding_mode, align_corners):
  """Batched plain-jnp grid_sample; 'fill' reads fill value 0.25."""
  if padding_mode == "fill":
    # Definition: every tap outside the image reads the fill value.
    one = functools.partial(
      _reference_one,
      mode=mode,
      padding_mode="zeros",
      align_corners=align_corners,
    )
    ones = jnp.ones((*image.shape[:3], 1), image.dtype)
    mass = jax.vmap(one)(ones, grid)
    return jax.vmap(one)(image, grid) + 0.25 * (1 - mass)
  one = functools.partial(
    _reference_one,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
  )
  return jax.vmap(one)(image, grid)


def ours(image, grid, mode, padding_mode, align_corners):
  return ops.grid_sample(
    image,
    grid,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
    fill_value=0.25,
  )


def _inputs(seed):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(2, 4, 5, 2))
  # Points inside and outside (so the padding matters), away from knots.
  grid = rng.uniform(-1.4, 1.4, size=(2, 3, 3, 2))
  return jnp.asarray(image), jnp.asarray(grid)


FIRST_ORDER = (
  "jvp",
  "linearize",
  "jacfwd_image",
  "jacfwd_grid",
  "jacrev_image",
  "jacrev_grid",
  "grad",
)
SECOND_ORDER = ("hessian_grid", "hessian_mixed", "grad_of_grad")
# What depends on the backward path (kernel or XLA): the transposes.
REVERSE = ("jacrev_image", "jacrev_grid", "grad")


def _transforms(sample, image, grid, names):
  """The named transforms of the sample and of a scalar loss of it."""
  weights = jnp.linspace(-1.0, 1.0, 2 * 3 * 3 * 2).reshape(2, 3, 3, 2)

  def loss(i, g):
    out = sample(i, g)
    return (weights * out + 0.5 * out**2).sum()

  d_image = jnp.cos(image)
  d_grid = jnp.sin(3 * grid)
  transforms = dict(
    jvp=lambda: jax.jvp(sample, (image, grid), (d_image, d_grid))[1],
    linearize=lambda: jax.linearize(sample, image, grid)[1](d_image, d_grid),
    jacfwd_image=lambda: jax.jacfwd(sample, 0)(image, grid),
    jacfwd_grid=lambda: jax.jacfwd(sample, 1)(image, grid),
    jacrev_image=lambda: jax.jacrev(sample, 0)(image, grid),
    jacrev_grid=lambda: jax.jacrev(sample, 1)(image, grid),
    grad=lambda: jax.grad(loss, (0, 1))(image, grid),
    hessian_grid=lambda: jax.hessian(loss, 1)(image, grid),
    hessian_mixed=lambda: jax.jacfwd(jax.grad(loss, 1), 0)(image, grid),
    grad_of_grad=lambda: jax.grad(
      lambda i: (jax.grad(loss, 1)(i, grid) ** 2).sum()
    )(image),
  )
  return {"primal": sample(image, grid)} | {
    name: transforms[name]() for name in names
  }


# Every mode and padding; align_corners alternates so both are covered.
CASES = [
  (mode, padding, (k + m) % 2 == 1)
  for m, mode in enumerate(ops.MODES)
  for k, padding in enumerate(ops.ALL_PADDING_MODES)
]


def _checked(mode, padding_mode, path):
  """The transforms each case checks (each costs compile time).

  The kernel path: every transform, second order in every case but the
  bicubic ones other than reflection (a bicubic hessian takes ~20 s to
  compile) and 'fill' (two 'zeros' samples and linear ops). The XLA path
  shares everything with it but the transpose, so it checks the reverse-mode
  transforms.
  """
  if path == "xla":  # 'fill' is two 'zeros' samples: one gradient will do
    return ("grad",) if padding_mode == "fill" else REVERSE
  if padding_mode == "fill" or (
    mode == "bicubic" and padding_mode != "reflection"
  ):
    return FIRST_ORDER
  return FIRST_ORDER + SECOND_ORDER


@pytest.mark.parametrize("mode, padding_mode, align_corners", CASES)
def test_every_transform_equals_the_plain_jnp_reference(
  mode, padding_mode, align_corners, sampler_path
):
  options = (mode, padding_mode, align_corners)
  names = _checked(mode, padding_mode, sampler_path)
  with jax.enable_x64(True):
    image, grid = _inputs(seed=len(mode) + len(padding_mode))

    def run(sample):
      return jax.jit(
        lambda i, g: _transforms(
          lambda a, b: sample(a, b, *options), i, g, names
        )
      )(image, grid)

    got, want = run(ours), run(reference_sample)
    assert got.keys() == want.keys()
    for name in want:
      for g, w in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
        np.testing.assert_allclose(
          g, w, rtol=1e-9, atol=1e-9, err_msg=f"{name} {options}"
        )
    # Not vacuous: the grid derivatives are not all zero.
    if mode != "nearest":
      assert np.abs(got["grad"][1]).max() > 1e-2
      if "hessian_grid" in got:
        assert np.abs(got["hessian_grid"]).max() > 1e-3


@pytest.mark.parametrize("deterministic", [False, True])
def test_grad_of_grad_through_either_summation_order(deterministic):
  # The image gradient's second derivative goes through the JVP of the
  # scatter (default) or of the sorted segment sum (deterministic=True).
  with jax.enable_x64(True):
    image, grid = _inputs(seed=3)

    def grad_of_grad(sample):
      def loss(i, g):
        return (sample(i, g) ** 2).sum()

      return jax.jit(
        jax.grad(lambda g: (jax.grad(loss, 0)(image, g) ** 2).sum())
      )(grid)

    got = grad_of_grad(
      lambda i, g: ops.grid_sample(i, g, deterministic=deterministic)
    )
    want = grad_of_grad(
      lambda i, g: reference_sample(i, g, "bilinear", "zeros", False)
    )
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.abs(got).max() > 1e-2


def test_vmap_of_every_transform_equals_the_batched_call(sampler_path):
  # vmap over unbatched examples (the primitive's batching rule folds the
  # vmapped axis into the batch axis), under jit
  with jax.enable_x64(True):
    image, grid = _inputs(seed=6)

    def one(i, g):
      return ops.grid_sample(i, g, padding_mode="border")

    def loss(i, g):
      return (one(i, g) ** 2).sum()

    d_image, d_grid = jnp.cos(image), jnp.sin(grid)
    batched_jvp = jax.jit(
      jax.vmap(lambda i, g, di, dg: jax.jvp(one, (i, g), (di, dg))[1])
    )(image, grid, d_image, d_grid)
    batched_grad = jax.jit(jax.vmap(jax.grad(loss, (0, 1))))(image, grid)
    batched_hvp = jax.jit(
      jax.vmap(
        lambda i, g, dg: jax.jvp(
          lambda h: jax.grad(loss, 1)(i, h), (g,), (dg,)
        )[1]
      )
    )(image, grid, d_grid)

    def ref_loss(i, g):
      return (reference_sample(i, g, "bilinear", "border", False) ** 2).sum()

    want_jvp = jax.jvp(
      lambda i, g: reference_sample(i, g, "bilinear", "border", False),
      (image, grid),
      (d_image, d_grid),
    )[1]
    want_grad = jax.grad(ref_loss, (0, 1))(image, grid)
    want_hvp = jax.jvp(
      lambda h: jax.grad(ref_loss, 1)(image, h), (grid,), (d_grid,)
    )[1]
    np.testing.assert_allclose(batched_jvp, want_jvp, rtol=1e-9, atol=1e-9)
    for got, want in zip(batched_grad, want_grad):
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(batched_hvp, want_hvp, rtol=1e-9, atol=1e-9)


def _grid_cases():
  rng = np.random.default_rng(7)
  theta = np.eye(2, 3)[None] + 0.2 * rng.normal(size=(2, 2, 3))
  homography = np.eye(3)[None] + 0.1 * rng.normal(size=(2, 3, 3))
  tps = 0.1 * rng.normal(size=(2, 16, 2))
  attention = np.array([[0.77, 0.13, -0.21], [0.61, -0.07, 0.33]])
  return {
    "affine": (lambda p: ops.affine_grid(p, (3, 4)), theta),
    "projective": (lambda p: ops.projective_grid(p, (3, 4)), homography),
    "tps": (
      lambda p: ops.tps_grid(ops.tps_source_points(16) + p, (3, 4)),
      tps,
    ),
    "attention": (
      lambda p: ops.affine_grid(ops.attention_theta(p), (3, 4)),
      attention,
    ),
  }


@pytest.mark.parametrize("name", ["affine", "projective", "tps", "attention"])
def test_every_grid_composes_with_every_transform(name):
  # A spatial transformer's loss as a function of its transformation
  # parameters: forward and reverse Jacobians, linearize and jvp agree, and
  # the Hessian equals central differences of the gradient.
  with jax.enable_x64(True):
    grid_fn, params = _grid_cases()[name]
    params = jnp.asarray(params)
    image = jnp.asarray(np.random.default_rng(8).normal(size=(2, 5, 6, 2)))

    def sample(p):
      return ops.grid_sample(image, grid_fn(p), padding_mode="border")

    def loss(p):
      return (sample(p) ** 2).sum()

    direction = jnp.asarray(np.random.default_rng(9).normal(size=params.shape))
    forward = jax.jit(jax.jacfwd(sample))(params)
    np.testing.assert_allclose(
      forward, jax.jit(jax.jacrev(sample))(params), rtol=1e-9, atol=1e-9
    )
    tangent = jax.jvp(sample, (params,), (direction,))[1]
    np.testing.assert_allclose(
      tangent,
      jnp.tensordot(forward, direction, direction.ndim),
      rtol=1e-9,
      atol=1e-9,
    )
    _, linear = jax.linearize(sample, params)
    np.testing.assert_allclose(linear(direction), tangent, atol=1e-9)
    eps = 1e-6
    numeric = (
      sample(params + eps * direction) - sample(params - eps * direction)
    ) / (2 * eps)
    np.testing.assert_allclose(tangent, numeric, rtol=1e-5, atol=1e-6)
    hessian = jax.jit(jax.hessian(loss))(params)
    grad = jax.grad(loss)
    numeric = (
      grad(params + eps * direction) - grad(params - eps * direction)
    ) / (2 * eps)
    np.testing.assert_allclose(
      jnp.tensordot(hessian, direction, direction.ndim),
      numeric,
      rtol=1e-4,
      atol=1e-6,
    )


def test_gradients_to_the_grid_alone_run_no_image_scatter(sampler_path):
  # An STN's sampler reads its input image, which needs no gradient: then
  # the backward pass computes only the grid gradient.
  image = jnp.ones((2, 6, 6, 3))
  theta = jnp.tile(jnp.eye(2, 3), (2, 1, 1))

  def loss(t, i):
    return ops.grid_sample(i, ops.affine_grid(t, (6, 6))).sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(theta, image))
  both = str(jax.make_jaxpr(jax.grad(loss, (0, 1)))(theta, image))
  if sampler_path == "kernel":
    assert "('want_image_grad', np.int32(0))" in jaxpr
    assert "('want_grid_grad', np.int32(1))" in jaxpr
    assert "('want_image_grad', np.int32(1))" in both
  else:
    assert "scatter-add" not in jaxpr
    assert "scatter-add" in both
