"""How 2-D ``grid_sample`` composes with every JAX transform.

``sample`` is a ``jax.custom_jvp`` function: its tangent rule is the linear
map ``_sampler_math.tangent`` applied to the tangents that are not zero.
That map is bound as its own primitive, ``tangent_p``, so that reverse mode
(which JAX gets by transposing the tangent rule) can use a hand-written
transpose: ``cotangents``, the C++ kernel on the CPU and XLA ops elsewhere.
Each piece is itself differentiable, so every order works:

* ``tangent_p``'s own JVP is the JVP of ``_sampler_math.tangent`` (plain
  XLA ops); its batching rule folds the vmapped axis into the batch axis;
  its transpose is ``cotangents``.
* ``cotangents`` is a ``jax.custom_jvp`` whose primal is the fast kernel and
  whose tangent is the JVP of ``_sampler_math.backward`` (plain XLA ops,
  transposable), so grad of grad and ``hessian`` work with the kernel on.

A tangent that is a symbolic zero is left out of the primitive, so the
transpose skips its work: gradients to the grid alone (an STN's sampler
reads the input image, which needs no gradient) run no image scatter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from stn_jax.ops import _cpu_kernel, _pallas_sampler, _sampler_math

__all__ = ["sample"]


def _split(operands, has_image_tangent, has_grid_tangent):
  """(image, grid, *present tangents) -> (image, grid, d_image, d_grid)."""
  image, grid, *rest = operands
  d_image = rest.pop(0) if has_image_tangent else None
  d_grid = rest.pop(0) if has_grid_tangent else None
  return image, grid, d_image, d_grid


def _tangent_impl(
  *operands,
  mode,
  padding_mode,
  align_corners,
  deterministic,
  has_image_tangent,
  has_grid_tangent,
):
  del deterministic  # only the transpose has a summation order
  image, grid, d_image, d_grid = _split(
    operands, has_image_tangent, has_grid_tangent
  )
  return _sampler_math.tangent(
    image, grid, d_image, d_grid, mode, padding_mode, align_corners
  )


tangent_p = Primitive("stn_grid_sample_tangent")
tangent_p.def_impl(_tangent_impl)
mlir.register_lowering(
  tangent_p, mlir.lower_fun(_tangent_impl, multiple_results=False)
)


@tangent_p.def_abstract_eval
def _tangent_abstract_eval(image, grid, *tangents, **params):
  del tangents, params
  return image.update(shape=(*grid.shape[:-1], image.shape[-1]))


def _tangent_jvp(primals, tangents, **params):
  out = tangent_p.bind(*primals, **params)
  tangents = [ad.instantiate_zeros(t) for t in tangents]
  _, out_tangent = jax.jvp(
    functools.partial(_tangent_impl, **params), primals, tangents
  )
  return out, out_tangent


def _tangent_batch(operands, dims, **params):
  size = next(x.shape[d] for x, d in zip(operands, dims) if d is not None)
  # The vmapped axis joins the batch axis (unbatched operands broadcast).
  folded = []
  for x, d in zip(operands, dims):
    x = batching.bdim_at_front(x, d, size)
    folded.append(x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]))
  out = tangent_p.bind(*folded, **params)
  return out.reshape(size, -1, *out.shape[1:]), 0


def _tangent_transpose(cotangent, *operands, **params):
  has_image, has_grid = params["has_image_tangent"], params["has_grid_tangent"]
  image, grid, d_image, d_grid = _split(operands, has_image, has_grid)
  if ad.is_undefined_primal(image) or ad.is_undefined_primal(grid):
    raise NotImplementedError(
      "grid_sample's tangent map is linear in the tangents only."
    )
  want_image = has_image and ad.is_undefined_primal(d_image)
  want_grid = has_grid and ad.is_undefined_primal(d_grid)
  if type(cotangent) is ad.Zero:
    ct_image = ad.Zero(d_image.aval) if want_image else None
    ct_grid = ad.Zero(d_grid.aval) if want_grid else None
  else:
    ct_image, ct_grid = cotangents(
      image,
      grid,
      cotangent,
      params["mode"],
      params["padding_mode"],
      params["align_corners"],
      params["deterministic"],
      want_image,
      want_grid,
    )
  result = [None, None]
  if has_image:
    result.append(ct_image)
  if has_grid:
    result.append(ct_grid)
  return result


ad.primitive_jvps[tangent_p] = _tangent_jvp
ad.primitive_transposes[tangent_p] = _tangent_transpose
batching.primitive_batchers[tangent_p] = _tangent_batch


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def cotangents(
  image,
  grid,
  cotangent,
  mode,
  padding_mode,
  align_corners,
  deterministic,
  image_grad,
  grid_grad,
):
  """(image cotangent or None, grid cotangent or None) of ``cotangent``.

  On the CPU, the C++ kernel (deterministic: each thread owns whole
  images); elsewhere XLA ops (``deterministic`` picks the sorted sum).
  """
  options = (mode, padding_mode, align_corners)
  flags = dict(image_grad=image_grad, grid_grad=grid_grad)

  def xla(*args):
    return _sampler_math.backward(*args, *options, deterministic, **flags)

  if not _cpu_kernel.enabled(image.dtype):
    return xla(image, grid, cotangent)
  # Both branches are traced; the platform being compiled for picks one.
  return jax.lax.platform_dependent(
    image,
    grid,
    cotangent,
    default=xla,
    cpu=lambda *args: _cpu_kernel.backward(*args, *options, **flags),
  )


@cotangents.defjvp
def _cotangents_jvp(
  mode,
  padding_mode,
  align_corners,
  deterministic,
  image_grad,
  grid_grad,
  primals,
  tangents,
):
  options = (mode, padding_mode, align_corners, deterministic)
  out = cotangents(*primals, *options, image_grad, grid_grad)
  _, out_tangent = jax.jvp(
    lambda *args: _sampler_math.backward(
      *args, *options, image_grad, grid_grad
    ),
    primals,
    tangents,
  )
  return out, out_tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def sample(
  image, grid, mode, padding_mode, align_corners, deterministic, sampler
):
  """image (N, H, W, C), grid (N, P, 2) -> (N, P, C); options static.

  ``sampler`` (``_pallas_sampler.selected()``) picks the forward pass:
  ``'pallas'`` runs the Pallas kernel (``_pallas_sampler.forward``);
  ``'xla'`` runs, on the CPU, the C++ forward kernel for bilinear sampling
  where it applies (``_cpu_kernel.has_forward``), and XLA ops elsewhere.
  Derivatives are the same either way: only the primal is replaced.
  """
  del deterministic  # only gradients have a summation order
  options = (mode, padding_mode, align_corners)
  if sampler == "pallas":
    return _pallas_sampler.forward(image, grid, *options)

  def xla(image, grid):
    return _sampler_math.forward(image, grid, *options)

  if not (
    _cpu_kernel.enabled(image.dtype)
    and _cpu_kernel.has_forward(image.shape, mode)
  ):
    return xla(image, grid)
  return jax.lax.platform_dependent(
    image,
    grid,
    default=xla,
    cpu=lambda *args: _cpu_kernel.forward(*args, *options),
  )


@functools.partial(sample.defjvp, symbolic_zeros=True)
def _sample_jvp(
  mode, padding_mode, align_corners, deterministic, sampler, primals, tangents
):
  image, grid = primals
  d_image, d_grid = (
    None if isinstance(t, SymbolicZero) else t for t in tangents
  )
  if mode == "nearest":  # piecewise constant in the grid
    d_grid = None
  out = sample(
    image, grid, mode, padding_mode, align_corners, deterministic, sampler
  )
  if d_image is None and d_grid is None:
    return out, jnp.zeros_like(out)
  present = [t for t in (d_image, d_grid) if t is not None]
  out_tangent = tangent_p.bind(
    image,
    grid,
    *present,
    mode=mode,
    padding_mode=padding_mode,
    align_corners=align_corners,
    deterministic=deterministic,
    has_image_tangent=d_image is not None,
    has_grid_tangent=d_grid is not None,
  )
  return out, out_tangent
