"""stn_jax.models.convolution: the patch-product weight gradient against
XLA's convolution gradient and finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.test_util import check_grads

from stn_jax.models import conv_products, convolution


@pytest.fixture(autouse=True)
def patches_at_every_size(monkeypatch):
  """The tests' tiny and narrow layers would keep XLA's weight gradient
  (and, with 'im2col', XLA's convolution): every layer takes the patch
  weight gradient, and 'im2col' every layer of 8 input channels or more."""
  monkeypatch.setattr(convolution, "_MIN_PATCH_BYTES", 0)
  monkeypatch.setattr(convolution, "_MAX_PATCH_WEIGHT_CHANNELS", 2**20)
  monkeypatch.setattr(convolution, "_MIN_IM2COL_CHANNELS", 8)
  monkeypatch.setattr(convolution, "_MIN_IM2COL_TAPS", 0)


def test_small_layers_keep_xla_weight_gradient(monkeypatch):
  monkeypatch.setattr(convolution, "_MIN_PATCH_BYTES", 2**40)
  x, kernel = inputs(3, 6, 6, 6, 3, (3, 3), seed=11)
  g = jnp.asarray(np.random.default_rng(12).normal(size=(3, 6, 6, 3)))
  ours = jax.vjp(lambda w: patch_conv(x, w), kernel)[1](g)[0]
  theirs = jax.vjp(lambda w: xla_conv(x, w), kernel)[1](g)[0]
  np.testing.assert_array_equal(ours, theirs)  # the same XLA computation


def test_wide_layers_keep_xla_weight_gradient(monkeypatch):
  """Above 4 input channels XLA's weight gradient (Eigen's) is faster than
  the patch products: the same XLA computation, bitwise."""
  monkeypatch.setattr(convolution, "_MAX_PATCH_WEIGHT_CHANNELS", 4)
  for c_in, same in [(5, True), (4, False)]:
    x, kernel = inputs(3, 6, 6, c_in, 3, (3, 3), seed=13)
    g = jnp.asarray(np.random.default_rng(14).normal(size=(3, 6, 6, 3)))
    ours = jax.vjp(patch_conv, x, kernel)[1](g)[1]
    theirs = jax.vjp(xla_conv, x, kernel)[1](g)[1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert np.array_equal(ours, theirs) == same


def xla_conv(x, kernel, padding="SAME"):
  return lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def patch_conv(x, kernel, padding="SAME"):
  return convolution.patch_gradient_conv(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def inputs(n, h, w, c_in, c_out, k, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, h, w, c_in)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(*k, c_in, c_out)), jnp.float32)
  return x, kernel


@pytest.mark.parametrize(
  "shape",
  [
    (4, 9, 9, 1, 5, (5, 5)),  # one input channel, odd kernel
    (6, 8, 7, 3, 4, (4, 4)),  # even kernel: SAME pads (1, 2)
    (2, 5, 6, 4, 3, (3, 2)),  # rectangular kernel and image
    (3, 6, 6, 2, 2, (1, 1)),
    (2, 6, 5, 6, 3, (3, 3)),  # more channels: XLA's input gradient
  ],
)
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_gradients_equal_xla_and_forward_is_bitwise(shape, padding):
  n, h, w, c_in, c_out, k = shape
  x, kernel = inputs(*shape)
  ours, ours_vjp = jax.vjp(lambda x, w: patch_conv(x, w, padding), x, kernel)
  theirs, theirs_vjp = jax.vjp(lambda x, w: xla_conv(x, w, padding), x, kernel)
  np.testing.assert_array_equal(ours, theirs)
  cotangent = jnp.asarray(
    np.random.default_rng(1).normal(size=ours.shape), jnp.float32
  )
  (x_grad, w_grad), (x_ref, w_ref) = ours_vjp(cotangent), theirs_vjp(cotangent)
  if c_in > convolution._MAX_SCATTER_CHANNELS:
    np.testing.assert_array_equal(x_grad, x_ref)  # XLA's input gradient
  np.testing.assert_allclose(x_grad, x_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(w_grad, w_ref, rtol=1e-5, atol=1e-5)


def test_weight_gradient_from_the_definition():
  # sum_{n,y,x} x_pad[n, y+i, x+j, c] * g[n, y, x, d], written as loops.
  x, kernel = inputs(2, 5, 4, 2, 3, (3, 3), seed=3)
  g = np.random.default_rng(4).normal(size=(2, 5, 4, 3))
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((3, 3, 2, 3))
  for i in range(3):
    for j in range(3):
      expected[i, j] = np.einsum(
        "nyxc,nyxd->cd", padded[:, i : i + 5, j : j + 4], g
      )
  got = conv_products.weight_gradient_by_patches(
    x, jnp.asarray(g, jnp.float32), (3, 3), ((1, 1), (1, 1))
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in", [2, 6])  # input gradient by columns, XLA
def test_gradient_matches_finite_differences(c_in):
  x, kernel = inputs(3, 6, 6, c_in, 3, (3, 3), seed=5)
  check_grads(patch_conv, (x, kernel), order=1, modes=("rev",), atol=2e-2)


def test_input_gradient_from_the_definition():
  # dx[n, y, x, c] = sum over outputs (p, q) and taps (i, j) with
  # p + i - top = y, q + j - left = x of g[n, p, q, d] * w[i, j, c, d].
  x, kernel = inputs(2, 5, 4, 2, 3, (3, 2), seed=6)
  padding = ((2, 0), (1, 0))
  g = np.random.default_rng(7).normal(size=(2, 5, 4, 3))
  w = np.asarray(kernel, np.float64)
  expected = np.zeros((2, 5, 4, 2))
  for p in range(5):
    for q in range(4):
      for i in range(3):
        for j in range(2):
          y, xx = p + i - 2, q + j - 1
          if 0 <= y < 5 and 0 <= xx < 4:
            expected[:, y, xx] += g[:, p, q] @ w[i, j].T
  got = conv_products.input_gradient_by_columns(
    jnp.asarray(g, jnp.float32), kernel, x.shape, padding
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 12])
def test_chunks_cover_any_batch(batch, monkeypatch):
  # Tiny chunks: several scan steps, and a batch with no divisor but 1.
  monkeypatch.setattr(conv_products, "_CHUNK_BYTES", 3000)
  x, kernel = inputs(batch, 6, 5, 2, 3, (3, 3), seed=batch)
  g = jnp.ones((batch, 6, 5, 3))
  expected = jax.vjp(lambda w: xla_conv(x, w), kernel)[1](g)[0]
  got = jax.vjp(lambda w: patch_conv(x, w), kernel)[1](g)[0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_jit_and_vmap():
  x, kernel = inputs(2, 6, 6, 2, 3, (3, 3))
  xs = jnp.stack([x, x + 1.0])

  def loss(w, x):
    return jnp.sum(patch_conv(x, w) ** 2)

  def reference(w, x):
    return jnp.sum(xla_conv(x, w) ** 2)

  got = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(kernel, xs)
  expected = jax.vmap(jax.grad(reference), in_axes=(None, 0))(kernel, xs)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_unsupported_options_fall_back_to_xla():
  x, kernel = inputs(2, 8, 8, 2, 3, (3, 3))
  strided = convolution.patch_gradient_conv(
    x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  expected = lax.conv_general_dilated(
    x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_array_equal(strided, expected)
  w_grad = jax.grad(
    lambda w: convolution.patch_gradient_conv(
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ).sum()
  )(kernel)
  assert w_grad.shape == kernel.shape


def test_layers_follow_the_context_and_keep_nnx_parameters():
  rngs = nnx.Rngs(0)
  plain = convolution.conv(2, 3, (3, 3), rngs=rngs)
  with convolution.weight_gradient("patches"):
    fast = convolution.conv(2, 3, (3, 3), rngs=nnx.Rngs(0))
  assert plain.conv_general_dilated is lax.conv_general_dilated
  assert fast.conv_general_dilated is convolution.patch_gradient_conv
  from stn_jax.ops import _cpu_kernel

  assert convolution.resolve_weight_gradient("auto") == (
    ("im2col" if _cpu_kernel.enabled(jnp.float32) else "patches")
    if jax.default_backend() == "cpu"
    else "xla"
  )
  assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(
    nnx.state(fast)
  )
  with (
    pytest.raises(ValueError, match="conv_weight_gradient must be one of"),
    convolution.weight_gradient("fast"),
  ):
    pass


def test_forward_mode_and_second_order():
  # The tangent is conv(dx, w) + conv(x, dw); jacfwd equals jacrev, and a
  # Hessian-vector product equals XLA's.
  x, kernel = inputs(2, 5, 5, 2, 3, (3, 3), seed=8)
  tx, tk = inputs(2, 5, 5, 2, 3, (3, 3), seed=9)
  _, ours = jax.jvp(patch_conv, (x, kernel), (tx, tk))
  _, theirs = jax.jvp(xla_conv, (x, kernel), (tx, tk))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  f = lambda w: jnp.tanh(patch_conv(x, w)).sum(axis=(1, 2))  # noqa: E731
  np.testing.assert_allclose(
    jax.jacfwd(f)(kernel), jax.jacrev(f)(kernel), rtol=1e-4, atol=1e-4
  )
  g = lambda conv: lambda w: jnp.sum(jnp.tanh(conv(x, w)))  # noqa: E731
  hvp = lambda conv: jax.jvp(jax.grad(g(conv)), (kernel,), (tk,))[1]  # noqa: E731
  np.testing.assert_allclose(
    hvp(patch_conv), hvp(xla_conv), rtol=1e-4, atol=1e-3
  )


def test_vmap_over_kernels_and_inputs():
  x, kernel = inputs(2, 5, 5, 2, 3, (3, 3), seed=10)
  kernels = jnp.stack([kernel, 2 * kernel])
  xs = jnp.stack([x, -x])
  for in_axes, args in [((None, 0), (x, kernels)), ((0, 0), (xs, kernels))]:
    loss = lambda conv: lambda x, w: jnp.sum(conv(x, w) ** 2)  # noqa: E731
    grads = jax.vmap(jax.grad(loss(patch_conv), (0, 1)), in_axes)(*args)
    expected = jax.vmap(jax.grad(loss(xla_conv), (0, 1)), in_axes)(*args)
    for a, b in zip(grads, expected):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    out = jax.vmap(patch_conv, in_axes)(*args)
    np.testing.assert_array_equal(out, jax.vmap(xla_conv, in_axes)(*args))


# --- conv_weight_gradient='im2col': all three products from C++ patches ---


def _kernel_or_skip():
  from conftest import _cpu_kernel_missing_reason

  from stn_jax.ops import _cpu_kernel

  if not _cpu_kernel.enabled(jnp.float32):
    pytest.skip(_cpu_kernel_missing_reason())
  return _cpu_kernel


def im2col_conv(x, kernel, padding="SAME"):
  return convolution.im2col_conv(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _uses_im2col(x, kernel, padding="SAME") -> bool:
  (equation,) = jax.make_jaxpr(lambda x, w: im2col_conv(x, w, padding))(
    x, kernel
  ).eqns
  return equation.params["im2col"]


@pytest.mark.parametrize(
  "top_left, out_size", [((1, 1), (5, 4)), ((0, 2), (3, 6)), ((3, 0), (7, 2))]
)
def test_im2col_patches_from_the_definition(top_left, out_size):
  # patch (y, x) = the window whose corner is (y - top, x - left), zeros
  # outside the image, in (i, j, c) order.
  kernel_lib = _kernel_or_skip()
  rng = np.random.default_rng(20)
  x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  kh, kw = 3, 2
  (top, left), (h_out, w_out) = top_left, out_size
  expected = np.zeros((2, h_out, w_out, kh * kw * 3), np.float32)
  for y in range(h_out):
    for xx in range(w_out):
      for i in range(kh):
        for j in range(kw):
          row, col = y + i - top, xx + j - left
          if 0 <= row < 5 and 0 <= col < 4:
            at = (i * kw + j) * 3
            expected[:, y, xx, at : at + 3] = x[:, row, col]
  got = kernel_lib.im2col(jnp.asarray(x), (kh, kw), top_left, out_size)
  np.testing.assert_array_equal(got, expected)  # copies: exact


@pytest.mark.parametrize(
  "shape",
  [
    (6, 9, 8, 8, 5, (3, 3)),  # a batch that is not a multiple of 4
    (5, 7, 9, 10, 12, (4, 2)),  # even and rectangular kernel, odd batch
    (1, 6, 6, 9, 8, (5, 5)),
  ],
)
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_im2col_values_and_gradients_equal_xla(shape, padding):
  _kernel_or_skip()
  x, kernel = inputs(*shape, seed=21)
  assert _uses_im2col(x, kernel, padding)
  ours, ours_vjp = jax.vjp(lambda x, w: im2col_conv(x, w, padding), x, kernel)
  theirs, theirs_vjp = jax.vjp(lambda x, w: xla_conv(x, w, padding), x, kernel)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
  cotangent = jnp.asarray(
    np.random.default_rng(22).normal(size=ours.shape), jnp.float32
  )
  for got, want in zip(ours_vjp(cotangent), theirs_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_im2col_gradients_match_finite_differences():
  _kernel_or_skip()
  x, kernel = inputs(3, 5, 5, 8, 3, (3, 3), seed=23)
  check_grads(im2col_conv, (x, kernel), order=1, modes=("rev",), atol=2e-2)


def test_im2col_under_jit_vmap_forward_mode_and_hvp():
  _kernel_or_skip()
  x, kernel = inputs(3, 6, 6, 8, 4, (3, 3), seed=24)
  tx, tk = inputs(3, 6, 6, 8, 4, (3, 3), seed=25)
  xs = jnp.stack([x, -2 * x])
  kernels = jnp.stack([kernel, 0.5 * kernel])

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.tanh(conv(x, w)))

  for in_axes, args in [((0, None), (xs, kernel)), ((0, 0), (xs, kernels))]:
    got = jax.jit(jax.vmap(jax.grad(loss(im2col_conv), (0, 1)), in_axes))(*args)
    want = jax.vmap(jax.grad(loss(xla_conv), (0, 1)), in_axes)(*args)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  _, ours = jax.jvp(im2col_conv, (x, kernel), (tx, tk))
  _, theirs = jax.jvp(xla_conv, (x, kernel), (tx, tk))
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
  g = lambda conv: lambda w: jnp.sum(jnp.tanh(conv(x, w)))  # noqa: E731
  hvp = lambda conv: jax.jvp(jax.grad(g(conv)), (kernel,), (tk,))[1]  # noqa: E731
  np.testing.assert_allclose(
    hvp(im2col_conv), hvp(xla_conv), rtol=1e-4, atol=1e-3
  )


def test_im2col_leaves_narrow_layers_to_the_patches_path(monkeypatch):
  x, kernel = inputs(2, 6, 6, 3, 8, (3, 3), seed=26)  # 3 input channels
  assert not _uses_im2col(x, kernel)
  g = jnp.ones((2, 6, 6, 8))
  ours = jax.vjp(im2col_conv, x, kernel)[1](g)
  theirs = jax.vjp(patch_conv, x, kernel)[1](g)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)
  _kernel_or_skip()  # the size rule, at its real threshold
  monkeypatch.setattr(convolution, "_MIN_IM2COL_CHANNELS", 36)
  monkeypatch.setattr(convolution, "_MIN_IM2COL_TAPS", 16)
  for size, c_in, k, expected in [
    (16, 50, 4, True),  # the GTSRB CNN's wide layers
    (4, 38, 5, True),
    (21, 32, 7, False),  # the RTS networks': Eigen's convolution is faster
    (10, 20, 5, False),
    (16, 64, 3, False),  # 3x3: XLA's convolution is faster
  ]:
    assert _uses_im2col(*inputs(1, size, size, c_in, 4, (k, k))) == expected


def test_im2col_layers_follow_the_context():
  with convolution.weight_gradient("im2col"):
    layer = convolution.conv(8, 4, (3, 3), rngs=nnx.Rngs(0))
  assert layer.conv_general_dilated is convolution.im2col_conv
  x = jnp.ones((2, 5, 5, 8))
  np.testing.assert_allclose(
    layer(x),
    nnx.Conv(8, 4, (3, 3), rngs=nnx.Rngs(0))(x),
    rtol=1e-5,
    atol=1e-5,
  )


def test_im2col_resolves_to_patches_without_the_kernel(monkeypatch):
  monkeypatch.setenv("STN_JAX_CPU_KERNEL", "0")
  assert convolution.resolve_weight_gradient("im2col") == "patches"
  if jax.default_backend() == "cpu":
    assert convolution.resolve_weight_gradient("auto") == "patches"
  with convolution.weight_gradient("im2col"):
    layer = convolution.conv(8, 4, (3, 3), rngs=nnx.Rngs(0))
  assert layer.conv_general_dilated is convolution.patch_gradient_conv


def test_the_gtsrb_network_under_im2col_equals_xla():
  """The paper's GTSRB CNN + 3 ST (narrowed; its 16x16 and 8x8 layers and
  the localisation nets take the patches): logits and parameter gradients
  equal XLA's to float rounding."""
  _kernel_or_skip()
  from conftest import GTSRB

  from stn_jax import models

  config = GTSRB.get_config("model=gtsrb_st_cnn,size=32")
  config.model_kwargs.width = 0.25
  x = jnp.asarray(np.random.default_rng(27).uniform(size=(3, 32, 32, 3)))
  results = {}
  for method in ("xla", "im2col"):
    config.conv_weight_gradient = method
    model = models.from_config(config, (32, 32, 3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, graphdef=graphdef, rest=rest):
      logits = nnx.merge(graphdef, params, rest)(x)
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

    results[method] = jax.jit(jax.grad(loss, has_aux=True))(params)
  (grads, logits), (want_grads, want_logits) = results["im2col"], results["xla"]
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    scale = float(jnp.max(jnp.abs(want))) + 1e-6
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-4)


