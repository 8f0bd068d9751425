"""Hyperparameter sweeps: plain functions in a config file.

  python -m stn_jax.sweep --config=configs/mnist.py[:ARG] --sweep=table1 \
      --workdir=DIR [--dry_run] [--set=num_steps=1000 ...]

``--config=file.py:ARG`` means what it means for ``stn_jax.main``: the
config file and its ``get_config`` argument; here ``ARG`` (e.g.
``small=true``) is appended to every point's own argument.

A sweep is a function ``sweep_<name>(add)`` beside ``get_config`` in the
config file; each ``add(arg, **overrides)`` adds one point: the config
arg string and config overrides (dotted keys such as ``'model_kwargs.width'``
go through a dict: ``add(arg, **{'model_kwargs.width': 0.5})``).

Every point trains in its own workdir ``DIR/<index>_<name>``. The runner is
resumable: a finished point (its ``results.json`` exists) is skipped, an
interrupted one resumes from its checkpoint. A failed point is recorded with
its error and the others still run. Results go to ``DIR/results.jsonl`` and
``DIR/results.md``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import flags

from stn_jax import cli, train
from stn_jax import workdir as workdir_lib
from stn_jax.config_args import load_config_module, split_config_spec


def sweep_names(module) -> list[str]:
  return sorted(
    n[len("sweep_") :]
    for n in dir(module)
    if n.startswith("sweep_") and callable(getattr(module, n))
  )


def expand(module, name: str) -> list[dict[str, Any]]:
  """The points of sweep ``name``: ``[{'arg': str, 'overrides': dict}]``."""
  function = getattr(module, f"sweep_{name}", None)
  if function is None:
    raise ValueError(
      f"sweep must be one of {', '.join(sweep_names(module))}; got {name!r}."
    )
  points = []

  def add(arg: str = "", **overrides):
    points.append({"arg": arg, "overrides": overrides})

  function(add)
  return points


def build_config(
  module, point, extra_overrides=None
) -> ml_collections.ConfigDict:
  """The config of one point: ``get_config(arg)`` plus its overrides."""
  config = module.get_config(point["arg"])
  overrides = {**point["overrides"], **(extra_overrides or {})}
  for key, value in overrides.items():
    target, *rest = key.rsplit(".", 1)[::-1]
    parent = config
    if rest:
      for part in rest[0].split("."):
        parent = parent[part]
    if target not in parent:
      raise ValueError(f"override {key!r}: no such config field.")
    parent[target] = value
  return config


def point_name(index: int, point) -> str:
  text = ",".join(
    [point["arg"], *(f"{k}={v}" for k, v in sorted(point["overrides"].items()))]
  )
  slug = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", text).strip(",_")[:80]
  return f"{index:03d}_{slug or 'default'}"


def _write_table(workdir, records):
  metric_keys = sorted(
    {k for r in records for k in r.get("results", {}) if k.endswith("error")}
  )
  lines = [
    "| point | arg | overrides | status | " + " | ".join(metric_keys) + " |",
    "|---|---|---|---|" + "---|" * len(metric_keys),
  ]
  for r in records:
    cells = [
      f"{100 * r['results'][k]:.2f}%" if k in r.get("results", {}) else ""
      for k in metric_keys
    ]
    status = (
      r["status"]
      if r["status"] != "failed"
      else ("failed: " + r["error"].splitlines()[-1][:80].replace("|", "/"))
    )
    lines.append(
      f"| {r['name']} | `{r['arg']}` | "
      f"{json.dumps(r['overrides']) if r['overrides'] else ''} | "
      f"{status} | " + " | ".join(cells) + " |"
    )
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def run_sweep(
  config_path: str,
  name: str,
  workdir: str,
  *,
  dry_run: bool = False,
  overrides: dict | None = None,
  train_fn: Callable = train.train_and_evaluate,
  select: Callable[[dict], bool] | None = None,
  extra_arg: str = "",
  report_only: bool = False,
  log=print,
) -> list[dict]:
  """Runs (or, with ``dry_run``, checks and lists) every point.

  ``select(point)`` keeps a subset of the points (their workdir names keep
  their index in the full sweep). ``extra_arg`` (e.g. ``'small=true'``) is
  appended to every point's ``get_config`` arg before it is named, so runs
  with and without it get different workdirs. ``report_only`` collects the
  finished points and marks the others 'pending' without training them
  (e.g. to tabulate a sweep that is still running elsewhere).

  Returns:
    one record per point: name, arg, overrides, status ('finished',
    'skipped' (finished earlier), 'failed', 'ok' (dry run), 'pending'
    (report_only), 'interrupted' (SIGTERM or SIGINT during a point, or
    before the next one: the sweep stops there; ``signal`` names it)),
    results, error.
  """
  module = load_config_module(config_path)
  points = expand(module, name)
  records = []
  os.makedirs(workdir, exist_ok=True)
  with _StopBetweenPoints() as stop:
    _run_points(
      module,
      points,
      workdir,
      records,
      stop,
      dry_run=dry_run,
      overrides=overrides,
      train_fn=train_fn,
      select=select,
      extra_arg=extra_arg,
      report_only=report_only,
      log=log,
    )
  if dry_run:
    for r in records:
      log(
        f"{r['name']}: {r['status']}"
        + (f" {r['error'].splitlines()[-1]}" if r["error"] else "")
      )
  return records


class _StopBetweenPoints:
  """SIGTERM/SIGINT between points stop the sweep before the next point
  (during a point, the training loop handles them and saves)."""

  def __enter__(self):
    self.signal = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for number in (signal.SIGTERM, signal.SIGINT):
        self._previous[number] = signal.signal(number, self._handler)
    return self

  def _handler(self, number, _):
    self.signal = signal.Signals(number).name

  def __exit__(self, *exc):
    for number, previous in self._previous.items():
      signal.signal(number, previous)


def _run_points(
  module,
  points,
  workdir,
  records,
  stop,
  *,
  dry_run,
  overrides,
  train_fn,
  select,
  extra_arg,
  report_only,
  log,
):
  for index, point in enumerate(points):
    if select is not None and not select(point):
      continue
    if extra_arg:
      point = {
        **point,
        "arg": ",".join(a for a in (point["arg"], extra_arg) if a),
      }
    record = {
      "name": point_name(index, point),
      **point,
      "results": {},
      "error": "",
    }
    point_dir = os.path.join(workdir, record["name"])
    results_path = os.path.join(point_dir, "results.json")
    if stop.signal and not (dry_run or report_only):
      record.update(status="interrupted", signal=stop.signal)
      records.append(record)
      _write_records(workdir, records)
      log(
        f"{stop.signal} between points: the sweep stopped before "
        f"{record['name']}. Rerun the same command to continue."
      )
      return
    try:
      config = build_config(module, point, overrides)
      train.validate_config(config)
      if dry_run:
        record["status"] = "ok"
      elif os.path.isfile(results_path):
        _check_same_config(point_dir, config)
        with open(results_path) as f:
          record["results"] = json.load(f)
        record["status"] = "skipped"
      elif report_only:
        record["status"] = "pending"
      else:
        log(f"[{index + 1}/{len(points)}] {record['name']}")
        start = time.perf_counter()
        record["results"] = dict(train_fn(config, point_dir))
        record["results"]["wall_seconds"] = time.perf_counter() - start
        if "interrupted_at_step" in record["results"]:
          record["status"] = "interrupted"
          record["signal"] = record["results"].get("signal", "SIGTERM")
        else:
          if os.path.isfile(results_path):  # keep the time with the results
            with open(results_path, "w") as f:
              json.dump(record["results"], f, indent=2)
          record["status"] = "finished"
    except Exception:  # noqa: BLE001 - report it, run the other points
      record["status"] = "failed"
      record["error"] = traceback.format_exc()
      log(f"point {record['name']} failed:\n{record['error']}")
    records.append(record)
    if not (dry_run or report_only):
      _write_records(workdir, records)
    if record["status"] == "interrupted":
      log(
        f"point {record['name']} was stopped by {record['signal']} at step "
        f"{record['results']['interrupted_at_step']} (checkpoint saved); "
        "stopping the sweep. Rerun the same command to resume."
      )
      return


def _write_records(workdir, records) -> None:
  with open(os.path.join(workdir, "results.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  _write_table(workdir, records)


def _check_same_config(point_dir: str, config) -> None:
  """A finished point is reported as current only if it ran this config
  (e.g. not before a change of ``--set``)."""
  path = os.path.join(point_dir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    differences = workdir_lib.config_differences(json.load(f), config)
  if differences:
    raise workdir_lib.WorkdirError(
      f"{point_dir} finished with another config ({'; '.join(differences)})"
      "; its results are not this point's. Use a new --workdir for the "
      "changed sweep, or delete that point's folder to rerun it."
    )


def parse_overrides(items) -> dict:
  """``['k=v', ...]`` -> ``{k: v}``, values read as Python literals when
  they are (``1000``, ``1e-3``, ``True``), else kept as strings."""
  overrides = {}
  for item in items or []:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set takes key=value; got {item!r}.")
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


def _flags() -> flags.FlagValues:
  values = flags.FlagValues()
  flags.DEFINE_string(
    "config",
    None,
    "Config file with its sweeps, with an "
    "optional :ARG appended to every point's argument "
    "(e.g. configs/mnist.py:small=true).",
    flag_values=values,
  )
  flags.DEFINE_string(
    "sweep",
    None,
    "The sweep: sweep_<name> in the config file.",
    flag_values=values,
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "One subdirectory per point, results.jsonl and results.md.",
    flag_values=values,
  )
  flags.DEFINE_bool(
    "dry_run",
    False,
    "Build and list every point; train nothing.",
    flag_values=values,
  )
  flags.DEFINE_multi_string(
    "set",
    [],
    "Override for every point, e.g. num_steps=1000 (repeatable).",
    flag_values=values,
  )
  for name in ("config", "sweep", "workdir"):
    flags.mark_flag_as_required(name, flag_values=values)
  return values


def main(argv=None) -> int:
  """``python -m stn_jax.sweep``; returns the exit status (1 if a point
  failed)."""
  from absl import logging

  values = _flags()

  def body(positional):
    if positional:
      raise ValueError(f"unexpected arguments {positional}.")
    logging.set_verbosity(logging.WARNING)
    path, extra_arg = split_config_spec(values.config)
    records = run_sweep(
      path,
      values.sweep,
      values.workdir,
      dry_run=values.dry_run,
      overrides=parse_overrides(values.set),
      extra_arg=extra_arg,
    )
    failed = [r for r in records if r["status"] == "failed"]
    print(
      f"{len(records)} points, {len(failed)} failed"
      + ("" if values.dry_run else f"; results in {values.workdir}/results.md")
    )
    stopped = [r["signal"] for r in records if r["status"] == "interrupted"]
    if stopped:
      return {"SIGINT": 130, "SIGTERM": 143}.get(stopped[0], 1)
    return 1 if failed else 0

  return cli.run(
    body, values, argv, prog="python -m stn_jax.sweep", doc=__doc__
  )


if __name__ == "__main__":
  raise SystemExit(main())
