"""The training recipe: optimiser, learning-rate schedule and loss.

:func:`make_optimizer` builds the optax transformation a run trains with
(SGD, momentum or Adam; the step or cosine schedule with optional warmup;
the localisation nets' learning-rate multiplier; decoupled weight decay;
gradient clipping) and :func:`classification_loss` the loss, both from the
config. A population shares one optimiser with unit hyperparameters
(:func:`member_optimizer_config`) and the step scales each member's update
by its own (:func:`member_updates`, :func:`clip_member_gradients`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stn_jax import config_schema

OPTIMIZERS = ("sgd", "momentum", "adam")


SCHEDULES = ("step", "cosine")


def learning_rate_schedule(config) -> optax.Schedule:
  """The learning rate at each step.

  ``config.lr_schedule``:

  - ``'step'`` (default): ``learning_rate`` times ``lr_decay_factor`` every
    ``lr_decay_every`` steps (the paper's protocol);
  - ``'cosine'``: ``learning_rate`` decayed to 0 along half a cosine over
    ``num_steps`` (``lr_decay_*`` unused).

  ``config.warmup_steps`` > 0 multiplies either by ``(step + 1) /
  warmup_steps`` for the first ``warmup_steps`` steps (a linear ramp that
  never gives a zero rate). Without the keys (configs written before they
  existed): ``'step'`` and no warmup.
  """
  name = config_schema.get(config, "lr_schedule")
  if name == "step":
    schedule = optax.exponential_decay(
      config.learning_rate,
      transition_steps=config.lr_decay_every,
      decay_rate=config.lr_decay_factor,
      staircase=True,
    )
  elif name == "cosine":
    schedule = optax.cosine_decay_schedule(
      config.learning_rate, decay_steps=config.num_steps
    )
  else:
    raise ValueError(
      f"config.lr_schedule must be one of {', '.join(SCHEDULES)}; got {name!r}."
    )
  warmup = config_schema.get(config, "warmup_steps")
  if warmup <= 0:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, (step + 1) / warmup)


def classification_loss(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy of ``logits`` ``(B, K)`` against integer
  ``labels`` ``(B,)``; with ``label_smoothing`` = s > 0 the target is the
  one-hot label times ``1 - s`` plus ``s / K`` on every class."""
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()
  targets = optax.smooth_labels(
    jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
    label_smoothing,
  )
  return optax.softmax_cross_entropy(logits, targets).mean()


# What the members of a population may set each for themselves (besides
# the seed): the step applies them per member (:func:`train_step`). The
# member-role keys of the config schema.
MEMBER_HYPERPARAMETERS = config_schema.MEMBER_HYPERPARAMETERS


def member_hyperparameters(config) -> dict[str, float]:
  """The config's :data:`MEMBER_HYPERPARAMETERS` (their implicit values
  for keys older configs lack)."""
  return {
    k: float(config_schema.get(config, k)) for k in MEMBER_HYPERPARAMETERS
  }


def _is_localisation(path) -> bool:
  return any(getattr(k, "key", None) == "localisation" for k in path)


def _direction(name: str, weight_decay: float):
  """The optimiser without its learning rate, plus decoupled weight decay
  (``update = -lr * (direction + weight_decay * param)``, as AdamW)."""
  parts = {
    "sgd": [],
    "momentum": [optax.trace(decay=0.9)],
    "adam": [optax.scale_by_adam()],
  }[name]
  return [*parts, optax.add_decayed_weights(weight_decay)]


def make_optimizer(config, model_state) -> optax.GradientTransformation:
  """SGD/momentum/Adam with a step schedule; the localisation nets get
  ``localisation_lr_multiplier`` times the learning rate; optional
  decoupled weight decay (``weight_decay`` > 0: the update is ``-lr *
  (direction + weight_decay * param)``, AdamW's form, for every optimiser)
  and gradient clipping by global norm (``grad_clip_norm`` > 0), applied
  first."""
  schedule = learning_rate_schedule(config)
  weight_decay = config_schema.get(config, "weight_decay")
  base = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
  }[config.optimizer]
  if weight_decay > 0:
    base = lambda lr: optax.chain(
      *_direction(config.optimizer, weight_decay),
      optax.scale_by_learning_rate(lr),
    )
  multiplier = config_schema.get(config, "localisation_lr_multiplier")
  labels = jax.tree_util.tree_map_with_path(
    lambda path, _: "localisation" if _is_localisation(path) else "other",
    model_state,
  )
  transform = optax.multi_transform(
    {
      "other": base(schedule),
      "localisation": base(lambda step: multiplier * schedule(step)),
    },
    labels,
  )
  clip = config_schema.get(config, "grad_clip_norm")
  if clip > 0:
    transform = optax.chain(optax.clip_by_global_norm(clip), transform)
  return transform


def member_optimizer_config(config):
  """A copy of ``config`` whose optimiser serves every population member
  (:func:`train_step`'s ``member``): learning rate 1, localisation
  multiplier 1, no clipping, no weight decay."""
  config = config.copy_and_resolve_references()
  config.learning_rate = 1.0
  config.localisation_lr_multiplier = 1.0
  config.grad_clip_norm = 0.0
  if "weight_decay" in config:
    config.weight_decay = 0.0
  return config


def clip_member_gradients(grads, max_norm):
  """``grads`` clipped to global norm ``max_norm`` (optax's clipping at a
  traced ``max_norm``: a population member's own); 0: unclipped."""
  clipped, _ = optax.clip_by_global_norm(max_norm).update(
    grads, optax.EmptyState()
  )
  return jax.tree.map(
    lambda c, g: jnp.where(max_norm > 0, c, g), clipped, grads
  )


def member_updates(updates, state, member, schedule):
  """A population member's update from the shared optimiser's unit-rate
  ``updates``: times its ``learning_rate`` (and its
  ``localisation_lr_multiplier`` on the localisation nets), less its
  decoupled ``weight_decay`` times the parameter (``state.model``) at the
  schedule's rate at ``state.step``; ``member`` maps those names to
  scalars."""
  decay = member["weight_decay"] * schedule(state.step)

  def one(path, update, param):
    rate = member["learning_rate"]
    if _is_localisation(path):
      rate = rate * member["localisation_lr_multiplier"]
    return rate * (update - decay * param)

  return jax.tree_util.tree_map_with_path(one, updates, state.model)