# --- the forward pass by horizontal shifts (weight_gradient(..., library='eigen')) ---


def rows_conv(x, kernel, padding="SAME"):
  return convolution.patch_gradient_conv(
    x,
    kernel,
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    rows=True,
  )


def _rows_param(x, kernel, padding="SAME") -> bool:
  (equation,) = jax.make_jaxpr(lambda x, w: rows_conv(x, w, padding))(
    x, kernel
  ).eqns
  return equation.params["rows"]


def _rows_from_the_definition(x, kernel, padding):
  # out[n, y, x, d] = sum_{i, j, c} x_pad[n, y + i, x + j, c] * w[i, j, c, d]
  x, w = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = w.shape[:2]
  (top, bottom), (left, right) = padding
  padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  h_out, w_out = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i : i + h_out, j : j + w_out]
      out = out + np.einsum("nyxc,cd->nyxd", window, w[i, j])
  return out


@pytest.mark.parametrize(
  "shape",
  [
    (4, 9, 9, 1, 5, (5, 5)),  # one input channel, odd kernel
    (6, 8, 7, 3, 4, (4, 4)),  # even kernel: SAME pads (1, 2)
    (2, 5, 6, 4, 3, (3, 2)),  # rectangular kernel and image
    (3, 10, 10, 1, 8, (9, 9)),  # the paper networks' first layer, small
  ],
)
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_the_forward_by_rows_equals_the_definition_and_xla(shape, padding):
  x, kernel = inputs(*shape, seed=41)
  assert _rows_param(x, kernel, padding)
  ours = jax.jit(lambda x, w: rows_conv(x, w, padding))(x, kernel)
  pads = padding
  if isinstance(pads, str):
    pads = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1), pads)
  expected = _rows_from_the_definition(x, kernel, pads)
  scale = float(np.max(np.abs(expected)))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6 * scale)
  np.testing.assert_allclose(
    ours, xla_conv(x, kernel, padding), rtol=0, atol=1e-6 * scale
  )


