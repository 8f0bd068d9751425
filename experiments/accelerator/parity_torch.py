"""stn_jax's samplers and grids against PyTorch on one device, values and
gradients, on random cases; prints (and writes) a markdown table.

Made for the lent GPU (issue 15): stn_jax runs on JAX's default device and
PyTorch on ``--torch_device``, so on a GPU machine both sides run CUDA code.
The test suite already checks the same ops against PyTorch on the CPU; this
script is the CUDA side of that check. Each case draws its shapes and a grid
reaching past the image (``|x|, |y| <= 1.3``), so every padding rule is
exercised, then compares the output and the gradients of
``sum(output * cotangent)`` with respect to the image and the grid (and theta
for ``affine_grid``). Errors are the largest absolute difference over all
cases, divided by the largest magnitude of PyTorch's values (so 1e-6 means
"float32 rounding").

  python experiments/accelerator/parity_torch.py --torch_device cuda \
      --cases 6 --out /tmp/parity.md
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax import ops

# float32 on both sides; a scatter of gradients adds in an order of its own
# (PyTorch's CUDA atomics, XLA's scatter), so gradients differ by rounding.
TOLERANCE = 1e-4


def _relative_error(got, want) -> float:
  want = np.asarray(want, np.float64)
  got = np.asarray(got, np.float64)
  if got.shape != want.shape:
    raise ValueError(f"shapes differ: stn_jax {got.shape}, torch {want.shape}")
  scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
  return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def _random_case(rng, volumetric=False):
  n = int(rng.integers(1, 4))
  c = int(rng.integers(1, 5))
  if volumetric:
    in_spatial = tuple(int(s) for s in rng.integers(2, 12, size=3))
    out_spatial = tuple(int(s) for s in rng.integers(2, 12, size=3))
  else:
    in_spatial = tuple(int(s) for s in rng.integers(2, 40, size=2))
    out_spatial = tuple(int(s) for s in rng.integers(2, 40, size=2))
  image = rng.normal(size=(n, *in_spatial, c)).astype(np.float32)
  grid = rng.uniform(-1.3, 1.3, size=(n, *out_spatial, len(in_spatial)))
  cotangent = rng.normal(size=(n, *out_spatial, c)).astype(np.float32)
  return image, grid.astype(np.float32), cotangent


def _channels_first(array):
  return np.moveaxis(array, -1, 1).copy()


def _channels_last(array):
  return np.moveaxis(array, 1, -1)


def _torch_sample(torch, device, image, grid, cotangent, **options):
  timage = torch.tensor(
    _channels_first(image), device=device, requires_grad=True
  )
  tgrid = torch.tensor(grid, device=device, requires_grad=True)
  out = torch.nn.functional.grid_sample(timage, tgrid, **options)
  out.backward(torch.tensor(_channels_first(cotangent), device=device))
  return (
    _channels_last(out.detach().cpu().numpy()),
    _channels_last(timage.grad.cpu().numpy()),
    tgrid.grad.cpu().numpy(),
  )


def _jax_sample(sample_fn, image, grid, cotangent, **options):
  def loss(image, grid):
    out = sample_fn(image, grid, **options)
    return jnp.sum(out * cotangent), out

  (_, out), (d_image, d_grid) = jax.jit(
    jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  )(jnp.asarray(image), jnp.asarray(grid))
  return np.asarray(out), np.asarray(d_image), np.asarray(d_grid)


def sampler_rows(torch, device, cases, seed, volumetric=False):
  """One row per (mode, padding, align_corners): the largest relative
  errors of the output, d_image and d_grid over ``cases`` random cases."""
  rows = []
  modes = ops.VOLUMETRIC_MODES if volumetric else ops.MODES
  sample_fn = ops.grid_sample_3d if volumetric else ops.grid_sample
  combos = itertools.product(modes, ops.PADDING_MODES, (False, True))
  for index, (mode, padding, align) in enumerate(combos):
    rng = np.random.default_rng([seed, index, int(volumetric)])
    errors = np.zeros(3)
    for _ in range(cases):
      image, grid, cotangent = _random_case(rng, volumetric)
      options = dict(mode=mode, padding_mode=padding, align_corners=align)
      got = _jax_sample(sample_fn, image, grid, cotangent, **options)
      want = _torch_sample(torch, device, image, grid, cotangent, **options)
      errors = np.maximum(
        errors, [_relative_error(g, w) for g, w in zip(got, want)]
      )
    rows.append(((mode, padding, align), errors))
  return rows


def affine_grid_rows(torch, device, cases, seed, volumetric=False):
  """The largest relative errors of affine_grid(_3d) and d_theta."""
  rows = []
  for align in (False, True):
    rng = np.random.default_rng([seed, 100 + int(align), int(volumetric)])
    errors = np.zeros(2)
    for _ in range(cases):
      n = int(rng.integers(1, 5))
      dims = 3 if volumetric else 2
      out_spatial = tuple(int(s) for s in rng.integers(2, 30, size=dims))
      theta = rng.normal(size=(n, dims, dims + 1)).astype(np.float32)
      cotangent = rng.normal(size=(n, *out_spatial, dims)).astype(np.float32)
      grid_fn = functools.partial(
        ops.affine_grid_3d if volumetric else ops.affine_grid,
        out_shape=out_spatial,
        align_corners=align,
      )

      def loss(theta, grid_fn=grid_fn, cotangent=cotangent):
        grid = grid_fn(theta)
        return jnp.sum(grid * cotangent), grid

      (_, grid), d_theta = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        jnp.asarray(theta)
      )
      ttheta = torch.tensor(theta, device=device, requires_grad=True)
      tgrid = torch.nn.functional.affine_grid(
        ttheta, (n, 1, *out_spatial), align_corners=align
      )
      tgrid.backward(torch.tensor(cotangent, device=device))
      errors = np.maximum(
        errors,
        [
          _relative_error(grid, tgrid.detach().cpu().numpy()),
          _relative_error(d_theta, ttheta.grad.cpu().numpy()),
        ],
      )
    rows.append((align, errors))
  return rows


def report(torch, device, cases, seed) -> tuple[str, bool]:
  """The markdown report and whether every error is within TOLERANCE."""
  lines = [
    "# stn_jax against PyTorch on one device",
    "",
    f"- stn_jax on JAX {jax.__version__}, device {jax.devices()[0]}",
    f"- PyTorch {torch.__version__} on {device}"
    + (
      f" ({torch.cuda.get_device_name()})"
      if device == "cuda" and torch.cuda.is_available()
      else ""
    ),
    f"- {cases} random cases per row, float32; errors are max |stn_jax - "
    f"torch| / max(1, max |torch|); pass means every error <= {TOLERANCE:g}",
    "",
  ]
  all_ok = True
  for volumetric in (False, True):
    title = "grid_sample_3d (5-D)" if volumetric else "grid_sample"
    lines += [
      f"## {title}",
      "",
      "| mode | padding | align_corners | output | d_image | d_grid | ok |",
      "|---|---|---|---|---|---|---|",
    ]
    for (mode, padding, align), errors in sampler_rows(
      torch, device, cases, seed, volumetric
    ):
      ok = bool(np.all(errors <= TOLERANCE))
      all_ok &= ok
      cells = " | ".join(f"{e:.1e}" for e in errors)
      lines.append(
        f"| {mode} | {padding} | {align} | {cells} | {'yes' if ok else 'NO'} |"
      )
    name = "affine_grid_3d" if volumetric else "affine_grid"
    lines += [
      "",
      f"| {name}: align_corners | grid | d_theta | ok |",
      "|---|---|---|---|",
    ]
    for align, errors in affine_grid_rows(
      torch, device, cases, seed, volumetric
    ):
      ok = bool(np.all(errors <= TOLERANCE))
      all_ok &= ok
      cells = " | ".join(f"{e:.1e}" for e in errors)
      lines.append(f"| {align} | {cells} | {'yes' if ok else 'NO'} |")
    lines.append("")
  lines.append(f"**{'All rows pass.' if all_ok else 'Some rows FAIL.'}**")
  return "\n".join(lines) + "\n", all_ok


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch_device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--cases", type=int, default=6)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="also write the table here")
  args = parser.parse_args(argv)
  if args.cases < 1:
    parser.error(f"--cases: expected a positive count, got {args.cases}")
  try:
    import torch
  except ImportError:
    parser.exit(2, "parity_torch.py: error: PyTorch is not installed\n")
  if args.torch_device == "cuda" and not torch.cuda.is_available():
    parser.exit(
      2,
      "parity_torch.py: error: --torch_device=cuda, but PyTorch "
      "sees no CUDA device\n",
    )
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  text, ok = report(torch, args.torch_device, args.cases, args.seed)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
