"""ONNX export: the model's graph written layer by layer.

The graph is written by this module, layer by layer from the model's
modules (Conv, MaxPool, AveragePool, Gemm, Relu), and each spatial transformer's sampler becomes ONNX ``GridSample`` (opset
16 or later), which defines the same sampling as
``torch.nn.functional.grid_sample`` and so as :func:`stn_jax.grid_sample`
for modes bilinear, nearest and bicubic, padding modes zeros, border and
reflection, and both ``align_corners``. Opset 20 renamed the modes
``'linear'`` and ``'cubic'``; the right names are written for the opset.
Transforms: affine, attention and projective (the grid is computed in the
graph from the regressed parameters). What has no ONNX equivalent here is
refused with a ``ValueError`` naming it: ``padding_mode='fill'``, the TPS
transform, the IC-STN, the ResNets, local contrast normalisation. Needs
the ``onnx`` extra (``pip install 'stn_jax[onnx]'``: onnx, onnxruntime).

A converter (jax2onnx) was not used: installing it downgrades
orbax-checkpoint below the version stn_jax uses (it depends on
orbax-export), and the sampler must become one ``GridSample`` node.

:func:`export_onnx` returns the ``onnx.ModelProto``;
:func:`stn_jax.export.export` (``format='onnx'``) writes it to a file.
"""

from __future__ import annotations

import numpy as np

DEFAULT_OPSET = 20
MIN_OPSET = 16


def _import_onnx():
  try:
    import onnx
  except ImportError as error:
    raise ImportError(
      "ONNX export needs the onnx package: pip install 'stn_jax[onnx]' "
      "(or pip install onnx onnxruntime)."
    ) from error
  return onnx


class _Graph:
  """Collects ONNX nodes and initialisers with fresh names."""

  def __init__(self, onnx, opset):
    self.onnx = onnx
    self.opset = opset
    self.nodes = []
    self.initializers = []
    self._count = 0

  def name(self, hint):
    self._count += 1
    return f"{hint}_{self._count}"

  def const(self, value, hint="const"):
    from onnx import numpy_helper

    name = self.name(hint)
    self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type, inputs, hint=None, **attrs):
    out = self.name(hint or op_type.lower())
    self.nodes.append(
      self.onnx.helper.make_node(op_type, list(inputs), [out], **attrs)
    )
    return out


def _unsupported(what):
  return ValueError(
    f"ONNX export: {what} has no ONNX equivalent in stn_jax's exporter "
    "(supported: FCN, CNN, ST-FCN and ST-CNN with affine, attention or "
    "projective transforms, the GTSRB CNN with or without transformers and "
    "without contrast normalisation); use --format=stablehlo."
  )


def _conv(g, module, x):
  """An ``nnx.Conv`` on an NCHW tensor."""
  from jax import lax

  kernel = np.asarray(module.kernel[...], np.float32)  # (kh, kw, in, out)
  strides = module.strides or 1
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  for attribute in ("input_dilation", "kernel_dilation"):
    value = getattr(module, attribute, 1)
    if value not in (1, None, (1, 1)):
      raise _unsupported(f"a convolution with {attribute}={value}")
  if module.feature_group_count != 1:
    raise _unsupported("a grouped convolution")
  padding = module.padding
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise _unsupported(f"convolution padding {padding!r}")
    pads = lax.padtype_to_pads((0, 0), kernel.shape[:2], strides, padding)
    # padtype_to_pads needs the input size for strides > 1.
    if strides != (1, 1) and padding == "SAME":
      raise _unsupported("a strided 'SAME' convolution")
  else:
    pads = [tuple(p) for p in padding]
  inputs = [x, g.const(kernel.transpose(3, 2, 0, 1), "kernel")]
  if module.use_bias:
    inputs.append(g.const(np.asarray(module.bias[...], np.float32), "bias"))
  return g.op(
    "Conv",
    inputs,
    kernel_shape=list(kernel.shape[:2]),
    strides=list(strides),
    pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
  )


def _linear(g, module, x):
  """An ``nnx.Linear`` on ``(N, F)``."""
  inputs = [x, g.const(np.asarray(module.kernel[...], np.float32), "kernel")]
  if module.use_bias:
    inputs.append(g.const(np.asarray(module.bias[...], np.float32), "bias"))
  return g.op("Gemm", inputs)