def test_the_forward_by_rows_gradients_jit_vmap_and_forward_mode():
  """Only the forward pass changes: gradients (checked numerically and
  against XLA's), vmap over inputs and kernels, and forward mode."""
  x, kernel = inputs(3, 7, 6, 2, 3, (3, 3), seed=42)
  check_grads(rows_conv, (x, kernel), order=1, modes=("rev",), atol=2e-2)
  check_grads(rows_conv, (x, kernel), order=1, modes=("fwd",), atol=2e-2)
  g = jnp.asarray(np.random.default_rng(43).normal(size=(3, 7, 6, 3)))
  ours = jax.jit(jax.grad(lambda x, w: jnp.sum(rows_conv(x, w) * g), (0, 1)))
  theirs = jax.grad(lambda x, w: jnp.sum(xla_conv(x, w) * g), (0, 1))
  for a, b in zip(ours(x, kernel), theirs(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  kernels = jnp.stack([kernel, 2 * kernel])
  xs = jnp.stack([x, -x])
  for in_axes, args in [((0, None), (xs, kernel)), ((0, 0), (xs, kernels))]:
    np.testing.assert_allclose(
      jax.jit(jax.vmap(rows_conv, in_axes))(*args),
      jax.vmap(xla_conv, in_axes)(*args),
      rtol=1e-5,
      atol=1e-5,
    )


def test_the_forward_by_rows_applies_to_narrow_layers_under_eigen():
  """Layers of at most 4 input channels and kernels more than one column
  wide; only under 'patches' or 'im2col' with library='eigen'; the layer
  functions are one object each, so separately built models have equal
  graph definitions."""
  narrow, kernel = inputs(2, 6, 6, 4, 3, (3, 3))
  assert _rows_param(narrow, kernel)
  wide, wide_kernel = inputs(2, 6, 6, 5, 3, (3, 3))
  assert not _rows_param(wide, wide_kernel)
  column, column_kernel = inputs(2, 6, 6, 1, 3, (3, 1))
  assert not _rows_param(column, column_kernel)

  def layer(method, library):
    with convolution.weight_gradient(method, library=library):
      return convolution.conv(1, 3, (3, 3), rngs=nnx.Rngs(0))

  for method in ("patches", "im2col"):
    assert layer(method, "eigen").conv_general_dilated.keywords == {
      "rows": True
    }
    assert layer(method, "eigen").conv_general_dilated is (
      layer(method, "eigen").conv_general_dilated
    )
    for library in ("ynnpack", None):
      assert not isinstance(
        layer(method, library).conv_general_dilated, functools.partial
      )
  assert layer("xla", "eigen").conv_general_dilated is lax.conv_general_dilated
  a, b = layer("patches", "eigen"), layer("patches", "eigen")
  assert nnx.graphdef(a) == nnx.graphdef(b)
  x = jnp.asarray(np.random.default_rng(44).normal(size=(2, 8, 8, 1)))
  np.testing.assert_allclose(a(x), layer("xla", None)(x), rtol=1e-5, atol=1e-5)
