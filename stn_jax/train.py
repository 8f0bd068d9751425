"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

The jitted train step works on pure state (``nnx.split`` / ``nnx.merge``):
the same arrays are checkpointed (orbax), replicated over the data mesh and
could be vmapped. A rerun of the same command resumes from the last good
checkpoint (model, optimiser, step and data-iterator position), SIGTERM
saves and exits, a NaN/inf loss stops with a message and keeps the last good
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from stn_jax import models, ops
from stn_jax.data import datasets, distortions, pipeline, preview

OPTIMIZERS = ("sgd", "momentum", "adam")


class TrainingDiverged(FloatingPointError):
  """The loss became NaN or infinite."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before anything is built or compiled."""
  if config.model not in models.MODELS:
    raise ValueError(f"config.model must be one of "
                     f"{', '.join(models.MODELS)}; got {config.model!r}.")
  datasets.get_builder(config.dataset)  # raises on unknown datasets
  if config.on_the_fly:
    distortions.check_variant(config.on_the_fly)
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate must be > 0; got "
                     f"{config.learning_rate}.")
  if not config.localisation_lr_multiplier >= 0:
    raise ValueError("config.localisation_lr_multiplier must be >= 0; got "
                     f"{config.localisation_lr_multiplier}.")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer must be one of {', '.join(OPTIMIZERS)}"
                     f"; got {config.optimizer!r}.")
  for key in ("batch_size", "num_steps", "log_every", "eval_every",
              "checkpoint_every", "eval_batch_size", "lr_decay_every"):
    if not isinstance(config[key], int) or config[key] <= 0:
      raise ValueError(f"config.{key} must be a positive int; got "
                       f"{config[key]!r}.")
  snapshot_every = config.get("snapshot_every", 0)
  if not isinstance(snapshot_every, int) or snapshot_every < 0:
    raise ValueError("config.snapshot_every must be an int >= 0 (0: only at "
                     f"evaluations); got {snapshot_every!r}.")
  if train_split(config) in config.eval_splits:
    raise ValueError(f"config.train_split {train_split(config)!r} is also in "
                     f"config.eval_splits {tuple(config.eval_splits)}: "
                     "evaluating on the training split is not a result.")
  if config.on_the_fly and train_split(config) != "train":
    raise ValueError("config.train_split must be 'train' with on_the_fly "
                     f"(the plain MNIST training digits); got "
                     f"{train_split(config)!r}.")
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ValueError(f"config.{key} must be divisible by the number of "
                       f"devices ({devices}); got {config[key]}.")


def learning_rate_schedule(config) -> optax.Schedule:
  """``learning_rate`` times ``lr_decay_factor`` every ``lr_decay_every``."""
  return optax.exponential_decay(
      config.learning_rate, transition_steps=config.lr_decay_every,
      decay_rate=config.lr_decay_factor, staircase=True)


def make_optimizer(config, params) -> optax.GradientTransformation:
  """SGD/momentum/Adam with a step schedule; the localisation nets get
  ``localisation_lr_multiplier`` times the learning rate."""
  schedule = learning_rate_schedule(config)
  base = {"sgd": optax.sgd,
          "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
          "adam": optax.adam}[config.optimizer]
  multiplier = config.localisation_lr_multiplier
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: ("localisation" if any(
          getattr(k, "key", None) == "localisation" for k in path)
                       else "other"), params)
  transform = optax.multi_transform(
      {"other": base(schedule),
       "localisation": base(lambda step: multiplier * schedule(step))},
      labels)
  if config.grad_clip_norm > 0:
    transform = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                            transform)
  return transform


