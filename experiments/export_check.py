r"""Exported models against Restored.predict on a whole test set.

  python experiments/export_check.py --pretrained=rts_st_cnn_small \
    [--workdir=RUN ...] [--out=experiments/results/export.md]

For each model: exports StableHLO and ONNX (stn_jax.export) into a
temporary folder, runs both on the run's whole test split (the StableHLO
file through jax.export.deserialize, the ONNX one in onnxruntime on the
CPU), and compares them with ``predict``: predicted classes that agree,
the maximum absolute logit difference, the test error of each; then the
file sizes and onnxruntime's latency per image (batch 1: median of 300
calls after 20 warm-up calls; batch 256: median of 20 calls, divided by
256). Writes a markdown report.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from stn_jax import export, model_packaging, model_zoo, provenance
from stn_jax.inference import restore

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("pretrained", [], "Pretrained model names.")
flags.DEFINE_multi_string("workdir", [], "Trained runs.")
flags.DEFINE_string("out", "experiments/results/export.md", "Report.")


def _median_seconds(function, calls, warmup):
  for _ in range(warmup):
    function()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def check(name, restored, folder):
  import onnxruntime as ort

  images, labels = model_packaging.load_test_split(restored.config)
  start = time.perf_counter()
  expected = restored.predict(images)
  predict_s = time.perf_counter() - start
  paths = {}
  for format in export.FORMATS:
    paths[format] = os.path.join(folder, f"{name}.{format}")
    export.export(restored, paths[format], format=format)
  session = ort.InferenceSession(
    paths["onnx"], providers=["CPUExecutionProvider"]
  )
  run_onnx = lambda x: session.run(None, {"images": x})[0]
  with open(paths["stablehlo"], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  chunk = 500
  results = {
    "onnx": np.concatenate(
      [run_onnx(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    ),
    "stablehlo": np.concatenate(
      [
        np.asarray(exported.call(images[i : i + chunk]))
        for i in range(0, len(images), chunk)
      ]
    ),
  }
  rows = []
  for format, logits in results.items():
    rows.append(
      dict(
        format=format,
        agree=int((logits.argmax(1) == expected.argmax(1)).sum()),
        max_diff=float(np.abs(logits - expected).max()),
        error=float((logits.argmax(1) != labels).mean()),
        size=os.path.getsize(paths[format]),
      )
    )
  one = images[:1]
  batch = images[:256]
  latency_1 = _median_seconds(lambda: run_onnx(one), 300, 20)
  latency_256 = _median_seconds(lambda: run_onnx(batch), 20, 3) / len(batch)
  return dict(
    name=name,
    dataset=restored.config.dataset,
    model=restored.config.model,
    count=len(labels),
    error=float((expected.argmax(1) != labels).mean()),
    predict_s=predict_s,
    rows=rows,
    latency_1=latency_1,
    latency_256=latency_256,
    opset=export.DEFAULT_OPSET,
  )


def report(results, command):
  import onnxruntime

  lines = [
    "# Exported models against `predict`",
    "",
    "Each model exported with `python -m stn_jax.export` (StableHLO through",
    "`jax.export`, batch-polymorphic; ONNX opset "
    f"{export.DEFAULT_OPSET} with the sampler as `GridSample`), run on its",
    "dataset's whole test split and compared with `Restored.predict` of the",
    "same model. StableHLO: read back with `jax.export.deserialize` and",
    "called; ONNX: onnxruntime's CPU provider.",
    "",
    f"Command: `{command}`",
    "",
    f"Commit {provenance.commit_description()}; machine: "
    f"{provenance.machine_description()} (shared with other",
    "jobs while measured, so latencies are upper bounds); Python "
    f"{platform.python_version()}, jax {jax.__version__}, onnxruntime "
    f"{onnxruntime.__version__}.",
    "",
  ]
  for r in results:
    lines += [
      f"## {r['name']} ({r['model']} on {r['dataset']})",
      "",
      f"`predict`: test error {100 * r['error']:.2f}% on {r['count']} test "
      f"images ({r['predict_s']:.1f} s for all).",
      "",
      "| format | classes equal to predict | max abs logit diff | test error "
      "| file size |",
      "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
      lines.append(
        f"| {row['format']} | {row['agree']} / {r['count']} | "
        f"{row['max_diff']:.2e} | {100 * row['error']:.2f}% | "
        f"{row['size'] / 1024:.0f} KiB ({row['size']} B) |"
      )
    lines += [
      "",
      f"onnxruntime latency on this CPU: {1e3 * r['latency_1']:.3f} ms per "
      f"image at batch 1 (median of 300 calls), "
      f"{1e3 * r['latency_256']:.3f} ms per image at batch 256 (median of "
      "20 calls / 256).",
      "",
    ]
  return "\n".join(lines)


def main(argv):
  del argv
  models = [(name, model_zoo.load(name)) for name in FLAGS.pretrained]
  models += [
    (os.path.basename(os.path.normpath(w)), restore(w)) for w in FLAGS.workdir
  ]
  if not models:
    raise app.UsageError("give --pretrained or --workdir.")
  with tempfile.TemporaryDirectory() as folder:
    results = [check(name, restored, folder) for name, restored in models]
  text = report(results, "python " + " ".join(sys.argv))
  with open(FLAGS.out, "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  app.run(main)
