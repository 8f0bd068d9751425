"""The pure train and eval steps, and the state they work on.

Everything here is a function of arrays: ``train_step(state, batch, ...)``
returns the next state and the step's metrics, ``eval_step`` returns sums
over a batch. The model's structure (``graphdef``) and the optimiser are
static arguments: bind them with ``functools.partial`` and jit once (see
:func:`make_train_step`). A population of K runs is the same step under
``jax.vmap`` over a leading member axis of the state and the batch.

Metrics are accumulated on the device (:func:`accumulate`) and fetched by
the loop only at log steps. A non-finite loss does not stop the step: it is
recorded in the accumulator (``first_nonfinite_step``), which the loop
checks before every save, so the last checkpoint is always a good one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from stn_jax import models, ops

OPTIMIZERS = ("sgd", "momentum", "adam")


@struct.dataclass
class TrainState:
  """What a training step changes.

  Attributes:
    step: int32 scalar, steps taken.
    model: the model's ``nnx.State`` (its parameters).
    opt_state: the optax state for ``model``.
  """

  step: jax.Array
  model: nnx.State
  opt_state: Any


def learning_rate_schedule(config) -> optax.Schedule:
  """``learning_rate`` times ``lr_decay_factor`` every ``lr_decay_every``."""
  return optax.exponential_decay(
    config.learning_rate,
    transition_steps=config.lr_decay_every,
    decay_rate=config.lr_decay_factor,
    staircase=True,
  )


def make_optimizer(config, model_state) -> optax.GradientTransformation:
  """SGD/momentum/Adam with a step schedule; the localisation nets get
  ``localisation_lr_multiplier`` times the learning rate; optional gradient
  clipping by global norm (``grad_clip_norm`` > 0), applied first."""
  schedule = learning_rate_schedule(config)
  base = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
  }[config.optimizer]
  multiplier = config.localisation_lr_multiplier
  labels = jax.tree_util.tree_map_with_path(
    lambda path, _: (
      "localisation"
      if any(getattr(k, "key", None) == "localisation" for k in path)
      else "other"
    ),
    model_state,
  )
  transform = optax.multi_transform(
    {
      "other": base(schedule),
      "localisation": base(lambda step: multiplier * schedule(step)),
    },
    labels,
  )
  if config.grad_clip_norm > 0:
    transform = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm), transform
    )
  return transform


def init_state(
  model: nnx.Module, optimizer: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
  """(the model's structure, its step-0 :class:`TrainState`)."""
  graphdef, model_state = nnx.split(model)
  return graphdef, TrainState(
    step=jnp.zeros((), jnp.int32),
    model=model_state,
    opt_state=optimizer.init(model_state),
  )


def transform_statistics(transform: str, params) -> dict[str, jax.Array]:
  """Mean scale, |rotation| (degrees) and |translation| of regressed
  transformation parameters ``(N, P)`` (flat layouts of
  :mod:`stn_jax.ops.transforms`); for TPS the mean control-point
  displacement from the identity."""
  if transform in ("affine", "projective"):
    a, b, tx, c, d, ty = (params[:, i] for i in range(6))
  elif transform == "attention":
    a, tx, ty = params[:, 0], params[:, 1], params[:, 2]
    b = c = jnp.zeros_like(a)
    d = a
  else:  # tps
    identity = jnp.asarray(
      ops.identity_params("tps", num_control_points=params.shape[1] // 2)
    )
    return {"theta_displacement": jnp.abs(params - identity).mean()}
  return {
    "theta_scale": jnp.sqrt(jnp.abs(a * d - b * c)).mean(),
    "theta_rotation_deg": jnp.degrees(jnp.abs(jnp.arctan2(c, a))).mean(),
    "theta_translation": jnp.sqrt(tx**2 + ty**2).mean(),
  }


def _logits_and_theta(graphdef, model_state, images):
  model = nnx.merge(graphdef, model_state)
  logits = model(images)
  # Statistics of the first transformer, which sits on the input in every
  # ST model here; recomputing its small localisation net is cheap.
  found = models.transformers(model)
  if not found:
    return logits, None, None
  theta = jax.lax.stop_gradient(found[0].transform_params(images))
  return logits, theta, found[0].transform


def train_step(
  state: TrainState,
  batch,
  *,
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  learning_rate_scale=None,
) -> tuple[TrainState, dict]:
  """One optimiser step on a batch.

  Args:
    state: the :class:`TrainState`.
    batch: ``{'image': float32 (B, H, W, C) normalised, 'label': int (B,)}``.
    graphdef: the model's structure (static).
    optimizer: the optax transformation (static).
    learning_rate_scale: optional scalar multiplying the updates (population
      members built with learning rate 1 pass their own rate here).

  Returns:
    ``(next state, metrics)``; metrics are scalars: ``loss``, ``error`` and,
    for ST models, the transformer statistics of
    :func:`transform_statistics`.
  """
  images, labels = batch["image"], batch["label"]

  def loss_fn(model_state):
    logits, theta, transform = _logits_and_theta(graphdef, model_state, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()
    return loss, (logits, theta, transform)

  (loss, (logits, theta, transform)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.model)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.model)
  if learning_rate_scale is not None:
    updates = jax.tree.map(lambda u: u * learning_rate_scale, updates)
  model_state = optax.apply_updates(state.model, updates)
  metrics = {"loss": loss, "error": (logits.argmax(-1) != labels).mean()}
  if theta is not None:
    metrics.update(transform_statistics(transform, theta))
  return state.replace(
    step=state.step + 1, model=model_state, opt_state=opt_state
  ), metrics


def eval_step(
  model_state: nnx.State, batch, *, graphdef: nnx.GraphDef
) -> dict[str, jax.Array]:
  """Sums over a batch: ``loss_sum``, ``wrong`` and ``count``.

  ``batch`` holds ``image``, ``label`` and ``mask`` (1 for real examples, 0
  for the padding of a last partial batch).
  """
  logits, _, _ = _logits_and_theta(graphdef, model_state, batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  wrong = logits.argmax(-1) != batch["label"]
  mask = batch["mask"]
  return {
    "loss_sum": (loss * mask).sum(),
    "wrong": (wrong * mask).sum(),
    "count": mask.sum(),
  }


def empty_accumulator(metric_shapes: dict) -> dict:
  """Zeroed metric sums for :func:`accumulate` (``metric_shapes`` as from
  ``jax.eval_shape`` of the step's metrics)."""
  return {
    "sums": {
      k: jnp.zeros(v.shape, jnp.float32) for k, v in metric_shapes.items()
    },
    "count": jnp.zeros((), jnp.int32),
    "first_nonfinite_step": jnp.zeros((), jnp.int32),
  }


def accumulate(accumulator: dict, metrics: dict, step: jax.Array) -> dict:
  """Adds a step's metrics; remembers the first step whose loss was not
  finite (0: none yet)."""
  first = accumulator["first_nonfinite_step"]
  bad = ~jnp.isfinite(metrics["loss"])
  return {
    "sums": jax.tree.map(jnp.add, accumulator["sums"], metrics),
    "count": accumulator["count"] + 1,
    "first_nonfinite_step": jnp.where((first == 0) & bad, step, first),
  }


def _step_and_accumulate(
  state, accumulator, batch, *, graphdef, optimizer, learning_rate_scale=None
):
  state, metrics = train_step(
    state,
    batch,
    graphdef=graphdef,
    optimizer=optimizer,
    learning_rate_scale=learning_rate_scale,
  )
  return state, accumulate(accumulator, metrics, state.step)


def _run_steps(
  state,
  accumulator,
  inputs,
  data,
  rate,
  *,
  graphdef,
  optimizer,
  gather,
  multi_step,
):
  """One step on ``inputs`` (a batch, or indices for ``gather(data, .)``),
  or with ``multi_step`` one step per leading row of ``inputs`` under
  ``lax.scan``."""

  def one(carry, x):
    batch = x if gather is None else gather(data, x)
    return _step_and_accumulate(
      *carry,
      batch,
      graphdef=graphdef,
      optimizer=optimizer,
      learning_rate_scale=rate,
    ), None

  if not multi_step:
    return one((state, accumulator), inputs)[0]
  # XLA's CPU backend runs convolutions inside a while loop about 10x
  # slower than the same step unrolled (measured: the small CNN at 39 vs
  # 541 ex/s for 10 steps per dispatch), so on the CPU the scan is unrolled;
  # elsewhere it stays a loop (compile time does not grow with n).
  unroll = jax.default_backend() == "cpu"
  return jax.lax.scan(one, (state, accumulator), inputs, unroll=unroll)[0]


def make_train_step(
  graphdef,
  optimizer,
  *,
  population: str | None = None,
  multi_step: bool = False,
  gather=None,
):
  """The jitted step the loop runs; the state and accumulator buffers are
  donated.

  Signatures: ``(state, accumulator, inputs, data=None) -> (state,
  accumulator)``, and for a population ``(state, accumulator, inputs,
  rates, data=None)``.

  Args:
    graphdef, optimizer: as for :func:`train_step`.
    population: None for one run. 'vmap' (or 'map'): every argument but
      ``data`` has a leading member axis and ``rates`` (K,) gives each
      member's learning rate (members are built with learning rate 1).
      'vmap' batches the members into one computation (what an accelerator
      wants); 'map' runs them one after another inside the one compiled
      step (``jax.lax.map``, less memory).
    multi_step: ``inputs`` has a leading axis of n steps (after the member
      axis), run by ``lax.scan`` in one dispatch.
    gather: None: ``inputs`` are batches ``{'image', 'label'}``. Else a
      function ``gather(data, indices) -> batch`` (traced into the step):
      ``inputs`` are int32 batch indices into ``data``, the split kept on
      the device (see :class:`stn_jax.data.pipeline.DeviceInput`).
  """
  run = functools.partial(
    _run_steps,
    graphdef=graphdef,
    optimizer=optimizer,
    gather=gather,
    multi_step=multi_step,
  )
  if population is None:

    def train_steps(state, accumulator, inputs, data=None):
      return run(state, accumulator, inputs, data, None)

    return jax.jit(train_steps, donate_argnums=(0, 1))
  if population == "vmap":
    members = jax.vmap(run, in_axes=(0, 0, 0, None, 0))
  elif population == "map":
    members = lambda s, a, x, data, r: jax.lax.map(
      lambda m: run(m[0], m[1], m[2], data, m[3]), (s, a, x, r)
    )
  else:
    raise ValueError(
      f"population must be None, 'vmap' or 'map'; got {population!r}."
    )

  def population_step(state, accumulator, inputs, rates, data=None):
    return members(state, accumulator, inputs, data, rates)

  return jax.jit(population_step, donate_argnums=(0, 1))


def make_eval_step(graphdef, *, population: bool = False):
  """The jitted :func:`eval_step`; with ``population`` vmapped over the
  members' states (every member sees the same batch)."""
  step = functools.partial(eval_step, graphdef=graphdef)
  if population:
    step = jax.vmap(step, in_axes=(0, None))
  return jax.jit(step)