def transform_statistics(transform: str, params) -> dict[str, jax.Array]:
  """Mean scale, |rotation| (degrees) and |translation| of regressed
  transformation parameters (N, P)."""
  if transform in ("affine", "projective"):
    a, b, tx, c, d, ty = (params[:, i] for i in range(6))
  elif transform == "attention":
    a, tx, ty = params[:, 0], params[:, 1], params[:, 2]
    b = c = jnp.zeros_like(a)
    d = a
  else:  # tps: mean control-point displacement from the identity
    identity = jnp.asarray(ops.identity_params("tps", num_control_points=
                                               params.shape[1] // 2))
    return {"theta_displacement": jnp.abs(params - identity).mean()}
  return {"theta_scale": jnp.sqrt(jnp.abs(a * d - b * c)).mean(),
          "theta_rotation_deg": jnp.degrees(jnp.abs(jnp.arctan2(c, a))).mean(),
          "theta_translation": jnp.sqrt(tx ** 2 + ty ** 2).mean()}


def _kwargs(config_dict) -> dict:
  """Model kwargs; JSON round trips turn tuples into lists, undo that."""
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in config_dict.to_dict().items()}


class Trainer:
  """The model, its optimiser and the jitted steps, on pure state."""

  def __init__(self, config, in_shape):
    self.config = config
    self.in_shape = tuple(in_shape)
    model = models.get_model(config.model, in_shape=in_shape,
                             num_classes=config.num_classes,
                             rngs=nnx.Rngs(config.seed),
                             **_kwargs(config.model_kwargs))
    self.graphdef, params = nnx.split(model)
    self.num_params = models.count_params(model)
    transformers = models.transformers(model)
    self.transform = (transformers[0].transform if transformers else None)
    self.optimizer = make_optimizer(config, params)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    self.params = jax.device_put(params, self.replicated)
    self.opt_state = jax.device_put(self.optimizer.init(params),
                                    self.replicated)
    self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))
    self.eval_step = jax.jit(self._eval_step)

  def model(self, params=None) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def _logits(self, params, images):
    model = self.model(params)
    logits = model(images)
    # Statistics of the first transformer, which sits on the input in every
    # ST model here; recomputing its small localisation net is cheap.
    found = models.transformers(model)
    theta = (jax.lax.stop_gradient(found[0].transform_params(images))
             if found else None)
    return logits, theta

  def _train_step(self, params, opt_state, images, labels, lr_scale=None):
    """One SGD step. ``lr_scale`` multiplies the updates (population mode
    builds the optimiser with learning rate 1 and passes each member's)."""
    def loss_fn(params):
      logits, theta = self._logits(params, images)
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
      return loss, (logits, theta)

    (loss, (logits, theta)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    if lr_scale is not None:
      updates = jax.tree.map(lambda u: u * lr_scale, updates)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss,
               "error": (logits.argmax(-1) != labels).mean()}
    if theta is not None:
      metrics.update(transform_statistics(self.transform, theta))
    return params, opt_state, metrics

  def _eval_step(self, params, images, labels, mask):
    logits, _ = self._logits(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    wrong = logits.argmax(-1) != labels
    return {"loss_sum": (loss * mask).sum(), "wrong": (wrong * mask).sum(),
            "count": mask.sum()}

  def evaluate(self, arrays, mean, std) -> dict[str, float]:
    """Loss and error over a whole split (the last batch is padded)."""
    batch_size = self.config.eval_batch_size
    totals = {"loss_sum": 0.0, "wrong": 0.0, "count": 0.0}
    n = len(arrays["label"])
    for start in range(0, n, batch_size):
      index = np.arange(start, start + batch_size)
      mask = (index < n).astype(np.float32)
      index = np.minimum(index, n - 1)
      images = (arrays["image"][index].astype(np.float32) / 255 - mean) / std
      put = lambda x: jax.device_put(x, self.data_sharding)
      out = self.eval_step(self.params, put(images),
                           put(arrays["label"][index].astype(np.int32)),
                           put(mask))
      for key in totals:
        totals[key] += float(out[key])
    return {"loss": totals["loss_sum"] / totals["count"],
            "error": totals["wrong"] / totals["count"]}


class MetricWriter:
  """metrics.jsonl + TensorBoard (tensorboardX: no TensorFlow needed)."""

  def __init__(self, workdir):
    from tensorboardX import SummaryWriter
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]):
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for key, value in metrics.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self):
    self._jsonl.close()
    self._tensorboard.close()


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


class Checkpoints:
  """orbax CheckpointManager of {params, opt_state} leaves + JSON metadata."""

  def __init__(self, workdir, config):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.max_checkpoints, create=True))

  def save(self, step, trainer, data_state, force=False):
    arrays = {"params": jax.tree.leaves(trainer.params),
              "opt_state": jax.tree.leaves(trainer.opt_state)}
    meta = {"step": step, "data_state": data_state,
            "seed": trainer.config.seed}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
                      force=force)
    self.manager.wait_until_finished()

  def restore_latest(self, trainer):
    """Restores the newest readable checkpoint into ``trainer``; returns its
    metadata, or None when there is none. A checkpoint that fails to load
    is skipped with a warning."""
    target = {"params": jax.tree.leaves(trainer.params),
              "opt_state": jax.tree.leaves(trainer.opt_state)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            meta=ocp.args.JsonRestore()))
      except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
        warnings.warn(f"checkpoint {step} could not be restored ({error!r:.300}); "
                      "falling back to the previous one.")
        continue
      state = restored["state"]
      trainer.params = jax.device_put(jax.tree.unflatten(
          jax.tree.structure(trainer.params), state["params"]),
                                      trainer.replicated)
      trainer.opt_state = jax.device_put(jax.tree.unflatten(
          jax.tree.structure(trainer.opt_state), state["opt_state"]),
                                         trainer.replicated)
      return restored["meta"]
    return None


