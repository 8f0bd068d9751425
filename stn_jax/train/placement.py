"""Where a run lives: one model on a data-parallel mesh (:class:`SingleRun`)
or K stacked members on a member mesh (:class:`Population`).

A placement owns everything that differs between the two: the mesh and the
shardings, the state's placement, the input streams and how a dispatch's
batches are fetched and placed, the step's extra arguments (a population's
per-member hyperparameters), the data position saved in checkpoints, the
folders the run writes (the workdir, or one ``member_<k>`` folder per
member) and the words that describe it. The loop
(:func:`stn_jax.train.loop.fit`) asks the placement and has no population
branch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from stn_jax import checkpointing, distributed, recipe, steps
from stn_jax.data import inputs, pipeline


def population_mesh(num_members: int) -> jax.sharding.Mesh:
  """A 1-D ``('members',)`` mesh over as many local devices as evenly
  divide ``num_members`` (all of them when K is a multiple of their
  number; one when K is prime to it)."""
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
  return jax.sharding.Mesh(np.array(devices[:count]), ("members",))


class SingleRun:
  """One model, replicated over every device of every process; each batch
  is split over the devices along its batch axis (``('data',)`` mesh), and
  each process makes and sends only its own rows.

  Attributes:
    configs: the one config, as a list (as :class:`Population`'s).
    population: False: arrays carry no member axis.
    method: None (no population step method).
    mesh: the ``('data',)`` mesh over all devices.
    state_sharding: the state's (replicated).
    replicated: replicated over the mesh (the on-device training split).
    eval_sharding: evaluation batches' (split along the batch axis).
  """

  population = False
  method = None

  def __init__(self, config, workdir: str):
    self.configs = [config]
    self.workdir = workdir
    self.mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    self.state_sharding = NamedSharding(self.mesh, PartitionSpec())
    self.replicated = self.state_sharding
    self.eval_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    # This process's rows of every global batch (all of them in one
    # process): only those are made and sent.
    self.rows = distributed.local_rows(self.eval_sharding, (config.batch_size,))
    self.streams: list = []
    self.device_data = None

  @property
  def folders(self) -> list[str]:
    """The folders the run writes its files into: the workdir."""
    return [self.workdir]

  def write_run_files(self, in_shape) -> None:
    """``config.json`` and ``in_shape.json`` in every member's folder
    (process 0 only)."""
    if distributed.is_main():
      for config, folder in zip(self.configs, self.folders):
        checkpointing.write_run_files(folder, config, in_shape)

  def optimizer_config(self, config):
    """The config the optimiser is built from: ``config`` itself."""
    return config

  def learning_rate_schedule(self):
    """None: the optimiser applies the schedule (see :class:`Population`)."""
    return None

  def place_state(self, states: list):
    """The step-0 (or restored) state on the devices."""
    return jax.device_put(states[0], self.state_sharding)

  def place_accumulator(self, accumulator: dict):
    """The metric accumulator on the devices."""
    return jax.device_put(accumulator, self.state_sharding)

  def make_input(self, train_arrays, normalization, *, on_device, multi_step):
    """Builds the training streams (:func:`stn_jax.data.inputs.
    training_streams`) and, with ``on_device``, puts the split on the
    devices; returns the gather function the step uses (None on the
    host)."""
    self.multi_step = multi_step
    self.streams = inputs.training_streams(
      self.configs,
      train_arrays,
      normalization,
      on_device=on_device,
      rows=None if self.population else self.rows,
    )
    if not on_device:
      return None
    self.device_data = pipeline.DeviceInput.device_arrays(
      train_arrays, self.replicated
    )
    return self.streams[0].gather

  def _fetch(self, stream, n: int) -> dict:
    return inputs.next_input(
      stream,
      n,
      multi_step=self.multi_step,
      rows=None if self.population else self.rows,
    )

  def next_batch(self, n: int):
    """The input of the next ``n`` steps, placed: each global batch (the
    second axis when several steps are dispatched at once) is assembled
    from every process's rows."""
    batch_axis = 1 if self.multi_step else 0
    spec = PartitionSpec(None, "data") if self.multi_step else None
    placement = NamedSharding(self.mesh, spec) if spec else self.eval_sharding
    batch_size = self.configs[0].batch_size

    def one(v):
      shape = list(v.shape)
      shape[batch_axis] = batch_size
      return jax.make_array_from_process_local_data(placement, v, tuple(shape))

    return jax.tree.map(one, self._fetch(self.streams[0], n))

  def step_fn(self, train_step):
    """``step_fn(state, accumulator, input)`` for the loop."""
    return lambda s, a, x: train_step(s, a, x, self.device_data)

  def data_state(self):
    """The input position to checkpoint (JSON)."""
    return self.streams[0].get_state()

  def restore_data(self, saved) -> None:
    """Moves the streams to a checkpoint's :meth:`data_state`."""
    self.streams[0].set_state(saved)

  def add_params(self, results: list[dict], context) -> None:
    """Nothing: a single run's parameters stay in its checkpoint."""

  def describe(self) -> tuple[str, str]:
    """Words on the placement for the run's first log line: after the
    parameter count, and after the device count."""
    return "", ""

  def log_prefix(self, k: int) -> str:
    """What precedes member ``k``'s evaluation line."""
    return ""


class Population(SingleRun):
  """K members stacked on a leading axis, the member axis split over as many
  local devices as evenly divide K (:func:`population_mesh`; each device
  holds whole members); data and evaluation batches are replicated. Runs in
  one process.

  Args:
    configs: the members' configs (equal but for the member keys).
    workdir: the population's folder (checkpoints).
    method: the step method (``'vmap'``, ``'map'``, ``'unroll'``).
    member_dirs: each member's folder (default ``workdir/member_<k>``).
  """

  population = True

  def __init__(self, configs, workdir: str, method: str, member_dirs=None):
    self.configs = list(configs)
    self.workdir = workdir
    self.method = method
    self.member_dirs = None if member_dirs is None else list(member_dirs)
    self.mesh = population_mesh(len(self.configs))
    self.state_sharding = NamedSharding(self.mesh, PartitionSpec("members"))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.eval_sharding = None
    self.rows = None
    self.streams = []
    self.device_data = None
    hyper = [recipe.member_hyperparameters(c) for c in self.configs]
    # What a checkpoint records of each member, compared on resume.
    self.identity = [{"seed": c.seed, **h} for c, h in zip(self.configs, hyper)]
    self.member_values = jax.device_put(
      {k: np.asarray([h[k] for h in hyper], np.float32) for k in hyper[0]},
      self.state_sharding,
    )

  @property
  def folders(self) -> list[str]:
    """Each member's folder."""
    if self.member_dirs is not None:
      return list(self.member_dirs)
    return [
      os.path.join(self.workdir, f"member_{k}")
      for k in range(len(self.configs))
    ]

  def optimizer_config(self, config):
    """One optimiser serves every member (learning rate 1, ...; see
    :func:`stn_jax.recipe.member_optimizer_config`): each member's own
    values act in the step."""
    return recipe.member_optimizer_config(config)

  def learning_rate_schedule(self):
    """The schedule's shape (learning rate 1), applied in the step."""
    return recipe.learning_rate_schedule(
      recipe.member_optimizer_config(self.configs[0])
    )

  def place_state(self, states: list):
    """The members' states, stacked and split over the member mesh."""
    return jax.device_put(steps.stack_members(states), self.state_sharding)

  def place_accumulator(self, accumulator: dict):
    """One accumulator per member, stacked."""
    stacked = steps.stack_members([accumulator] * len(self.configs))
    return jax.device_put(stacked, self.state_sharding)

  def next_batch(self, n: int):
    """Every member's input of the next ``n`` steps, stacked."""
    batches = [self._fetch(s, n) for s in self.streams]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    return jax.device_put(stacked, self.state_sharding)

  def step_fn(self, train_step):
    """``step_fn(state, accumulator, input)``: with the members' values."""
    return lambda s, a, x: train_step(
      s, a, x, self.member_values, self.device_data
    )

  def data_state(self):
    """Every member's identity and input position."""
    return {
      "members": self.identity,
      "streams": [s.get_state() for s in self.streams],
    }

  def restore_data(self, saved) -> None:
    """Checks that the checkpoint holds these members, and moves each
    member's stream to its position.

    Raises:
      ValueError: the checkpoint holds other members.
    """
    # Populations saved before members had more keys recorded only seed
    # and learning rate; the rest was shared and came from the config,
    # which the workdir check has already compared with the saved one.
    saved_members = [
      {**now, **old} for now, old in zip(self.identity, saved["members"])
    ]
    if len(saved_members) != len(saved["members"]):
      saved_members = saved["members"]
    if saved_members != self.identity:
      raise ValueError(
        f"workdir {self.workdir} holds a population of "
        f"{saved['members']}; these configs are "
        f"{self.identity}. Use a new workdir."
      )
    for stream, position in zip(self.streams, saved["streams"]):
      stream.set_state(position)

  def add_params(self, results: list[dict], context) -> None:
    """Each member's final parameters as ``results[k]['params']`` (the
    population's checkpoint holds them stacked)."""
    for member_results, params in zip(results, context.member_models()):
      member_results["params"] = params

  def describe(self) -> tuple[str, str]:
    """`` x K members (method)``, and the devices they are split over."""
    split = (
      f" (members split over {self.mesh.size})" if self.mesh.size > 1 else ""
    )
    return f" x {len(self.configs)} members ({self.method})", split

  def log_prefix(self, k: int) -> str:
    """``'member k '``."""
    return f"member {k} "


def make_placement(configs, workdir, population_method=None, member_dirs=None):
  """:class:`SingleRun` for one config and no ``population_method``, else
  :class:`Population`.

  Raises:
    ValueError: ``member_dirs`` without a population, not one per config or
      not distinct; a population in a multi-process run.
  """
  if member_dirs is not None:
    member_dirs = [str(d) for d in member_dirs]
    if population_method is None or len(member_dirs) != len(configs):
      raise ValueError(
        "member_dirs needs a population and one folder per config; got "
        f"{len(member_dirs)} folder(s) for {len(configs)} config(s)."
      )
    if len(set(map(os.path.abspath, member_dirs))) != len(member_dirs):
      raise ValueError(f"member_dirs must differ; got {member_dirs}.")
  if population_method is not None and distributed.process_count() > 1:
    raise ValueError(
      "population mode runs in one process (its members are split over "
      f"that process's devices); got {distributed.process_count()} "
      "processes."
    )
  if population_method is None:
    return SingleRun(configs[0], workdir)
  return Population(configs, workdir, population_method, member_dirs)
