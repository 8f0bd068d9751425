"""Export a trained model to StableHLO (``jax.export``) or ONNX.

  python -m stn_jax.export --workdir=RUN --format=stablehlo --out=FILE
  python -m stn_jax.export --workdir=RUN --format=onnx --out=FILE [--opset=20]
  python -m stn_jax.export --pretrained=NAME --format=... --out=FILE

Both exported models take what a user has: ``uint8 (N, H, W, C)`` images
(NHWC, 0-255, at the run's image size, any batch size ``N``) and return
float32 logits ``(N, num_classes)``. The run's input normalisation
(``(pixels / 255 - mean) / std``, :mod:`stn_jax.normalization`) is part of
the exported model.

**StableHLO** (:func:`export_stablehlo`): the forward pass serialised by
``jax.export`` with a symbolic batch size, for the CPU and CUDA. Anyone
with ``jax`` runs it without stn_jax::

  exported = jax.export.deserialize(open(FILE, 'rb').read())
  logits = exported.call(images_uint8)

The spatial sampler is traced as XLA ops (not the CPU kernel, a custom call
that exists only inside stn_jax).

**ONNX** (:func:`stn_jax.export_onnx.export_onnx`): the graph is written
layer by layer by :mod:`stn_jax.export_onnx`, each spatial transformer's
sampler as one ONNX ``GridSample`` node (opset 16 or later).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

import numpy as np

from stn_jax import files
from stn_jax.export_onnx import DEFAULT_OPSET, export_onnx

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda")


def _logits_function(restored):
  """``uint8 (N, H, W, C) -> float32 logits``, normalisation included."""
  import jax.numpy as jnp
  from flax import nnx

  graphdef, state = nnx.split(restored.model)
  normalization = restored.normalization
  mean = jnp.asarray(normalization.mean, jnp.float32)
  std = jnp.asarray(normalization.std, jnp.float32)

  def logits(images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return nnx.merge(graphdef, state)(x).astype(jnp.float32)

  return logits


@contextlib.contextmanager
def _portable_sampler():
  """Traces the sampler as XLA ops: without the CPU kernel (an FFI custom
  call registered by stn_jax only) and without Pallas."""
  from stn_jax.ops import _pallas_sampler

  saved = os.environ.get("STN_JAX_CPU_KERNEL")
  os.environ["STN_JAX_CPU_KERNEL"] = "0"
  try:
    with _pallas_sampler.use_sampler("xla"):
      yield
  finally:
    if saved is None:
      del os.environ["STN_JAX_CPU_KERNEL"]
    else:
      os.environ["STN_JAX_CPU_KERNEL"] = saved


def export_stablehlo(restored, *, platforms=PLATFORMS):
  """The model as a ``jax.export.Exported`` with a symbolic batch size.

  Args:
    restored: a :class:`stn_jax.inference.Restored` (``stn_jax.restore``
      or ``stn_jax.pretrained``).
    platforms: the platforms to lower for (``jax.export`` names).

  Returns:
    ``jax.export.Exported`` taking ``uint8 (N, H, W, C)`` and returning
    float32 ``(N, num_classes)`` for any ``N >= 1``; ``.serialize()``
    gives the bytes that ``jax.export.deserialize`` reads back.
  """
  import jax

  (batch,) = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, *restored.in_shape), np.uint8)
  with _portable_sampler():
    return jax.export.export(
      jax.jit(_logits_function(restored)), platforms=tuple(platforms)
    )(spec)


def export(restored, out: str, *, format: str, opset: int = DEFAULT_OPSET):
  """Writes ``restored``'s model to the file ``out`` in ``format``
  (``'stablehlo'``: ``jax.export`` serialised bytes; ``'onnx'``).

  Returns:
    the number of bytes written.
  """
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}; got {format!r}.")
  if os.path.isdir(out):  # before the work, and before OUT.tmp is written
    raise IsADirectoryError(errno.EISDIR, "Is a directory", out)
  if format == "stablehlo":
    data = bytes(export_stablehlo(restored).serialize())
  else:
    data = export_onnx(restored, opset=opset).SerializeToString()
  folder = os.path.dirname(os.path.abspath(out))
  os.makedirs(folder, exist_ok=True)
  with files.written(out) as temporary, open(temporary, "wb") as f:
    f.write(data)
  return len(data)


USAGE = """python -m stn_jax.export (--workdir=RUN | --pretrained=NAME) \
--format=onnx|stablehlo --out=FILE [--opset=20]

Writes the trained model of RUN (or a pretrained model) to FILE. The
exported model takes uint8 NHWC images (any batch size) and returns
float32 logits; the run's normalisation is part of it. See
docs/export.md.
"""


def main(argv=None) -> int:
  """``python -m stn_jax.export``; returns the exit status."""
  from absl import flags

  from stn_jax import cli

  values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "The trained run.", flag_values=values)
  flags.DEFINE_string(
    "pretrained", None, "A pretrained model's name.", flag_values=values
  )
  flags.DEFINE_enum("format", None, FORMATS, "Format.", flag_values=values)
  flags.DEFINE_string("out", None, "The file to write.", flag_values=values)
  flags.DEFINE_integer(
    "opset", DEFAULT_OPSET, "ONNX opset (>= 16).", flag_values=values
  )
  flags.mark_flag_as_required("format", flag_values=values)
  flags.mark_flag_as_required("out", flag_values=values)

  def body(positional):
    if positional:
      raise ValueError(f"expected no positional arguments; got {positional}.")
    if bool(values.workdir) == bool(values.pretrained):
      raise ValueError(
        "give exactly one of --workdir (a trained run) and --pretrained (a "
        "pretrained model's name)."
      )
    if values.workdir:
      if not os.path.isdir(values.workdir):
        raise FileNotFoundError(
          f"--workdir {values.workdir!r} is not a folder."
        )
      from stn_jax.inference import restore

      restored = restore(values.workdir)
    else:
      from stn_jax import model_zoo

      restored = model_zoo.load(values.pretrained)
    size = export(
      restored, values.out, format=values.format, opset=values.opset
    )
    print(f"wrote {values.out} ({values.format}, {size} bytes)")
    return 0

  try:
    return cli.run(
      body, values, argv, prog="python -m stn_jax.export", doc=USAGE
    )
  except ImportError as error:  # onnx missing: one line, no traceback
    print(f"python -m stn_jax.export: error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