def train_split(config) -> str:
  """The split trained on: ``config.train_split``, default ``'train'``."""
  return config.get("train_split", "train")


def load_data(config):
  """(train arrays, {split: eval arrays}, image shape)."""
  kwargs = dict(tfds_dir=config.tfds_dir or None,
                source_dir=config.source_dir or None)
  if config.on_the_fly:
    train = datasets.load_arrays("distorted_mnist/plain", "train", **kwargs)
    size = distortions.IMAGE_SIZE[config.on_the_fly]
    in_shape = (size, size, 1)
  else:
    train = datasets.load_arrays(config.dataset, train_split(config),
                                 **kwargs)
    in_shape = train["image"].shape[1:]
  evals = {split: datasets.load_arrays(config.dataset, split, **kwargs)
           for split in config.eval_splits}
  return train, evals, tuple(in_shape)


def _transformer_outputs(trainer, images, mean, std):
  """The first transformer's output (uint8, like ``images``) on uint8
  ``images``, or None for a model without one."""
  found = models.transformers(trainer.model())
  if not found:
    return None
  x = (images.astype(np.float32) / 255 - mean) / std
  out = np.asarray(found[0](x)) * std + mean
  return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _write_transformer_png(trainer, arrays, path, mean, std, count=16):
  images = arrays["image"][:count]
  out = _transformer_outputs(trainer, images, mean, std)
  if out is None:
    return
  tiles, labels = [], []
  for i in range(len(images)):
    tiles += [images[i], out[i]]
    labels += [f"in {int(arrays['label'][i])}", "ST out"]
  preview.grid_image(np.stack(tiles), labels, columns=8,
                     title="inputs and transformer outputs").save(path)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints).

  Returns:
    the final evaluation metrics, e.g. ``{'test_error': 0.012, ...}``; or,
    when SIGTERM stopped the run (after saving a checkpoint),
    ``{'interrupted_at_step': step}``.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  train, evals, in_shape = load_data(config)
  with open(os.path.join(workdir, "in_shape.json"), "w") as f:
    json.dump(list(in_shape), f)
  mean, std = np.float32(config.get("mean", 0.0)), np.float32(
      config.get("std", 1.0))
  trainer = Trainer(config, in_shape)
  stream = pipeline.InputPipeline(
      train, batch_size=config.batch_size, seed=config.seed,
      on_the_fly=config.on_the_fly or None, mean=mean, std=std,
      sharding=trainer.data_sharding)
  checkpoints = Checkpoints(workdir, config)
  meta = checkpoints.restore_latest(trainer)
  step = 0
  if meta is not None:
    step = int(meta["step"])
    stream.set_state(meta["data_state"])
    print(f"resumed from step {step}", flush=True)
  print(f"{config.model} on {config.dataset}: {trainer.num_params:,} "
        f"parameters, {jax.device_count()} device(s), workdir {workdir}",
        flush=True)

  stop = {"requested": False}
  previous_handler = signal.getsignal(signal.SIGTERM)
  signal.signal(signal.SIGTERM,
                lambda *_: stop.__setitem__("requested", True))
  writer = MetricWriter(workdir)
  schedule = learning_rate_schedule(config)
  results = {}
  snapshot_every = config.get("snapshot_every", 0)
  snapshot_images = next(iter(evals.values()))
  try:
    if step == 0:  # the initial (identity) transformer: the GIF's frame 0
      _save_snapshot(trainer, snapshot_images, workdir, 0, mean, std)
    interval, interval_start, start_step = [], time.perf_counter(), step
    run_start = time.perf_counter()
    while step < config.num_steps:
      batch = next(stream)
      trainer.params, trainer.opt_state, metrics = trainer.train_step(
          trainer.params, trainer.opt_state, batch["image"], batch["label"])
      step += 1
      _testing_hooks(step)
      loss = float(metrics["loss"])
      if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss is {loss} at step {step}; stopped. The last good "
            f"checkpoint in {workdir}/checkpoints is kept (try a lower "
            "learning rate, a smaller localisation_lr_multiplier or "
            "grad_clip_norm).")
      interval.append(metrics)
      if step % config.log_every == 0 or step == config.num_steps:
        elapsed = time.perf_counter() - interval_start
        summary = {k: float(np.mean([m[k] for m in interval]))
                   for k in interval[0]}
        summary["learning_rate"] = float(schedule(step - 1))
        summary["examples_per_second"] = (len(interval) * config.batch_size
                                          / elapsed)
        writer.write(step, {f"train_{k}" if not k.startswith(
            ("learning", "examples")) else k: v for k, v in summary.items()})
        rate = (step - start_step) / (time.perf_counter() - run_start)
        print(f"step {step}/{config.num_steps} "
              f"loss {summary['loss']:.4f} error {summary['error']:.2%} "
              f"lr {summary['learning_rate']:.2e} "
              f"{summary['examples_per_second']:.0f} ex/s "
              f"ETA {_format_eta((config.num_steps - step) / rate)}",
              flush=True)
        interval, interval_start = [], time.perf_counter()
      if step % config.checkpoint_every == 0 or stop["requested"]:
        checkpoints.save(step, trainer, stream.get_state(), force=True)
      if stop["requested"]:
        print(f"SIGTERM: saved a checkpoint at step {step} and stopped.",
              flush=True)
        stop["handled"] = True
        return {"interrupted_at_step": step}
      if step % config.eval_every == 0 and step < config.num_steps:
        _evaluate(trainer, evals, step, writer, mean, std, workdir)
      elif snapshot_every and step % snapshot_every == 0:
        _save_snapshot(trainer, snapshot_images, workdir, step, mean, std)
    if step not in checkpoints.manager.all_steps():
      checkpoints.save(step, trainer, stream.get_state(), force=True)
    results = _evaluate(trainer, evals, step, writer, mean, std, workdir)
    first_split = config.eval_splits[0]
    _write_transformer_png(trainer, evals[first_split],
                           os.path.join(workdir, "transformer.png"), mean, std)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"step": step, **results}, f, indent=2)
    print(f"final {first_split} error: {results[f'{first_split}_error']:.2%} "
          f"(workdir {workdir})", flush=True)
    return results
  finally:
    writer.close()
    signal.signal(signal.SIGTERM, previous_handler)
    if stop["requested"] and not stop.get("handled"):
      # SIGTERM came after the last step (the run is complete and saved):
      # deliver it to the previous handler rather than swallow it.
      signal.raise_signal(signal.SIGTERM)


