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

from stn_jax import models, ops, recipe


@struct.dataclass
class TrainState:
  """What a training step changes.

  Attributes:
    step: int32 scalar, steps taken.
    model: the model's ``nnx.State`` (its parameters).
    opt_state: the optax state for ``model``.
    average: None, or the exponential moving average of ``model`` over the
      steps (``ema_decay`` > 0; :func:`update_average`): the model a run
      evaluates, snapshots and saves for inference.
  """

  step: jax.Array
  model: nnx.State
  opt_state: Any
  average: nnx.State | None = None


def init_state(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  *,
  ema_decay: float = 0.0,
) -> tuple[nnx.GraphDef, TrainState]:
  """(the model's structure, its step-0 :class:`TrainState`); with
  ``ema_decay`` > 0 the state keeps a moving average of the model, which
  starts at the initial model."""
  graphdef, model_state = nnx.split(model)
  average = None
  if ema_decay > 0:
    average = jax.tree.map(jnp.copy, model_state)
  return graphdef, TrainState(
    step=jnp.zeros((), jnp.int32),
    model=model_state,
    opt_state=optimizer.init(model_state),
    average=average,
  )


def evaluated_model(state: TrainState) -> nnx.State:
  """The model state a run evaluates, snapshots and exports: the moving
  average where the run keeps one, else the trained parameters."""
  return state.model if state.average is None else state.average


def average_decay(ema_decay: float, step: jax.Array) -> jax.Array:
  """The moving average's decay after ``step`` updates (``step`` >= 1):
  ``min(ema_decay, (1 + step) / (10 + step))``. The ramp (as TensorFlow's
  ``ExponentialMovingAverage`` with ``num_updates``) keeps the first
  steps' average from being held near the random initialisation: 0.18
  after one step, 0.5 after 8, 0.9 after 80, 0.99 after 890."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def update_average(average, model_state, decay):
  """``decay * average + (1 - decay) * model_state`` for every floating
  leaf (parameters and batch statistics alike); other leaves (counters,
  random keys) are the model's own. Works leaf by leaf, so a population's
  stacked states average member by member."""

  def one(mean, value):
    if not jnp.issubdtype(value.dtype, jnp.inexact):
      return value
    return (decay * mean + (1.0 - decay) * value).astype(value.dtype)

  return jax.tree.map(one, average, model_state)


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
  # Statistics of the first transformer, from what it receives in the
  # model (after, e.g., input contrast normalisation or a ResNet stage);
  # recomputing that and its small localisation net is cheap.
  found = models.transformers(model)
  if not found:
    return logits, None, None
  theta = jax.lax.stop_gradient(models.first_transform_params(model, images))
  return logits, theta, found[0].transform


def train_step(
  state: TrainState,
  batch,
  *,
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  member=None,
  schedule=None,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
) -> tuple[TrainState, dict]:
  """One optimiser step on a batch.

  Args:
    state: the :class:`TrainState`.
    batch: ``{'image': float32 (B, H, W, C) normalised, 'label': int (B,)}``.
    graphdef: the model's structure (static).
    optimizer: the optax transformation (static).
    member: None, or a population member's :data:`stn_jax.recipe.MEMBER_HYPERPARAMETERS`
      as scalars (traced: members differ). The optimiser is then one built
      with learning rate 1, multiplier 1, no clipping and no weight decay
      (:func:`member_optimizer_config`), and the step applies the member's:
      its gradients clipped to ``grad_clip_norm`` (> 0), then ``updates =
      learning_rate * multiplier * (updates - schedule(step) *
      weight_decay * params)``. SGD, momentum and Adam updates are linear
      in the learning rate, so this is the member's own optimiser up to
      float rounding.
    schedule: with ``member``: the learning-rate schedule at rate 1.
    label_smoothing: the loss's (static; :func:`classification_loss`).
    ema_decay: the moving average's decay (static; > 0 where the state
      keeps ``average``, which is then moved towards the new parameters by
      :func:`update_average` at :func:`average_decay`).

  Returns:
    ``(next state, metrics)``; metrics are scalars: ``loss``, ``error`` and,
    for ST models, the transformer statistics of
    :func:`transform_statistics`.
  """
  images, labels = batch["image"], batch["label"]

  def loss_fn(model_state):
    logits, theta, transform = _logits_and_theta(graphdef, model_state, images)
    loss = recipe.classification_loss(logits, labels, label_smoothing)
    return loss, (logits, theta, transform)

  (loss, (logits, theta, transform)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.model)
  if member is not None:
    grads = recipe.clip_member_gradients(grads, member["grad_clip_norm"])
  updates, opt_state = optimizer.update(grads, state.opt_state, state.model)
  if member is not None:
    updates = recipe.member_updates(updates, state, member, schedule)
  model_state = optax.apply_updates(state.model, updates)
  metrics = {"loss": loss, "error": (logits.argmax(-1) != labels).mean()}
  if theta is not None:
    metrics.update(transform_statistics(transform, theta))
  average = state.average
  if average is not None:
    if not ema_decay > 0:
      raise ValueError(
        "ema_decay must be in (0, 1) for a state with an average; "
        f"got {ema_decay!r}."
      )
    decay = average_decay(ema_decay, state.step + 1)
    average = update_average(average, model_state, decay)
  return state.replace(
    step=state.step + 1,
    model=model_state,
    opt_state=opt_state,
    average=average,
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
  state,
  accumulator,
  batch,
  *,
  graphdef,
  optimizer,
  member=None,
  schedule=None,
  label_smoothing=0.0,
  ema_decay=0.0,
):
  state, metrics = train_step(
    state,
    batch,
    graphdef=graphdef,
    optimizer=optimizer,
    member=member,
    schedule=schedule,
    label_smoothing=label_smoothing,
    ema_decay=ema_decay,
  )
  return state, accumulate(accumulator, metrics, state.step)


def _run_steps(
  state,
  accumulator,
  inputs,
  data,
  member,
  *,
  graphdef,
  optimizer,
  gather,
  multi_step,
  schedule=None,
  label_smoothing=0.0,
  ema_decay=0.0,
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
      member=member,
      schedule=schedule,
      label_smoothing=label_smoothing,
      ema_decay=ema_decay,
    ), None

  if not multi_step:
    return one((state, accumulator), inputs)[0]
  # XLA's CPU backend runs convolutions inside a while loop about 10x
  # slower than the same step unrolled (measured: the small CNN at 39 vs
  # 541 ex/s for 10 steps per dispatch), so on the CPU the scan is unrolled;
  # elsewhere it stays a loop (compile time does not grow with n).
  unroll = jax.default_backend() == "cpu"
  return jax.lax.scan(one, (state, accumulator), inputs, unroll=unroll)[0]


def stack_members(trees):
  """K trees of one structure -> one tree with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unrolled(fn, stacked):
  """``fn`` applied to each member of ``stacked`` (a tree with a leading
  member axis), traced once per member; the outputs stacked again. Like
  ``jax.lax.map(fn, stacked)``, but as straight-line code."""
  size = jax.tree.leaves(stacked)[0].shape[0]
  outputs = [
    fn(jax.tree.map(lambda t, i=i: t[i], stacked)) for i in range(size)
  ]
  return stack_members(outputs)


