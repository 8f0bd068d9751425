"""Whether what a sweep folder holds is the result of the plan now.

A finished point counts only if it ran the config the sweep builds for it
now (e.g. not before a change of ``--set``): :func:`plan_check` says why not
for :func:`stn_jax.sweep.records.collect` and the archive's restore, and the
runner refuses to skip such a point (:func:`check_same_config`).
:func:`check_collect_folder` keeps ``--collect`` off a folder that is not
this sweep's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from stn_jax import workdir as workdir_lib
from stn_jax.sweep import archive as sweep_archive
from stn_jax.sweep.plan import build_config


def config_change(point_dir: str, config) -> str:
  """Why the finished point in ``point_dir`` is not the result of
  ``config`` ('' when it is, or when it has no config.json to tell). A
  point is reported as current only if it ran this config (e.g. not before
  a change of ``--set``). Its step budget counts too: a workdir may extend
  a run (``num_steps`` is safe to change there), but a point finished at
  another budget did not produce this point's results."""
  try:
    saved = sweep_archive.saved_config(point_dir)
  except ValueError as error:
    return (
      f"its config.json is damaged ({error}); delete {point_dir} to rerun it"
    )
  if saved is None:
    return ""
  differences = workdir_lib.config_differences(saved, config)
  if saved.get("num_steps", config.num_steps) != config.num_steps:
    differences.append(
      f"num_steps: {saved['num_steps']!r} -> {config.num_steps!r}"
    )
  if not differences:
    return ""
  return (
    f"finished with another config ({'; '.join(differences)}); its results "
    "are not this point's. Use a new --workdir for the changed sweep, or "
    "delete that point's folder to rerun it."
  )


def check_same_config(point_dir: str, config) -> None:
  """Raises :class:`WorkdirError` when :func:`config_change` finds one."""
  reason = config_change(point_dir, config)
  if reason:
    raise workdir_lib.WorkdirError(f"{point_dir} {reason}")


def plan_check(module, overrides) -> Callable[[dict, str], str]:
  """``check(point, point_dir)`` for :func:`stn_jax.sweep.records.collect`: why a
  finished point's record is not the result of the config the sweep
  builds for it now ('' if it is)."""
  configs = {}

  def check(point, point_dir):
    if point["name"] not in configs:
      try:
        configs[point["name"]] = build_config(module, point, overrides)
      except Exception as error:  # noqa: BLE001 - the point's config fails
        configs[point["name"]] = error
    config = configs[point["name"]]
    if isinstance(config, Exception):
      return f"its config cannot be built now: {config}"
    return config_change(point_dir, config)

  return check


def check_collect_folder(workdir, name, planned, archive) -> None:
  """``--collect`` reads a sweep folder: refuses one that does not exist
  (a misspelled path would be created), one that holds no point folder but
  other files (a training run's workdir: a results.md of pending rows would
  be left in it), or one that holds none of this sweep's points but other
  points (another ``--sweep``, ``--config`` argument or ``--set``), whose
  results.md it would overwrite with pending rows."""
  if archive and os.path.isdir(archive):
    return  # the points may come from the archive
  if not os.path.isdir(workdir):
    raise ValueError(
      f"--collect: {workdir} is not a folder; give the --workdir of a sweep "
      "that ran (nothing was created)."
    )
  names = {p["name"] for p in planned}
  present = sorted(
    entry
    for entry in os.listdir(workdir)
    if re.fullmatch(r"\d{3}_.+", entry)
    and os.path.isdir(os.path.join(workdir, entry))
  )
  if present and not names.intersection(present):
    raise ValueError(
      f"--collect: {workdir} holds none of the {len(planned)} points of "
      f"sweep {name!r} but {len(present)} other point folder(s) (e.g. "
      f"{present[0]}); check --sweep, the --config argument and --set "
      "(nothing was changed)."
    )
  # The sweep's own table files; anything else in a folder without a
  # point (a training run's workdir, another tool's folder) is not a sweep.
  own = {"results.md", "results.jsonl", ".results.lock"}
  others = sorted(set(os.listdir(workdir)) - own)
  if not present and others:
    raise ValueError(
      f"--collect: {workdir} holds no sweep point folder but other files "
      f"(e.g. {others[0]}): it is not the folder of sweep {name!r}; give "
      "the --workdir of a sweep that ran (nothing was written)."
    )