def _testing_hooks(step: int) -> None:
  """Crash-recovery tests: STN_JAX_KILL_AT_STEP=k kills this process with
  SIGKILL (as `kill -9` would) and STN_JAX_TERM_AT_STEP=k sends it SIGTERM,
  right after step k. Unset in normal use."""
  for name, sig in (("STN_JAX_KILL_AT_STEP", signal.SIGKILL),
                    ("STN_JAX_TERM_AT_STEP", signal.SIGTERM)):
    if os.environ.get(name) == str(step):
      os.kill(os.getpid(), sig)


SNAPSHOT_COUNT = 16


def _save_snapshot(trainer, arrays, workdir, step, mean, std):
  """The first transformer's output on fixed test images, for the GIF of
  ``python -m stn_jax.viz`` (``workdir/snapshots/<step>.npy``, uint8)."""
  out = _transformer_outputs(trainer, arrays["image"][:SNAPSHOT_COUNT], mean,
                             std)
  if out is None:
    return
  folder = os.path.join(workdir, "snapshots")
  os.makedirs(folder, exist_ok=True)
  np.save(os.path.join(folder, f"{step:08d}.npy"), out)


def _evaluate(trainer, evals, step, writer, mean, std, workdir=None):
  if workdir is not None:
    _save_snapshot(trainer, next(iter(evals.values())), workdir, step, mean,
                   std)
  results = {}
  for split, arrays in evals.items():
    metrics = trainer.evaluate(arrays, mean, std)
    results.update({f"{split}_{k}": v for k, v in metrics.items()})
  writer.write(step, results)
  print(f"step {step}: " + ", ".join(
      f"{k} {v:.2%}" if k.endswith("error") else f"{k} {v:.4f}"
      for k, v in results.items()), flush=True)
  return results
