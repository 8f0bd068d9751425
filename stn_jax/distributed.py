"""Several processes training one run (multi-host), with jax.distributed.

Every process runs the same program on its own devices; JAX joins them
into one set of global devices (``jax.devices()``), so the data-parallel
mesh of :func:`stn_jax.train.loop.fit` spans all of them. What each process
does beyond that:

- **Data.** Each loads only its rows of every global batch
  (:func:`local_rows`) and hands them to
  ``jax.make_array_from_process_local_data``. Process 0 builds a missing
  dataset while the others wait (:func:`main_first`).
- **Files and console.** Only process 0 (:func:`is_main`) takes the
  workdir lock, writes ``config.json``, metrics, TensorBoard events,
  snapshots, figures and results, and prints; every process takes part in
  each computation and in the orbax checkpoints (orbax coordinates the
  processes itself).
- **Agreement.** A decision one process takes alone would leave the others
  waiting forever in the next collective. A signal (SIGTERM, Ctrl-C) is
  acted on at steps agreed in advance (:func:`any_process`), so every
  process stops after the same step with the same checkpoint; the
  checkpoint to resume from is process 0's choice, and a refusal (e.g. a
  workdir holding another run) on process 0 stops every process
  (:func:`check_on_main`).

On the CPU, the processes' collectives go through gloo (set by
:func:`initialize`).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np


def initialize(
  coordinator_address: str = "",
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
) -> bool:
  """Joins this process to the others; returns whether it did anything.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0's coordinator.
    num_processes: how many processes take part (>= 1).
    process_id: this one's index in ``[0, num_processes)``.
    auto: let ``jax.distributed.initialize`` find all three itself (SLURM,
      Open MPI, TPU slices, Kubernetes...); the others must then be unset.

  Nothing is done without ``auto`` and without a coordinator address (one
  process). Raises ValueError naming the flag for inconsistent arguments.
  """
  explicit = (
    bool(coordinator_address)
    or num_processes is not None
    or (process_id is not None)
  )
  if auto and explicit:
    raise ValueError(
      "--distributed=auto finds the coordinator, the number of processes "
      "and the process id itself; got also --coordinator_address="
      f"{coordinator_address!r}, --num_processes={num_processes!r}, "
      f"--process_id={process_id!r}."
    )
  if not auto and not explicit:
    return False
  if not auto:
    if not coordinator_address or ":" not in coordinator_address:
      raise ValueError(
        "--coordinator_address must be HOST:PORT of process 0; got "
        f"{coordinator_address!r}."
      )
    if not isinstance(num_processes, int) or num_processes < 1:
      raise ValueError(
        f"--num_processes must be an int >= 1; got {num_processes!r}."
      )
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
      raise ValueError(
        f"--process_id must be an int in [0, {num_processes}); got "
        f"{process_id!r}."
      )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(
      coordinator_address, num_processes=num_processes, process_id=process_id
    )
  return True


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """Whether this is process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is True on any (one process: the
  flag itself). Every process must call it at the same point."""
  return bool(max_over_processes(int(flag)))


def max_over_processes(value: int) -> int:
  """The largest of every process's int ``value``."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  values = multihost_utils.process_allgather(np.asarray([value], np.int64))
  return int(np.max(values))


def from_main(value: int) -> int:
  """Process 0's int ``value``, on every process."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


class RefusedOnMain(ValueError):
  """Process 0 refused to start (the reason is in its own output)."""


@contextlib.contextmanager
def main_first(name: str):
  """Runs the body on process 0, then (after a barrier) on the others: e.g.
  process 0 builds a missing dataset that the others then read. A failure
  on process 0 is raised there and stops the others with
  :class:`RefusedOnMain` instead of leaving them at the barrier."""
  if jax.process_count() == 1:
    yield
    return
  if is_main():
    try:
      yield
    except BaseException:
      from_main(1)  # tell the others, then fail here
      raise
    from_main(0)
  else:
    if from_main(0):
      raise RefusedOnMain(
        f"process 0 failed during {name}; see its output for why."
      )
    yield


def check_on_main(name: str, check) -> None:
  """Calls ``check()`` on process 0 only; an exception there is raised
  there and as :class:`RefusedOnMain` on the others."""
  with main_first(name):
    if is_main():
      check()


def local_rows(sharding, global_shape, axis: int = 0) -> slice:
  """This process's rows along ``axis`` of a global array of
  ``global_shape`` placed with ``sharding`` (one contiguous block: the
  devices of a process are consecutive in the mesh)."""
  if jax.process_count() == 1:
    return slice(0, global_shape[axis])
  parts = sharding.addressable_devices_indices_map(tuple(global_shape))
  starts = [index[axis].start or 0 for index in parts.values()]
  stops = [
    global_shape[axis] if index[axis].stop is None else index[axis].stop
    for index in parts.values()
  ]
  return slice(min(starts), max(stops))
