# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial: spatial transformers in stn_jax
#
# A jupytext notebook (`jupytext --to notebook docs/tutorial.py` makes the
# `.ipynb`; `python docs/tutorial.py` runs it as a script). It shows the
# spatial ops on a real digit, trains a small ST-CNN on RTS MNIST while
# watching its transformer, restores and evaluates it, and exports it to
# ONNX. On a 2-core CPU it runs in a few minutes; a test runs it at a tiny
# budget (`tests/test_tutorial.py`) and `docs/tutorial.md` is the rendered
# copy with its outputs.
#
# Settings, from the environment so the test can shrink them:
# `STN_TUTORIAL_STEPS` (training steps, default 600), `STN_TUTORIAL_BATCH`
# (batch size, default the config's 128), `STN_TUTORIAL_TFDS_DIR` (built
# datasets; default TFDS's), `STN_TUTORIAL_OUT` (figures and the run).

# %%
import os
import pathlib

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

import stn_jax

STEPS = int(os.environ.get("STN_TUTORIAL_STEPS", "600"))
BATCH = int(os.environ.get("STN_TUTORIAL_BATCH", "0"))  # 0: the config's
TFDS_DIR = os.environ.get("STN_TUTORIAL_TFDS_DIR", "")
OUT = pathlib.Path(os.environ.get("STN_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The spatial ops on a real digit
#
# The RTS test split (uint8, NHWC, 42x42), built from the MNIST files the
# first time it is read. `affine_grid(theta, (H, W))` gives, for every
# output pixel, the normalised input point `(x, y)` it reads (`-1`
# left/top, `1` right/bottom); `grid_sample` reads the image there.

# %%
from stn_jax.data import datasets  # noqa: E402

test = datasets.load_arrays(
  "distorted_mnist/rts", "test", tfds_dir=TFDS_DIR or None
)
digits, labels = test["image"][:16], test["label"][:16]
image = digits[:1].astype(np.float32) / 255  # (1, 42, 42, 1) in [0, 1]

angle = np.deg2rad(30)
theta = jnp.array(
  [
    [
      [np.cos(angle) * 0.7, -np.sin(angle) * 0.7, 0.1],
      [np.sin(angle) * 0.7, np.cos(angle) * 0.7, 0.0],
    ]
  ],
  jnp.float32,
)  # rotate by 30 degrees, zoom in by 1/0.7, shift right
grid = stn_jax.affine_grid(theta, (42, 42))  # (1, 42, 42, 2)
warped = stn_jax.grid_sample(jnp.asarray(image), grid)  # (1, 42, 42, 1)
print("grid", grid.shape, "warped", warped.shape)


def draw_grid(image, grid, scale=6, step=6):
  """The image, upscaled, with every step-th grid point drawn on it."""
  size = image.shape[0] * scale
  picture = (
    Image.fromarray(np.uint8(np.clip(image[..., 0], 0, 1) * 255))
    .resize((size, size), Image.NEAREST)
    .convert("RGB")
  )
  draw = ImageDraw.Draw(picture)
  points = (np.asarray(grid)[::step, ::step] + 1) / 2 * size  # pixels
  for row in points:
    draw.line([tuple(p) for p in row], fill=(255, 80, 80))
  for column in points.transpose(1, 0, 2):
    draw.line([tuple(p) for p in column], fill=(255, 80, 80))
  return picture


def side_by_side(*pictures):
  width = sum(p.width for p in pictures) + 8 * (len(pictures) - 1)
  canvas = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
  x = 0
  for p in pictures:
    canvas.paste(p, (x, 0))
    x += p.width + 8
  return canvas


big = lambda a: Image.fromarray(
  np.uint8(np.clip(np.asarray(a)[..., 0], 0, 1) * 255)
).resize((252, 252), Image.NEAREST)
side_by_side(draw_grid(image[0], grid[0]), big(warped[0])).save(
  OUT / "ops_grid.png"
)

# %% [markdown]
# ![The sampling grid over the digit, and what grid_sample reads there](tutorial/ops_grid.png)

# %% [markdown]
# ## 2. Train an ST-CNN on RTS MNIST
#
# The default `make train` config (`configs/mnist.py`: distortion=rts,
# model=st_cnn, small=true), shortened to `STEPS` steps. The run saves
# the transformer's outputs on fixed test digits at every evaluation
# (`snapshots/`), so we can watch it learn to undo the distortion.

# %%
from stn_jax import config_args, train  # noqa: E402

root = pathlib.Path(stn_jax.__file__).resolve().parent.parent
mnist = config_args.load_config_module(str(root / "configs" / "mnist.py"))
config = mnist.get_config("distortion=rts,model=st_cnn,small=true")
config.num_steps = STEPS
config.eval_every = max(1, STEPS // 3)
config.checkpoint_every = STEPS
config.log_every = max(1, STEPS // 6)
if BATCH:
  config.batch_size = config.eval_batch_size = BATCH
if TFDS_DIR:
  config.tfds_dir = TFDS_DIR
workdir = OUT / "run"
results = train.train_and_evaluate(config, str(workdir), overwrite=True)
print(f"test error after {STEPS} steps: {100 * results['test_error']:.2f}%")

# %%
from stn_jax.data import preview  # noqa: E402

snapshots = sorted((workdir / "snapshots").glob("*.npy"))
frames = [np.load(path)[:8] for path in snapshots]
steps = [int(path.stem) for path in snapshots]
tiles = np.concatenate(frames)
names = [f"step {s}" if i == 0 else "" for s in steps for i in range(8)]
preview.grid_image(tiles, names, columns=8, scale=2).save(OUT / "snapshots.png")
print("snapshots at steps", steps)

# %% [markdown]
# ![The transformer's outputs on the same test digits as training proceeds (one row per evaluation)](tutorial/snapshots.png)

# %% [markdown]
# ## 3. Restore, predict, and the error curve

# %%
run = stn_jax.restore(str(workdir))
logits = run.predict(test["image"])
error = np.mean(logits.argmax(1) != test["label"])
print(f"restored at step {run.step}: {100 * error:.2f}% test error")
warped = run.transform(test["image"][:8])  # (8, 42, 42, 1) in [0, 1]
print(
  "transform params of the first digit:",
  run.transform_params(test["image"][:1])[0],
)

# %%
import json  # noqa: E402

from stn_jax import viz  # noqa: E402

with open(workdir / "metrics.jsonl") as f:
  records = [json.loads(line) for line in f]
curve = [
  (r["step"], 100 * r["test_error"]) for r in records if "test_error" in r
]
print("test error (%) by step:", curve)
viz.line_plot(
  [("ST-CNN", curve)],
  OUT / "error.png",
  title="RTS test error",
  xlabel="step",
  ylabel="error (%)",
)

# %% [markdown]
# ![Test error during training](tutorial/error.png)
#
# The pretrained model, trained for 3000 steps, needs no training at all:

# %%
pretrained = stn_jax.pretrained("rts_st_cnn_small")
card = stn_jax.pretrained()["rts_st_cnn_small"]
print(f"card: {100 * card.test_error:.2f}% test error, step {card.step}")
print(
  "its predictions on the first test digits:",
  pretrained.predict(digits).argmax(1),
)
print("labels:                                  ", labels)

# %% [markdown]
# ## 4. Export and run without stn_jax
#
# The ONNX file takes uint8 NHWC images and applies the normalisation
# itself; its sampler is ONNX `GridSample` (docs/export.md).

# %%
from stn_jax import export  # noqa: E402

export.export(run, str(OUT / "st_cnn.onnx"), format="onnx")
try:
  import onnxruntime
except ImportError:
  print("pip install 'stn_jax[onnx]' to run the ONNX file")
else:
  session = onnxruntime.InferenceSession(str(OUT / "st_cnn.onnx"))
  onnx_logits = session.run(None, {"images": test["image"]})[0]
  print(
    "ONNX vs predict: max |diff|",
    float(np.abs(onnx_logits - logits).max()),
    "same class on all:",
    bool((onnx_logits.argmax(1) == logits.argmax(1)).all()),
  )
