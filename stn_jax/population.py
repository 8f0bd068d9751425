"""Population mode: K runs of one architecture in a single jitted step.

The K members may differ in ``seed`` (initialisation and data order),
``learning_rate``, ``localisation_lr_multiplier``, ``grad_clip_norm`` and
``weight_decay`` (:data:`stn_jax.recipe.MEMBER_HYPERPARAMETERS`: the step
applies each member's own values); everything else must be equal. Their states are stacked
on a leading member axis and the pure step of :mod:`stn_jax.steps` runs
under ``jax.vmap`` (or ``jax.lax.map``, or unrolled over the members)
inside the same loop and hooks as a single run
(:func:`stn_jax.train.loop.fit`): per-member ``metrics.jsonl`` and
TensorBoard events (``workdir/member_<k>/``), periodic evaluation, a
non-finite-loss check every step, checkpoints and SIGTERM handling. On an
accelerator many small runs fit at once (vmap). On a CPU a vmapped step is
several times slower than separate runs, so the default method there
unrolls the members into one step, as fast as separate runs
(``experiments/results/population.md``).

Exactness: the optimiser is built with learning rate 1, multiplier 1 and
neither clipping nor weight decay; each member's gradients are clipped to
its own norm, and its updates are scaled by its learning rate (times its
multiplier for the localisation nets) after subtracting its decoupled
weight decay. SGD, momentum and Adam updates are linear in the learning
rate, so this equals K separate runs up to float rounding (tested).

Devices: the member axis is split over the local devices (as many as
evenly divide K; :func:`stn_jax.train.placement.population_mesh`): each device runs
whole members, the data is replicated. Tested with 4 forced host devices.

Checkpoints hold the stacked state, the step and every member's data
position, so rerunning a killed population resumes it with the result of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os

import jax

from stn_jax import config_schema, recipe, train

# The member-role keys of the config schema, and the config argument
# string (the keys it produces are compared instead).
MAY_DIFFER = (*config_schema.MEMBER_KEYS, "arg")
METHODS = ("auto", "vmap", "map", "unroll")


def resolve_method(method: str, num_members: int) -> str:
  """The step method for ``num_members`` members on the local devices.

  ``'auto'``: ``'unroll'`` on a CPU backend when the members share one
  device (as fast as separate runs there; a vmapped step of 3 paper
  ST-CNNs was 0.14x, ``experiments/results/population.md``), else
  ``'vmap'`` (accelerators, and members split over several devices).
  ``'unroll'`` over several devices is refused: it would not keep each
  member on its own device. Other methods are returned as they are.
  """
  devices = train.population_mesh(num_members).size
  if method == "auto":
    one_cpu = jax.default_backend() == "cpu" and devices == 1
    return "unroll" if one_cpu else "vmap"
  if method == "unroll" and devices > 1:
    raise ValueError(
      f"method 'unroll' runs all members on one device, but these "
      f"{num_members} members are split over {devices} devices; use "
      "'vmap' (or 'auto')."
    )
  return method


def check_compatible(configs) -> None:
  """All configs equal except ``MAY_DIFFER``; raises ValueError otherwise."""
  if not configs:
    raise ValueError("configs must not be empty.")
  reference = configs[0].to_dict()
  for i, config in enumerate(configs[1:], 1):
    other = config.to_dict()
    differing = sorted(
      k
      for k in set(reference) | set(other)
      if k not in MAY_DIFFER and reference.get(k) != other.get(k)
    )
    if differing:
      raise ValueError(
        f"population members may differ only in "
        f"{', '.join(MAY_DIFFER)}; member {i} differs in "
        f"{', '.join(differing)}."
      )


def train_population(
  configs,
  workdir: str,
  *,
  method: str = "auto",
  member_dirs=None,
  hooks=(),
  log=print,
) -> list[dict]:
  """Trains the K configs together; returns each member's final metrics.

  Args:
    configs: K run configs that differ only in ``MAY_DIFFER``.
    workdir: the population's directory (checkpoints, ``population.json``;
      member k's metrics, results and snapshots in ``member_<k>/``).
    member_dirs: K folders for the members' files instead of
      ``workdir/member_<k>`` (the sweep runner's point folders); each is
      checked against its config like a run's workdir. The stacked
      checkpoints stay in ``workdir``.
    method: ``'vmap'`` (one batched computation), ``'map'``
      (``jax.lax.map``: members one after another inside the step),
      ``'unroll'`` (each member's step traced separately into the one
      compiled step) or ``'auto'`` (:func:`resolve_method`: unroll on one
      CPU device, vmap otherwise).
    hooks: extra :class:`stn_jax.hooks.Hook` objects (as in
      :func:`stn_jax.train.loop.train_and_evaluate`).
    log: where console lines go.

  Returns:
    one dict per member: ``seed``, its member hyperparameters (learning
    rate, multiplier, clipping, weight decay), the final evaluation
    metrics and ``params`` (the member's model state); or, when SIGTERM
    stopped the run, ``{'interrupted_at_step': step}`` per member. Also
    writes ``workdir/population.json`` (configs, results, the wall time of
    this call's training). Rerunning with the same configs and workdir
    resumes; other configs in that workdir are an error.
  """
  if method not in METHODS:
    raise ValueError(
      f"method must be one of {', '.join(METHODS)}; got {method!r}."
    )
  check_compatible(configs)
  results = train.fit(
    configs,
    workdir,
    population_method=resolve_method(method, len(configs)),
    member_dirs=member_dirs,
    hooks=hooks,
    log=log,
  )
  if "interrupted_at_step" in results[0]:
    return results
  for config, member in zip(configs, results):
    member.update(seed=config.seed, **recipe.member_hyperparameters(config))
  with open(os.path.join(workdir, "population.json"), "w") as f:
    json.dump(
      {
        "train_seconds": results[0]["train_seconds"],
        "steps": configs[0].num_steps,
        "members": [
          {k: v for k, v in r.items() if k not in ("params", "train_seconds")}
          for r in results
        ],
      },
      f,
      indent=2,
    )
  return results