def make_train_step(
  graphdef,
  optimizer,
  *,
  population: str | None = None,
  multi_step: bool = False,
  gather=None,
  schedule=None,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
  compiler_options: dict[str, str] | None = None,
):
  """The jitted step the loop runs; the state and accumulator buffers are
  donated.

  Signatures: ``(state, accumulator, inputs, data=None) -> (state,
  accumulator)``, and for a population ``(state, accumulator, inputs,
  members, data=None)``.

  Args:
    graphdef, optimizer: as for :func:`train_step`.
    population: None for one run. 'vmap' (or 'map'): every argument but
      ``data`` has a leading member axis, and ``members`` holds each
      member's :data:`stn_jax.recipe.MEMBER_HYPERPARAMETERS` as (K,) arrays (the optimiser
      is built from :func:`member_optimizer_config`). 'vmap' batches the
      members into one computation (what an accelerator wants; a member
      axis sharded over devices stays sharded); 'map' runs them one after
      another inside the one compiled step (``jax.lax.map``, less memory);
      'unroll' traces each member's step separately into the one compiled
      step (XLA's CPU backend runs it as fast as separate steps, where a
      vmapped or mapped step is 7-20x slower; compilation grows with K).
    multi_step: ``inputs`` has a leading axis of n steps (after the member
      axis), run by ``lax.scan`` in one dispatch.
    gather: None: ``inputs`` are batches ``{'image', 'label'}``. Else a
      function ``gather(data, indices) -> batch`` (traced into the step):
      ``inputs`` are int32 batch indices into ``data``, the split kept on
      the device (see :class:`stn_jax.data.pipeline.DeviceInput`).
    schedule: for a population, the learning-rate schedule at rate 1
      (:func:`learning_rate_schedule` of the member optimiser's config).
    label_smoothing: of the loss (:func:`classification_loss`).
    ema_decay: of the state's moving average (:func:`train_step`).
    compiler_options: XLA options for this step's compilation (``jax.jit``'s;
      :func:`stn_jax.xla_cpu.compiler_options`).
  """
  jit = functools.partial(
    jax.jit, donate_argnums=(0, 1), compiler_options=compiler_options
  )
  run = functools.partial(
    _run_steps,
    graphdef=graphdef,
    optimizer=optimizer,
    gather=gather,
    multi_step=multi_step,
    schedule=schedule,
    label_smoothing=label_smoothing,
    ema_decay=ema_decay,
  )
  if population is None:

    def train_steps(state, accumulator, inputs, data=None):
      return run(state, accumulator, inputs, data, None)

    return jit(train_steps)
  if schedule is None:
    raise ValueError("a population step needs the rate-1 schedule.")
  if population == "vmap":
    run_members = jax.vmap(run, in_axes=(0, 0, 0, None, 0))
  elif population == "map":
    run_members = lambda s, a, x, data, h: jax.lax.map(
      lambda m: run(m[0], m[1], m[2], data, m[3]), (s, a, x, h)
    )
  elif population == "unroll":

    def run_members(s, a, x, data, h):
      return _unrolled(
        lambda m: run(m[0], m[1], m[2], data, m[3]), (s, a, x, h)
      )

  else:
    raise ValueError(
      f"population must be None, 'vmap', 'map' or 'unroll'; got {population!r}."
    )

  def population_step(state, accumulator, inputs, members, data=None):
    return run_members(state, accumulator, inputs, data, members)

  return jit(population_step)


def make_eval_step(
  graphdef,
  *,
  population: bool | str = False,
  compiler_options: dict[str, str] | None = None,
):
  """The jitted :func:`eval_step`. With ``population`` (True or a method of
  :func:`make_train_step`) it takes stacked member states and returns
  stacked metrics (every member sees the same batch): members unrolled
  for ``'unroll'``, vmapped otherwise. ``compiler_options``: as for
  :func:`make_train_step`."""
  step = functools.partial(eval_step, graphdef=graphdef)
  if population == "unroll":
    single = step
    step = lambda state, batch: _unrolled(lambda s: single(s, batch), state)
  elif population:
    step = jax.vmap(step, in_axes=(0, None))
  return jax.jit(step, compiler_options=compiler_options)