def _max_pool(g, x, window):
  if window == 1:
    return x
  return g.op(
    "MaxPool", [x], kernel_shape=[window, window], strides=[window, window]
  )


def _flatten_nhwc(g, x):
  """NCHW -> ``(N, H * W * C)`` in NHWC order (as the models flatten)."""
  return g.op("Flatten", [g.op("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)


def _relu(g, x):
  return g.op("Relu", [x])


def _localisation(g, module, x):
  from stn_jax.models import layers

  if isinstance(module, layers.ConvLocalisation):
    x = _max_pool(g, x, module.downsample)
    x = _max_pool(g, _relu(g, _conv(g, module.conv1, x)), 2)
    x = _relu(g, _conv(g, module.conv2, x))
    x = _relu(g, _linear(g, module.fc, _flatten_nhwc(g, x)))
    return _linear(g, module.head, x)
  if isinstance(module, layers.FCLocalisation):
    x = _flatten_nhwc(g, x)
    for layer in module.hidden:
      x = _relu(g, _linear(g, layer, x))
    return _linear(g, module.head, x)
  raise _unsupported(f"the localisation net {type(module).__name__}")


def _grid_sample_mode(mode, opset):
  names = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}
  if mode not in names:
    raise _unsupported(f"sampler mode {mode!r}")
  return names[mode] if opset >= 20 else mode


def _transformer(g, module, x):
  """A SpatialTransformer on NCHW ``x``: localisation -> grid ->
  GridSample."""
  from stn_jax import ops
  from stn_jax.models import layers

  if isinstance(module, layers.ICSpatialTransformer):
    raise _unsupported("the IC-STN (inverse compositional transformer)")
  if module.transform not in ("affine", "attention", "projective"):
    raise _unsupported(f"the {module.transform!r} transform")
  if module.padding_mode not in ops.PADDING_MODES:
    raise _unsupported(f"sampler padding_mode {module.padding_mode!r}")
  mode = _grid_sample_mode(module.mode, g.opset)
  params = _localisation(g, module.localisation, x)  # (N, P)
  if module.transform == "attention":  # (s, tx, ty) -> [s 0 tx; 0 s ty]
    pick = np.zeros((3, 6), np.float32)
    pick[0, 0] = pick[0, 4] = pick[1, 2] = pick[2, 5] = 1
    params = g.op("MatMul", [params, g.const(pick, "attention")])
  if module.transform == "projective":  # append h33 = 1
    ones = g.op(
      "Add",
      [
        g.op(
          "Mul",
          [g.op("Slice", [params, *_slice(g, 0, 1)]), g.const(np.float32(0))],
        ),
        g.const(np.float32(1.0)),
      ],
    )
    params = g.op("Concat", [params, ones], axis=1)
    rows = 3
  else:
    rows = 2
  # (N, rows, 3) -> (N, 3, rows); the output points (P, 3) as (x, y, 1).
  matrix = g.op(
    "Transpose",
    [g.op("Reshape", [params, g.const(np.array([-1, rows, 3], np.int64))])],
    perm=[0, 2, 1],
  )
  height, width = module.out_size
  xs = ops.base_coordinates(width, align_corners=module.align_corners)
  ys = ops.base_coordinates(height, align_corners=module.align_corners)
  gx, gy = np.meshgrid(xs, ys)
  base = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], -1)
  points = g.op("MatMul", [g.const(base.astype(np.float32), "points"), matrix])
  if rows == 3:  # (u, v, w) -> (u / w, v / w)
    uv = g.op("Slice", [points, *_slice(g, 0, 2, axis=2)])
    w = g.op("Slice", [points, *_slice(g, 2, 3, axis=2)])
    points = g.op("Div", [uv, w])
  grid = g.op(
    "Reshape",
    [points, g.const(np.array([-1, height, width, 2], np.int64))],
    hint="grid",
  )
  return g.op(
    "GridSample",
    [x, grid],
    mode=mode,
    padding_mode=module.padding_mode,
    align_corners=int(module.align_corners),
  )


def _slice(g, start, end, axis=1):
  return (
    g.const(np.array([start], np.int64)),
    g.const(np.array([end], np.int64)),
    g.const(np.array([axis], np.int64)),
  )


