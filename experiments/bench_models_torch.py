"""Training throughput: stn_jax's paper networks vs the same networks in torch.

Usage:
  python experiments/bench_models_torch.py [--models rts_st_cnn,rts_cnn,gtsrb_st_cnn]
      [--batch 256] [--steps 30] [--rounds 3] [--gtsrb_width 1.0]
      [--torch_device cpu|cuda] [--torch_threads 2]
      [--out experiments/results/models_torch.md]

Each model is built twice from the same description: once by stn_jax
(``stn_jax.models``, the configs' kwargs) and once here in torch
(``torch.nn``, ``F.affine_grid`` + ``F.grid_sample``), with equal layer
shapes (the parameter counts are printed and must match). One training
step is the forward pass, softmax cross-entropy, the backward pass and an
Adam update, on a fixed synthetic batch (so data loading is not measured).
Steps are timed in round-robin blocks (``--rounds``), after compilation
and warm-up, and the table gives the median examples/s per library.

* rts_st_cnn: the paper's ST-CNN for RTS (42x42 input, affine conv
  localisation on the 2x max-pooled input, transformer output average-pooled
  to 21x21, CNN 9x9@32 -> 7x7@32).
* rts_cnn: the paper's CNN for RTS (42x42 input, 9x9@32 -> 7x7@32).
* gtsrb_st_cnn: the GTSRB CNN with 3 spatial transformers (32x32x3),
  every layer's width scaled by ``--gtsrb_width``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stn_jax import config_args, models, recipe, steps, xla_cpu
from stn_jax.provenance import commit_description, machine_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec):
  path, arg = spec.split(":", 1)
  module = config_args.load_config_module(os.path.join(REPO, path))
  return module.get_config(arg)


def model_configs(gtsrb_width):
  rts = load_config("configs/mnist.py:distortion=rts,model=st_cnn")
  cnn = load_config("configs/mnist.py:distortion=rts,model=cnn")
  gtsrb = load_config("configs/gtsrb.py:model=gtsrb_st_cnn,size=32")
  gtsrb.model_kwargs.width = gtsrb_width
  return {
    "rts_st_cnn": (rts, (42, 42, 1), 10),
    "rts_cnn": (cnn, (42, 42, 1), 10),
    "gtsrb_st_cnn": (gtsrb, (32, 32, 3), 43),
  }


# ---------------------------------------------------------------- stn_jax


def jax_step_fn(config, in_shape, num_classes, batch):
  config = config.copy_and_resolve_references()
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  model = models.from_config(config, in_shape)
  count = models.count_params(model)
  optimizer = recipe.make_optimizer(config, nnx.state(model))
  graphdef, state = steps.init_state(model, optimizer)
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.uniform(size=(batch, *in_shape)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
  }
  shapes = jax.eval_shape(
    lambda s, b: steps.train_step(s, b, graphdef=graphdef, optimizer=optimizer)[
      1
    ],
    state,
    data,
  )
  accumulator = steps.empty_accumulator(shapes)
  # as the training loop compiles it (config.xla_cpu_library)
  step = steps.make_train_step(
    graphdef,
    optimizer,
    compiler_options=xla_cpu.step_compiler_options(config),
  )
  holder = {"state": state, "acc": accumulator}

  def run():
    holder["state"], holder["acc"] = step(holder["state"], holder["acc"], data)
    jax.block_until_ready(holder["acc"])

  return run, count


# ------------------------------------------------------------------ torch


def torch_model(name, config, in_shape, num_classes):
  import torch
  import torch.nn.functional as F
  from torch import nn

  kwargs = config.model_kwargs

  class Localisation(nn.Module):
    """maxpool(downsample) -> conv5 -> relu -> pool2 -> conv5 -> relu ->
    FC -> relu -> FC (zero weights, identity bias)."""

    def __init__(self, in_shape, channels, hidden, downsample=2):
      super().__init__()
      h, w, c = in_shape
      self.downsample = downsample
      self.conv1 = nn.Conv2d(c, channels[0], 5, padding="same")
      self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding="same")
      self.fc = nn.Linear(
        h // downsample // 2 * (w // downsample // 2) * channels[1], hidden
      )
      self.head = nn.Linear(hidden, 6)
      nn.init.zeros_(self.head.weight)
      with torch.no_grad():
        self.head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, x):
      x = F.max_pool2d(x, self.downsample)
      x = F.max_pool2d(F.relu(self.conv1(x)), 2)
      x = F.relu(self.conv2(x))
      # NHWC flattening order, as stn_jax (the shapes are what matter)
      x = F.relu(self.fc(x.permute(0, 2, 3, 1).flatten(1)))
      return self.head(x)

  def transform(x, localisation, out_size=None):
    theta = localisation(x).view(-1, 2, 3)
    n, c, h, w = x.shape
    out_h, out_w = out_size or (h, w)
    grid = F.affine_grid(theta, (n, c, out_h, out_w), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)

  if name == "rts_st_cnn":

    class Net(nn.Module):
      def __init__(self):
        super().__init__()
        channels = kwargs.get("channels", (32, 32))
        self.localisation = Localisation(
          in_shape,
          kwargs.get("localisation_channels", (20, 20)),
          kwargs.get("localisation_hidden", 20),
        )
        self.conv1 = nn.Conv2d(1, channels[0], 9, padding="same")
        self.conv2 = nn.Conv2d(channels[0], channels[1], 7, padding="same")
        h = in_shape[0] // 2 // 4  # pooled output 21 -> 5
        self.out = nn.Linear(h * h * channels[1], num_classes)

      def forward(self, x):
        x = transform(x, self.localisation)
        x = F.avg_pool2d(x, 2)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.out(x.permute(0, 2, 3, 1).flatten(1))

    return Net()

  if name == "rts_cnn":

    class CNN(nn.Module):
      def __init__(self):
        super().__init__()
        channels = kwargs.get("channels", (32, 32))
        self.conv1 = nn.Conv2d(in_shape[2], channels[0], 9, padding="same")
        self.conv2 = nn.Conv2d(channels[0], channels[1], 7, padding="same")
        h = in_shape[0] // 4
        self.out = nn.Linear(h * h * channels[1], num_classes)

      def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.out(x.permute(0, 2, 3, 1).flatten(1))

    return CNN()

  width = kwargs.width
  scale = lambda c: max(4, int(round(c * width)))

  class GtsrbNet(nn.Module):
    def __init__(self):
      super().__init__()
      channels = [in_shape[2], scale(200), scale(250), scale(350)]
      kernels = [7, 4, 4]
      h = in_shape[0]
      self.localisations = nn.ModuleList()
      self.convs = nn.ModuleList()
      for i in range(3):
        self.localisations.append(
          Localisation(
            (h, h, channels[i]), (scale(150), scale(200)), scale(300)
          )
        )
        self.convs.append(
          nn.Conv2d(channels[i], channels[i + 1], kernels[i], padding="same")
        )
        h //= 2
      self.fc = nn.Linear(h * h * channels[3], scale(400))
      self.out = nn.Linear(scale(400), num_classes)

    def forward(self, x):
      for localisation, conv in zip(self.localisations, self.convs):
        x = transform(x, localisation)
        x = F.max_pool2d(F.relu(conv(x)), 2)
      x = F.relu(self.fc(x.permute(0, 2, 3, 1).flatten(1)))
      return self.out(x)

  return GtsrbNet()


def torch_step_fn(name, config, in_shape, num_classes, batch, device):
  import torch
  import torch.nn.functional as F

  torch.manual_seed(0)
  model = torch_model(name, config, in_shape, num_classes).to(device)
  count = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  rng = np.random.default_rng(0)
  h, w, c = in_shape
  images = torch.tensor(
    rng.uniform(size=(batch, c, h, w)), dtype=torch.float32, device=device
  )
  labels = torch.tensor(
    rng.integers(0, num_classes, batch), dtype=torch.long, device=device
  )
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def run():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    sync()

  return run, count


def examples_per_second(fns, batch, steps_per_block, rounds):
  """Median examples/s of each fn, timed in round-robin blocks."""
  for fn in fns:  # compile / warm up
    fn()
    fn()
  rates = [[] for _ in fns]
  for _ in range(rounds):
    for fn, samples in zip(fns, rates):
      time.sleep(0.3)  # let the other library's worker threads settle
      fn()
      start = time.perf_counter()
      for _ in range(steps_per_block):
        fn()
      samples.append(batch * steps_per_block / (time.perf_counter() - start))
  return [statistics.median(r) for r in rates]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="rts_st_cnn,rts_cnn,gtsrb_st_cnn")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--gtsrb_width", type=float, default=1.0)
  parser.add_argument("--torch_device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--out", default="experiments/results/models_torch.md")
  args = parser.parse_args(argv)
  import torch

  torch.set_num_threads(args.torch_threads)
  configs = model_configs(args.gtsrb_width)
  rows = []
  for name in args.models.split(","):
    if name not in configs:
      parser.error(f"--models: unknown {name!r}; choose from {sorted(configs)}")
    config, in_shape, num_classes = configs[name]
    ours, ours_count = jax_step_fn(config, in_shape, num_classes, args.batch)
    theirs, theirs_count = torch_step_fn(
      name, config, in_shape, num_classes, args.batch, args.torch_device
    )
    if ours_count != theirs_count:
      raise SystemExit(
        f"{name}: the networks differ: stn_jax has {ours_count:,} "
        f"parameters, torch {theirs_count:,}."
      )
    rate_ours, rate_theirs = examples_per_second(
      [ours, theirs], args.batch, args.steps, args.rounds
    )
    rows.append((name, ours_count, rate_ours, rate_theirs))
    print(
      f"{name} ({ours_count:,} parameters): stn_jax {rate_ours:,.0f} ex/s, "
      f"torch {rate_theirs:,.0f} ex/s",
      flush=True,
    )
  lines = [
    "# Training throughput: stn_jax vs torch, same networks",
    "",
    f"- command: `python {' '.join(sys.argv)}`",
    f"- commit: {commit_description()}",
    f"- machine: {machine_description()}",
    f"- torch {torch.__version__} on {args.torch_device}"
    + (
      f" ({args.torch_threads} threads)" if args.torch_device == "cpu" else ""
    ),
    f"- one step: forward, cross-entropy, backward, Adam; batch "
    f"{args.batch}, synthetic data (no input pipeline); median of "
    f"{args.rounds} round-robin blocks of {args.steps} steps after warm-up",
    f"- gtsrb_st_cnn width {args.gtsrb_width}",
    "",
    "| model | parameters | stn_jax ex/s | torch ex/s | stn_jax / torch |",
    "|---|---|---|---|---|",
  ]
  for name, count, a, b in rows:
    lines.append(f"| {name} | {count:,} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
