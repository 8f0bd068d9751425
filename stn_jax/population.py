"""Population mode: K runs of one architecture in a single jitted step.

The K members may differ in ``seed`` (initialisation and data order) and
``learning_rate``; everything else must be equal. Their parameters and
optimiser states are stacked on a leading population axis and one compiled
step trains all of them (``jax.vmap`` over the axis): on an accelerator many
small runs fit at once, which makes the paper's 3-seed averages cheap. On the
CPU it is slower than separate runs (see :func:`population_step`).

Exactness: the optimiser is built with learning rate 1 and each member's
updates are multiplied by its learning rate. SGD, momentum and Adam updates
are linear in the learning rate, so this equals K separate runs up to float
rounding (tested).

Checkpoints: the stacked parameters and optimiser states, the step and every
member's data-iterator position are saved every ``checkpoint_every`` steps
(orbax, ``workdir/checkpoints``), so rerunning a killed population resumes
it, with the same result as an uninterrupted run.

Not (yet) here: sharding the population over several devices (it runs on the
default device).
"""

from __future__ import annotations

import json
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax import train
from stn_jax.data import pipeline

MAY_DIFFER = ("seed", "learning_rate", "arg")


def check_compatible(configs) -> None:
  """All configs equal except ``MAY_DIFFER``; raises ValueError otherwise."""
  if not configs:
    raise ValueError("configs must not be empty.")
  reference = configs[0].to_dict()
  for i, config in enumerate(configs[1:], 1):
    other = config.to_dict()
    differing = sorted(k for k in set(reference) | set(other)
                       if k not in MAY_DIFFER and reference.get(k) !=
                       other.get(k))
    if differing:
      raise ValueError(f"population members may differ only in "
                       f"{', '.join(MAY_DIFFER)}; member {i} differs in "
                       f"{', '.join(differing)}.")


def stack_members(trees):
  """K pytrees of one structure -> one pytree with a leading axis of K."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def population_step(step_fn, method: str = "vmap"):
  """Jitted step over a leading population axis of every argument.

  ``method='vmap'`` batches the members into one computation (what an
  accelerator wants); ``'map'`` runs them one after another inside the one
  compiled step (``jax.lax.map``, less memory). On the CPU both are 6-11x
  slower than separate runs (XLA's CPU convolutions lose their fast path
  with per-member weights or inside loops; see
  ``experiments/results/population.md``): there, run members separately.
  """
  if method == "vmap":
    return jax.jit(jax.vmap(step_fn))
  if method == "map":
    return jax.jit(lambda *args: jax.lax.map(lambda a: step_fn(*a), args))
  raise ValueError(f"method must be 'vmap' or 'map'; got "
                   f"{method!r}.")


def train_population(configs, workdir: str, *, method: str = "vmap",
                     log=print) -> list[dict]:
  """Trains the K configs together; returns each member's final metrics.

  Also writes ``workdir/population.json`` (the members' configs, results
  and the wall time of this call's training) and returns the stacked
  parameters as ``results[k]['params']`` (member k's parameter pytree).
  Rerunning with the same configs and workdir resumes from the latest
  checkpoint; other configs in that workdir are an error.
  """
  check_compatible(configs)
  for config in configs:
    train.validate_config(config)
  first = configs[0]
  train_arrays, evals, in_shape = train.load_data(first)
  mean = np.float32(first.get("mean", 0.0))
  std = np.float32(first.get("std", 1.0))
  members = []
  for config in configs:
    unit = config.copy_and_resolve_references()
    unit.learning_rate = 1.0  # each member's rate is applied to its updates
    members.append(train.Trainer(unit, in_shape))
  device = jax.devices()[0]
  params = jax.device_put(stack_members([m.params for m in members]), device)
  opt_state = jax.device_put(stack_members([m.opt_state for m in members]), device)
  rates = jnp.asarray([c.learning_rate for c in configs], jnp.float32)
  streams = [pipeline.InputPipeline(train_arrays,
                                    batch_size=c.batch_size, seed=c.seed,
                                    on_the_fly=c.on_the_fly or None,
                                    mean=mean, std=std, sharding=False)
             for c in configs]
  step_fn = population_step(members[0]._train_step, method)  # noqa: SLF001
  identity = [{"seed": c.seed, "learning_rate": c.learning_rate}
              for c in configs]
  # Checkpoints of the stacked state (the Trainer-like view they expect).
  state = types.SimpleNamespace(
      params=params, opt_state=opt_state, config=first,
      replicated=jax.sharding.SingleDeviceSharding(device))
  checkpoints = train.Checkpoints(workdir, first)
  meta = checkpoints.restore_latest(state)
  start_step = 0
  if meta is not None:
    if meta["data_state"]["members"] != identity:
      raise ValueError(
          f"workdir {workdir} holds a population of "
          f"{meta['data_state']['members']}; these configs are {identity}. "
          "Use a new workdir.")
    params, opt_state = state.params, state.opt_state
    for stream, saved in zip(streams, meta["data_state"]["streams"]):
      stream.set_state(saved)
    start_step = int(meta["step"])
    log(f"resumed from step {start_step}")

  def save(step):
    state.params, state.opt_state = params, opt_state
    checkpoints.save(step, state, {"members": identity, "streams": [
        s.get_state() for s in streams]}, force=True)

  start = time.perf_counter()
  for step in range(start_step + 1, first.num_steps + 1):
    batches = [next(s) for s in streams]
    images = jnp.stack([b["image"] for b in batches])
    labels = jnp.stack([b["label"] for b in batches])
    params, opt_state, metrics = step_fn(params, opt_state, images, labels,
                                         rates)
    train._testing_hooks(step)  # noqa: SLF001
    if step % first.checkpoint_every == 0:
      save(step)
    if step % first.log_every == 0 or step == first.num_steps:
      losses = np.asarray(metrics["loss"])
      if not np.all(np.isfinite(losses)):
        raise train.TrainingDiverged(f"population loss {losses} at step "
                                     f"{step}.")
      log(f"step {step}/{first.num_steps} loss "
          + " ".join(f"{x:.4f}" for x in losses))
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  if first.num_steps not in checkpoints.manager.all_steps():
    save(first.num_steps)
  results = []
  for k, (member, config) in enumerate(zip(members, configs)):
    member.params = jax.device_put(jax.tree.map(lambda x: x[k], params),
                                   member.replicated)
    metrics = {}
    for split, arrays in evals.items():
      metrics.update({f"{split}_{name}": value for name, value in
                      member.evaluate(arrays, mean, std).items()})
    results.append({"seed": config.seed,
                    "learning_rate": config.learning_rate, **metrics,
                    "params": member.params})
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "population.json"), "w") as f:
    json.dump({"train_seconds": seconds, "steps": first.num_steps,
               "members": [{k: v for k, v in r.items() if k != "params"}
                           for r in results]}, f, indent=2)
  return results