def _model(g, model, x):
  """Any supported model on NCHW ``x``; returns the logits' name."""
  from stn_jax.models import classifiers

  if isinstance(model, classifiers.FCN):
    x = _flatten_nhwc(g, x)
    x = _relu(g, _linear(g, model.fc1, x))
    x = _relu(g, _linear(g, model.fc2, x))
    return _linear(g, model.out, x)
  if isinstance(model, classifiers.CNN):
    x = _max_pool(g, _relu(g, _conv(g, model.conv1, x)), 2)
    x = _max_pool(g, _relu(g, _conv(g, model.conv2, x)), 2)
    return _linear(g, model.out, _flatten_nhwc(g, x))
  if isinstance(model, classifiers.STClassifier):
    x = _transformer(g, model.transformer, x)
    if model.pool_output:
      x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return _model(g, model.classifier, x)
  if isinstance(model, classifiers.GtsrbCNN):
    if model.contrast_norm_input or model.contrast_norm_blocks:
      raise _unsupported("local contrast normalisation (GTSRB CNN)")
    for i, layer in enumerate(model.convs):
      if i < len(model.transformers):
        x = _transformer(g, model.transformers[i], x)
      x = _max_pool(g, _relu(g, _conv(g, layer, x)), 2)
    x = _relu(g, _linear(g, model.fc, _flatten_nhwc(g, x)))
    return _linear(g, model.out, x)
  raise _unsupported(f"the model {type(model).__name__}")


def export_onnx(restored, *, opset: int = DEFAULT_OPSET):
  """The model as an ONNX ``ModelProto``.

  Args:
    restored: a :class:`stn_jax.inference.Restored`.
    opset: ONNX opset, >= 16 (``GridSample``); default 20.

  Returns:
    ``onnx.ModelProto`` with input ``images``: uint8 ``(N, H, W, C)``
    (``N`` symbolic, ``'batch'``) and output ``logits``: float32
    ``(N, num_classes)``; checked by ``onnx.checker``.

  Raises:
    ValueError: ``opset`` below 16 or above the installed onnx's newest,
      or a model, transform or sampler mode
      without an ONNX equivalent (the message names it).
    ImportError: onnx is not installed (the message names the extra).
  """
  if (
    isinstance(opset, bool)
    or not isinstance(opset, (int, np.integer))
    or opset < MIN_OPSET
  ):
    raise ValueError(
      f"opset must be an int >= {MIN_OPSET} (ONNX GridSample); got {opset!r}."
    )
  onnx = _import_onnx()
  from onnx import TensorProto, helper

  newest = onnx.defs.onnx_opset_version()
  if opset > newest:  # else written into the model as it is
    raise ValueError(
      f"opset must be <= {newest}, the newest the installed onnx "
      f"{onnx.__version__} knows; got {opset}."
    )

  g = _Graph(onnx, int(opset))
  height, width, channels = restored.in_shape
  normalization = restored.normalization
  mean = np.broadcast_to(
    np.asarray(normalization.mean, np.float32), (channels,)
  )
  std = np.broadcast_to(np.asarray(normalization.std, np.float32), (channels,))
  # x = (u / 255 - mean) / std = u * (1 / (255 std)) - mean / std, in the
  # library's order of operations (two divisions) for the same rounding.
  x = g.op("Cast", ["images"], to=TensorProto.FLOAT)
  x = g.op("Div", [x, g.const(np.float32(255.0))])
  x = g.op("Sub", [x, g.const(mean.copy(), "mean")])
  x = g.op("Div", [x, g.const(std.copy(), "std")])
  x = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # NHWC -> NCHW
  logits = _model(g, restored.model, x)
  g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
  num_classes = int(restored.config.num_classes)
  graph = helper.make_graph(
    g.nodes,
    "stn_jax",
    [
      helper.make_tensor_value_info(
        "images", TensorProto.UINT8, ["batch", height, width, channels]
      )
    ],
    [
      helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch", num_classes]
      )
    ],
    g.initializers,
  )
  model = helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid("", int(opset))],
    producer_name="stn_jax",
  )
  model.ir_version = min(model.ir_version, 10)  # onnxruntime's readable IR
  onnx.checker.check_model(model)
  return model
