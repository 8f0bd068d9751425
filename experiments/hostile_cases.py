r"""Issue 33's hostile cases, rerun as a careless or unlucky user would.

  python experiments/hostile_cases.py [--only PATTERN] [--list] [--jobs 2]
      [--scratch DIR] [--out experiments/results/hostile_cases.md]

Every case is a real command line in a subprocess (``python -m
stn_jax.main``, ``.sweep``, ``.viz``, ``.evaluate``, ``.data``,
``.model_zoo``, ``.export``, or a few library calls such as ``restore``
and ``predict`` through ``python -c``), run on its own copy of a shared
setup: a tiny synthetic ``distorted_mnist/rts`` (32 training, 16 test
images), one trained ST-CNN run (4 steps of batch 8, checkpoints at 2 and
4), a finished two-point sweep with its ``--archive``, and a two-member
``--population`` sweep. Full disks and read-only folders are small tmpfs
mounts (root only; without root those cases are "not run").

Each outcome is classified automatically, the first that applies:

- data lost: a file the user had (in the case's folder, or the paths it
  protects) is gone or changed;
- silently wrong: exit status 0 where a refusal was due, or the case's
  check of the result fails (old results listed as finished, a config.json
  or folder left behind by a refusal, ...); a refusal that leaves a new
  file in the case's folder (lock files and hidden files, such as TFDS's
  ``.config/``, aside);
- traceback: ``Traceback`` in the output, or a refusal whose message on
  stderr is more than 3 lines (the usage text a flag error prints after its
  error line, and progress bars, are not counted);
- hung: the command did not end within its time limit;
- unclear message: a refusal whose output lacks a word the case requires
  (the file or flag, and the way out);
- wrongly refused: a clear refusal of something that should have worked;
- behaved well: otherwise.

Library calls: an exception of a user-error type (``ValueError``,
``FileNotFoundError``, ``WorkdirError``, ...) is a refusal judged by its
message; any other exception is a traceback.

Writes a table (case, issue class, command, outcome, the first line of
stderr), the totals per outcome, and the command, commit and machine.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from stn_jax import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "experiments", "results", "hostile_cases.md")
PY = sys.executable
ARG = "configs/mnist.py:distortion=rts,model=st_cnn,small=true"
TIME_LIMIT_S = 300

OUTCOMES = (
  "behaved well",
  "silently wrong",
  "data lost",
  "traceback",
  "hung",
  "unclear message",
  "wrongly refused",
  "not run",
)

# The tiny run's settings (its config.json holds them; reruns repeat them).
TINY = dict(
  tfds_dir="{tfds}",
  source_dir="{src}",
  batch_size=8,
  eval_batch_size=8,
  num_steps=4,
  checkpoint_every=2,
  eval_every=2,
  log_every=1,
)
# The sweeps' points (model=fcn trains fastest; the population's points have
# a transformer, for viz).
SWEEPS = """

TINY_POINT = dict(
  tfds_dir={tfds!r}, source_dir={src!r}, batch_size=8, eval_batch_size=8,
  num_steps=2, checkpoint_every=2, eval_every=2, log_every=1,
)
_get_config = get_config


def get_config(arg=None):
  config = _get_config(arg)
  config.update(TINY_POINT)
  return config


def sweep_tiny(add):
  for seed in (0, 1):
    add('model=fcn,small=true', seed=seed)


def sweep_other(add):
  add('model=cnn,small=true')


def sweep_pop(add):
  for seed in (0, 1):
    add('model=st_cnn,small=true', seed=seed)
"""

# Library calls run through python -c: a user error is one line, status 1;
# anything else is left to raise (its traceback is the outcome).
LIBRARY = """
import sys
USER_ERRORS = ('ValueError', 'FileNotFoundError', 'NotADirectoryError',
  'PermissionError', 'WorkdirError', 'CheckpointError', 'CheckpointMismatch',
  'SourceError', 'TrainingDiverged', 'IsADirectoryError')
try:
  import stn_jax, numpy as np
{body}
except Exception as error:
  if type(error).__name__ not in USER_ERRORS:
    raise
  print(f'{{type(error).__name__}}: {{error}}', file=sys.stderr)
  sys.exit(1)
"""


# ---------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass
class Case:
  """One hostile case.

  ``command``: the argv, its items formatted with the case's paths
  (``{case}``, ``{run}``, ``{tfds}``, ...); ``expect``: ``refuse``,
  ``succeed`` or ``either``; ``says``: words the refusal's output must
  contain (``a|b``: either), formatted like the command; ``setup``: steps
  run first (each may add paths); ``check(p, result)``: a string saying
  what is wrong with the result, or None; ``protect``: for a command that
  may write, the paths whose files must stay (a refusal protects the whole
  case folder); ``env``: environment changes (None removes a variable).
  """

  name: str
  klass: str
  command: list[str]
  expect: str = "refuse"
  says: tuple[str, ...] = ()
  setup: tuple[Callable, ...] = ()
  check: Callable | None = None
  protect: tuple[str, ...] = ()
  env: dict = dataclasses.field(default_factory=dict)
  timeout: int = TIME_LIMIT_S


def main_command(workdir="{run}", *extra, arg=ARG, **overrides):
  values = {**TINY, **overrides}
  flags = [f"--config.{k}={v}" for k, v in values.items() if v is not None]
  return [
    PY,
    "-m",
    "stn_jax.main",
    f"--config={arg}",
    f"--workdir={workdir}",
    *flags,
    *extra,
  ]


def module(name, *args):
  return [PY, "-m", f"stn_jax.{name}", *args]


def sweep_command(*args, sweep="tiny", workdir="{sweep}"):
  return module(
    "sweep", "--config={sweep_config}", f"--sweep={sweep}",
    f"--workdir={workdir}", *args,
  )  # fmt: skip


def library(body):
  indented = "\n".join("  " + line for line in body.strip().splitlines())
  return [PY, "-c", LIBRARY.format(body=indented)]


# --- setup steps: (context, paths) -> None, adding to paths ---------------


def copy_run(p, name="run"):
  shutil.copytree(p["base"], os.path.join(p["case"], name), symlinks=True)
  p[name] = os.path.join(p["case"], name)


def copy_sweep(p):
  for name in ("sweep", "archive"):
    shutil.copytree(p[f"base_{name}"], os.path.join(p["case"], name))
    p[name] = os.path.join(p["case"], name)


def copy_population(p):
  shutil.copytree(p["base_pop"], os.path.join(p["case"], "pop"))
  p["pop"] = os.path.join(p["case"], "pop")
  p["point"] = os.path.join(p["pop"], sorted_points(p["pop"])[0])
  populations = os.path.join(p["pop"], "populations")
  p["population"] = os.path.join(populations, os.listdir(populations)[0])


def path_at(key, relative):
  """``p[key]``: a path in the case's folder, not created."""

  def step(p):
    p[key] = os.path.join(p["case"], relative)

  return step


def file_at(key, relative="f"):
  def step(p):
    p[key] = os.path.join(p["case"], relative)
    with open(p[key], "w") as f:
      f.write("a user's file\n")

  return step


def folder_at(key, relative):
  def step(p):
    p[key] = os.path.join(p["case"], relative)
    os.makedirs(p[key], exist_ok=True)

  return step


def edit_json(relative, edit):
  """``edit(dict)`` applied to the JSON file at ``p[...]``-formatted
  ``relative``."""

  def step(p):
    path = relative.format_map(p)
    with open(path) as f:
      data = json.load(f)
    edit(data)
    with open(path, "w") as f:
      json.dump(data, f)

  return step


def write_text(relative, text, append=False):
  def step(p):
    path = relative.format_map(p)
    with open(path, "a" if append else "w") as f:
      f.write(text)

  return step


def truncate(relative, keep):
  def step(p):
    path = relative.format_map(p)
    with open(path) as f:
      text = f.read()
    with open(path, "w") as f:
      f.write(text[:keep])

  return step


def remove(relative):
  def step(p):
    path = relative.format_map(p)
    (shutil.rmtree if os.path.isdir(path) else os.remove)(path)

  return step


def strip_test_lines(p):
  path = os.path.join(p["run"], "metrics.jsonl")
  with open(path) as f:
    lines = [line for line in f if "test_error" not in line]
  with open(path, "w") as f:
    f.writelines(lines)


def tmpfs(key="disk", size="16m"):
  def step(p):
    p[key] = os.path.join(p["case"], key)
    os.makedirs(p[key])
    mount = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", p[key]],
      capture_output=True,
      text=True,
    )
    if mount.returncode:
      raise NotRun(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    p.setdefault("_mounts", []).append(p[key])

  return step


def read_only(key="disk"):
  def step(p):
    subprocess.run(["mount", "-o", "remount,ro", p[key]], check=True)

  return step


def fill(key="disk"):
  """Fills the filesystem at ``p[key]`` to its last byte."""

  def step(p):
    for name, chunk in (("filler", 1 << 16), ("filler_small", 1)):
      with open(os.path.join(p[key], name), "wb", buffering=0) as f:
        try:
          while True:
            f.write(b"\0" * chunk)
        except OSError as error:
          if error.errno != errno.ENOSPC:
            raise

  return step


def copy_into(source_key, key, relative):
  def step(p):
    p[key] = os.path.join(relative.format_map(p))
    shutil.copytree(p[source_key], p[key], symlinks=True)

  return step


def damaged_gzip_mirror(p):
  """A mirror whose train-images file is a gzip with damaged deflate data."""
  folder = os.path.join(p["case"], "mirror", "mnist")
  os.makedirs(folder)
  for name in os.listdir(os.path.join(p["src"], "mnist")):
    shutil.copy(os.path.join(p["src"], "mnist", name), folder)
  path = os.path.join(folder, "train-images-idx3-ubyte.gz")
  with open(path, "rb") as f:
    data = bytearray(f.read())
  data[20:40] = b"\xff" * 20
  with open(path, "wb") as f:
    f.write(bytes(data))
  p["mirror"] = "file://" + os.path.dirname(folder)
  for name in ("empty_src", "cache", "fresh_tfds"):
    p[name] = os.path.join(p["case"], name)
    os.makedirs(p[name])


# --- checks: (paths, result) -> what is wrong, or None --------------------


def sorted_points(sweep):
  return sorted(
    n for n in os.listdir(sweep) if re.match(r"\d{3}_", n) and "." not in n
  )


def read_json(path):
  with open(path) as f:
    return json.load(f)


def statuses(sweep):
  path = os.path.join(sweep, "results.jsonl")
  with open(path) as f:
    return [json.loads(line)["status"] for line in f if line.strip()]


def none_finished(p, result):
  for where in ("sweep",):
    listed = statuses(p[where])
    if "finished" in listed or "skipped" in listed:
      return f"results.jsonl lists {listed} for a changed --set"
  with open(os.path.join(p["sweep"], "results.md")) as f:
    table = f.read()
  if "| finished" in table or "| skipped" in table:
    return "results.md lists old points as finished"
  return None


def points_have(key, value, where="sweep"):
  def check(p, result):
    for point in sorted_points(p[where]):
      config = read_json(os.path.join(p[where], point, "config.json"))
      if config.get(key) != value:
        return f"{point}/config.json has {key}={config.get(key)}, not {value}"
    return None

  return check


def every_point_reached(step):
  def check(p, result):
    if result.returncode:
      return None
    for point in sorted_points(p["sweep"]):
      with open(os.path.join(p["sweep"], point, "metrics.jsonl")) as f:
        last = max(json.loads(line)["step"] for line in f if line.strip())
      if last < step:
        return f"{point} reported finished at step {last} < {step}"
    return None

  return check


def not_created(*relatives):
  def check(p, result):
    for relative in relatives:
      if os.path.exists(relative.format_map(p)):
        return f"left {relative.format_map(p)} behind"
    return None

  return check


def exists(*relatives):
  def check(p, result):
    if result.returncode:
      return None
    for relative in relatives:
      path = relative.format_map(p)
      if not os.path.exists(path):
        return f"{path} was not written"
    return None

  return check


def json_field(relative, key, value):
  def check(p, result):
    if result.returncode:
      return None
    data = read_json(relative.format_map(p))
    if data.get(key) != value:
      return f"{relative}: {key} is {data.get(key)!r}, not {value!r}"
    return None

  return check


def metrics_whole(p, result):
  """Every line of metrics.jsonl is JSON and step 5's record is there."""
  with open(os.path.join(p["run"], "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  try:
    records = [json.loads(line) for line in lines]
  except json.JSONDecodeError as error:
    return f"metrics.jsonl has a damaged line ({error})"
  if 5 not in [r.get("step") for r in records]:
    return "metrics.jsonl lost the record of step 5"
  return None


def same_test_error_as_base(p, result):
  if result.returncode:
    return None
  got = read_json(os.path.join(p["run"], "results.json"))["test_error"]
  want = read_json(os.path.join(p["base"], "results.json"))["test_error"]
  return None if got == want else f"test_error {got} != {want} (batch 8)"


def output_has(*words):
  def check(p, result):
    text = result.stdout + result.stderr
    missing = [w for w in words if w.format_map(p) not in text]
    return f"output lacks {missing}" if missing else None

  return check


def all_of(*checks):
  def check(p, result):
    for one in checks:
      if one is not None and (problem := one(p, result)):
        return problem
    return None

  return check


POINTS = ("000_model=fcn,small=true,seed=0", "001_model=fcn,small=true,seed=1")
RUN = (copy_run,)
SWEEP = (copy_sweep,)
POP = (copy_population,)


def cases() -> list[Case]:
  """Every case, by the issue's class ("other": the same classes on the
  commands the issue did not try)."""
  c = []

  def add(*args, **kwargs):
    c.append(Case(*args, **kwargs))

  rerun = library("stn_jax.restore(sys.argv[1])") + ["{run}"]
  fresh = "{case}/run"
  points = ("{sweep}/{p0}", "{sweep}/{p1}")
  # fmt: off
  # 1. A sweep rerun with a changed --set, or through --archive.
  add("sweep_rerun_with_changed_set", "1", sweep_command("--set=learning_rate=0.1"),
      says=("learning_rate", "another config"), setup=SWEEP, check=none_finished,
      protect=(*points, "{archive}"))
  add("sweep_collect_with_changed_set", "1", sweep_command("--set=learning_rate=0.1", "--collect"),
      expect="either", says=("learning_rate", "another config"), setup=SWEEP,
      check=none_finished, protect=(*points, "{archive}"))
  add("sweep_changed_set_via_archive_into_new_workdir", "1",
      sweep_command("--set=learning_rate=0.1", "--archive={archive}", workdir="{new}"),
      expect="succeed", setup=(*SWEEP, path_at("new", "new")),
      check=points_have("learning_rate", 0.1, where="new"), protect=("{sweep}",))
  add("sweep_collect_with_changed_set_via_archive", "1",
      sweep_command("--set=learning_rate=0.1", "--archive={archive}", "--collect", workdir="{case}/new"),
      expect="either", says=("{case}/new",), setup=SWEEP,
      check=not_created("{case}/new/{p0}/record.json"), protect=("{archive}",))
  add("sweep_rerun_unchanged_skips", "1", sweep_command(), expect="succeed", setup=SWEEP,
      check=output_has("2 skipped"), protect=(*points, "{archive}"))
  add("sweep_unchanged_via_archive_restores", "1",
      sweep_command("--archive={archive}", workdir="{new}"), expect="succeed",
      setup=(*SWEEP, path_at("new", "new")),
      check=all_of(output_has("2 skipped"), points_have("learning_rate", 0.001, "new")),
      protect=("{archive}",))
  add("sweep_rerun_with_more_steps", "1", sweep_command("--set=num_steps=3"), expect="either",
      says=("num_steps",), setup=SWEEP, check=every_point_reached(3), protect=("{archive}",))

  # 2. Checkpoints without a config.json.
  no_config = (*RUN, remove("{run}/config.json"))
  add("main_checkpoints_without_config_json_another_config", "2", main_command("{run}", "--config.seed=3"),
      says=("config.json", "--overwrite"), setup=no_config)
  add("main_checkpoints_without_config_json_the_same_config", "2", main_command("{run}"),
      expect="either", says=("config.json", "--overwrite"), setup=no_config,
      protect=("{run}/checkpoints",))
  add("main_checkpoints_without_config_json_overwrite", "2",
      main_command("{run}", "--config.seed=3", "--overwrite"), expect="succeed", setup=no_config,
      check=json_field("{run}/config.json", "seed", 3))
  for name, command in (
    ("viz", module("viz", "--workdir={run}", "--figures=transformer")),
    ("evaluate", module("evaluate", "calibration", "--workdir={run}")),
    ("export", module("export", "--workdir={run}", "--format=stablehlo", "--out={case}/m")),
    ("restore", rerun),
  ):
    add(f"{name}_checkpoints_without_config_json", "2", command, says=("config.json",), setup=no_config)

  # 3. Checkpoints that read fine but do not fit the model (the code's
  # default changed: config.json and the command say 64, the checkpoints 32).
  wider = (*RUN, edit_json("{run}/config.json", lambda c: c["model_kwargs"].update(localisation_hidden=64)))
  for name, command in (
    ("main", main_command("{run}", "--config.model_kwargs.localisation_hidden=64")),
    ("viz", module("viz", "--workdir={run}", "--figures=transformer")),
    ("evaluate", module("evaluate", "calibration", "--workdir={run}")),
    ("export", module("export", "--workdir={run}", "--format=stablehlo", "--out={case}/m")),
    ("restore", rerun),
  ):
    add(f"{name}_checkpoints_of_other_shapes", "3", command, says=("checkpoint", "32", "64"),
        setup=wider, check=not_created("{run}/checkpoints_unreadable"))

  # 4. --collect with the wrong --sweep or a misspelled folder.
  add("sweep_collect_with_the_wrong_sweep", "4", sweep_command("--collect", sweep="other"),
      says=("other", "{sweep}"), setup=SWEEP)
  add("sweep_collect_in_a_misspelled_folder", "4", sweep_command("--collect", workdir="{case}/swep"),
      says=("{case}/swep", "not a folder"), setup=SWEEP, check=not_created("{case}/swep"))
  add("sweep_collect_with_an_unknown_sweep", "4", sweep_command("--collect", sweep="tinny"),
      says=("tinny", "tiny"), setup=SWEEP)
  add("sweep_collect_in_a_training_run", "4", sweep_command("--collect", workdir="{run}"),
      says=("{run}",), setup=(*SWEEP, copy_run), check=not_created("{run}/results.md"))
  add("sweep_collect_right", "4", sweep_command("--collect"), expect="succeed", setup=SWEEP,
      check=output_has("2 points, 0 failed"), protect=points)

  # 5. A partial last line of metrics.jsonl.
  add("main_resume_after_a_partial_metrics_line", "5", main_command("{run}", num_steps=6),
      expect="succeed", setup=(*RUN, write_text("{run}/metrics.jsonl", '{"step": 5, "tr', True)),
      check=metrics_whole, protect=("{run}/checkpoints/4",))
  add("viz_with_a_damaged_metrics_line", "5", module("viz", "--workdir={run}", "--figures=error"),
      says=("metrics.jsonl", "line"),
      setup=(*RUN, write_text("{run}/metrics.jsonl", '{"step"\n{"step": 9}\n', True)))
  add("viz_with_a_partial_last_metrics_line", "5", module("viz", "--workdir={run}", "--figures=error"),
      expect="succeed", setup=(*RUN, write_text("{run}/metrics.jsonl", '{"step": 5, "te', True)),
      check=exists("{run}/figures/error_vs_steps_run.png"))
  add("viz_with_binary_metrics", "5", module("viz", "--workdir={run}", "--figures=error"),
      says=("metrics.jsonl",), setup=(*RUN, write_text("{run}/metrics.jsonl", "\x00\x01garbage\n")))

  # 6. Filesystem errors: a file in the way, a read-only place, a typo.
  for tool in ("main", "sweep"):
    command = main_command if tool == "main" else (lambda w: sweep_command(workdir=w))
    add(f"{tool}_workdir_is_a_file", "6", command("{f}"), says=("{f}",), setup=(*SWEEP, file_at("f")))
    add(f"{tool}_workdir_under_a_file", "6", command("{f}/run"), says=("{f}", "file"),
        setup=(*SWEEP, file_at("f")))
    add(f"{tool}_workdir_read_only", "6", command("{disk}/run"), says=("{disk}", "read-only"),
        setup=(*SWEEP, tmpfs(), read_only()))
  add("main_resume_in_a_read_only_workdir", "6", main_command("{ro_run}", num_steps=6),
      says=("{ro_run}", "read-only"),
      setup=(tmpfs(size="64m"), copy_into("base", "ro_run", "{disk}/run"), read_only()))
  add("sweep_archive_is_a_file", "6", sweep_command("--archive={f}", workdir="{case}/new"),
      says=("--archive", "{f}"), setup=(*SWEEP, file_at("f")), check=not_created("{case}/new"))
  add("sweep_archive_read_only_nothing_to_add", "6", sweep_command("--archive={disk}/archive"),
      expect="either", says=("{disk}", "read-only"),
      setup=(*SWEEP, tmpfs(), copy_into("archive", "ro", "{disk}/archive"), read_only()))
  add("main_tfds_data_dir_is_a_file", "6", main_command(fresh, tfds_dir=None), says=("{f}",),
      setup=(file_at("f"),), env={"TFDS_DATA_DIR": "{f}"})
  add("data_build_stn_data_dir_is_a_file", "6",
      module("data", "build", "distorted_mnist/rts", "--tfds_dir={case}/tfds"), says=("{f}",),
      setup=(file_at("f"),), env={"STN_DATA_DIR": "{f}"})
  add("data_build_tfds_dir_is_a_file", "6",
      module("data", "build", "gtsrb/32", "--tfds_dir={f}", "--source_dir={src}"), says=("{f}",),
      setup=(file_at("f"),))
  add("data_build_source_dir_is_a_file", "6",
      module("data", "build", "gtsrb/32", "--tfds_dir={case}/t", "--source_dir={f}"), says=("{f}",),
      setup=(file_at("f"),))
  add("data_build_into_a_read_only_tfds_dir", "6",
      module("data", "build", "gtsrb/32", "--tfds_dir={disk}/tfds", "--source_dir={src}"),
      says=("{disk}", "read-only"), setup=(tmpfs(), read_only()))
  ro_tfds = (tmpfs(size="64m"), copy_into("tfds", "ro_tfds", "{disk}/tfds"), read_only())
  add("main_trains_from_a_read_only_tfds_dir", "6", main_command(fresh, tfds_dir="{ro_tfds}"),
      expect="succeed", setup=ro_tfds, check=exists("{case}/run/results.json"))
  add("data_build_in_a_read_only_tfds_dir_already_built", "6",
      module("data", "build", "distorted_mnist/rts", "--tfds_dir={ro_tfds}", "--source_dir={src}"),
      expect="succeed", setup=ro_tfds)
  for tool, command in (
    ("main", main_command(fresh, arg="configs/mnst.py:small=true")),
    ("sweep", module("sweep", "--config=configs/mnst.py", "--sweep=tc", "--workdir={case}/s")),
    ("data_build", module("data", "build", "--config=configs/mnst.py:small=true")),
  ):
    add(f"{tool}_mistyped_config_path", "6", command, says=("configs/mnst.py",))
  add("main_config_is_a_folder", "6", main_command(fresh, arg="configs"), says=("configs",))
  add("data_build_damaged_gzip_from_a_mirror", "6",
      module("data", "build", "distorted_mnist/rts", "--tfds_dir={fresh_tfds}", "--source_dir={empty_src}"),
      says=("train-images-idx3-ubyte", "gzip"), setup=(damaged_gzip_mirror,),
      env={"STN_DATA_MIRROR": "{mirror}", "STN_DATA_DIR": "{cache}", "STN_DATA_OFFLINE": None},
      check=lambda p, r: "left a file in the cache" if snapshot([p["cache"]]) else None)
  read_only_run = (*RUN, tmpfs(size="64m"), copy_into("base", "ro_run", "{disk}/run"), read_only())
  for name, command, says in (
    ("viz_into_a_read_only_workdir", ["viz", "--workdir={ro_run}", "--figures=error"], ("{ro_run}", "read-only")),
    ("viz_out_read_only", ["viz", "--workdir={run}", "--figures=error", "--out={disk}/figs"], ("{disk}", "read-only")),
    ("evaluate_into_a_read_only_workdir", ["evaluate", "calibration", "--workdir={ro_run}"], ("{ro_run}", "read-only")),
    ("export_out_read_only", ["export", "--workdir={run}", "--format=stablehlo", "--out={disk}/m.hlo"], ("{disk}", "read-only")),
    ("data_preview_out_read_only", ["data", "preview", "distorted_mnist/rts", "--tfds_dir={tfds}", "--out={disk}/p.png"], ("{disk}", "read-only")),
  ):
    add(name, "6", module(*command), says=says, setup=read_only_run)
  for name, command, says in (
    ("viz_workdir_is_a_file", ["viz", "--workdir={f}"], ("{f}",)),
    ("viz_out_is_a_file", ["viz", "--workdir={run}", "--figures=error", "--out={f}"], ("{f}",)),
    ("evaluate_workdir_is_a_file", ["evaluate", "calibration", "--workdir={f}"], ("{f}",)),
    ("evaluate_out_is_a_file", ["evaluate", "calibration", "--workdir={run}", "--out={f}"], ("{f}",)),
    ("export_workdir_is_a_file", ["export", "--workdir={f}", "--format=stablehlo", "--out={case}/m"], ("{f}",)),
    ("export_out_is_a_folder", ["export", "--workdir={run}", "--format=stablehlo", "--out={run}"], ("{run}", "folder")),
    ("export_out_under_a_file", ["export", "--workdir={run}", "--format=stablehlo", "--out={f}/m.hlo"], ("{f}",)),
    ("data_preview_out_is_a_folder", ["data", "preview", "distorted_mnist/rts", "--tfds_dir={tfds}", "--out={run}"], ("{run}", "folder")),
    ("model_zoo_package_out_is_a_file", ["model_zoo", "package", "--workdir={run}", "--name=tiny", "--command=x", "--out={f}"], ("{f}",)),
  ):
    add(name, "6", module(*command), says=says, setup=(*RUN, file_at("f")))

  # 7. A full disk (a tmpfs filled to its last byte).
  full = (*SWEEP, *RUN, tmpfs(size="48m"), copy_into("base", "disk_run", "{disk}/run0"), fill())
  for name, command in (
    ("main_fresh_run", main_command("{disk}/run")),
    ("main_resume", main_command("{disk_run}", num_steps=8)),
    ("sweep", sweep_command(workdir="{disk}/sweep")),
    ("viz_out", module("viz", "--workdir={run}", "--out={disk}/figs", "--figures=error")),
    ("evaluate_out", module("evaluate", "calibration", "--workdir={run}", "--out={disk}/e")),
    ("export_out", module("export", "--workdir={run}", "--format=onnx", "--out={disk}/m.onnx")),
    ("data_build", module("data", "build", "gtsrb/32", "--tfds_dir={disk}/t", "--source_dir={src}")),
  ):
    add(f"{name}_on_a_full_disk", "7", command, says=("{disk}", "free space"), setup=full)

  # 8. Absurd values: refused before data loads and before config.json.
  for key, value in (
    ("batch_size", 0), ("batch_size", 10**9), ("eval_batch_size", 0), ("seed", -1),
    ("seed", 2**40), ("num_steps", -1), ("learning_rate", "nan"), ("checkpoint_every", 0),
    ("max_checkpoints", 0), ("label_smoothing", 2),
  ):
    add(f"main_{key}_{value}".replace("-", "minus"), "8", main_command(fresh, **{key: value}),
        says=(key,), check=not_created("{case}/run/config.json"))
  add("main_eval_batch_size_huge", "8", main_command(fresh, eval_batch_size=10**8),
      expect="succeed", setup=(path_at("run", "run"),), check=same_test_error_as_base)
  add("evaluate_max_examples_negative", "8",
      module("evaluate", "calibration", "--workdir={run}", "--max_examples=-5"),
      says=("--max_examples",), setup=RUN)
  add("evaluate_max_examples_huge", "8",
      module("evaluate", "calibration", "--workdir={run}", "--max_examples=10000000000"),
      expect="succeed", setup=RUN, check=exists("{run}/evaluation/calibration.md"))
  for name, args, says in (
    ("evaluate_unknown_family", ["--families=rotaton"], ("rotaton", "rotation")),
    ("evaluate_no_families", ["--families="], ("--families",)),
  ):
    add(name, "8", module("evaluate", "invariance", "--workdir={run}", "--max_examples=8",
                          "--source_dir={src}", *args), says=says, setup=RUN)
  for name, args, says in (
    ("export_opset_too_low", ["--format=onnx", "--opset=5"], ("opset", "16")),
    ("export_opset_huge", ["--format=onnx", "--opset=100000"], ("opset",)),
    ("export_unknown_format", ["--format=pdf"], ("format", "onnx")),
  ):
    add(name, "8", module("export", "--workdir={run}", "--out={case}/m", *args), says=says,
        setup=RUN, check=not_created("{case}/m"))
  for name, args, says in (
    ("data_preview_count_zero", ["--count=0"], ("--count",)),
    ("data_preview_split_unknown", ["--split=tset"], ("tset",)),
  ):
    add(name, "8", module("data", "preview", "distorted_mnist/rts", "--tfds_dir={tfds}",
                          "--out={case}/p.png", *args), says=says)
  for name, args, says in (
    ("sweep_shard_out_of_range", ["--shard=2/2"], ("--shard",)),
    ("sweep_shard_not_a_fraction", ["--shard=1"], ("--shard",)),
    ("sweep_max_concurrent_negative", ["--max_concurrent=-1"], ("max_concurrent",)),
  ):
    add(name, "8", sweep_command(*args), says=says, setup=SWEEP)
  add("viz_unknown_figure", "8", module("viz", "--workdir={run}", "--figures=trasnformer"),
      says=("trasnformer", "transformer"), setup=RUN)
  # Multi-process runs, refused before anything connects or is written.
  for name, args, says in (
    ("process_id_out_of_range", ["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"], ("process_id",)),
    ("num_processes_without_coordinator", ["--num_processes=2", "--process_id=0"], ("coordinator",)),
    ("coordinator_without_a_port", ["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], ("coordinator", "PORT")),
  ):
    add(f"main_{name}", "8", main_command(fresh, *args), says=says, timeout=120)

  # 9. Damaged JSON files.
  damaged_config = (*RUN, truncate("{run}/config.json", 40))
  add("main_config_json_truncated", "9", main_command("{run}"), says=("config.json", "--overwrite"),
      setup=damaged_config)
  add("main_config_json_empty", "9", main_command("{run}"), says=("config.json", "--overwrite"),
      setup=(*RUN, write_text("{run}/config.json", "")))
  add("main_config_json_damaged_overwrite", "9", main_command("{run}", "--overwrite"),
      expect="succeed", setup=damaged_config, check=json_field("{run}/config.json", "model", "st_cnn"))
  for name, command in (
    ("viz", module("viz", "--workdir={run}", "--figures=transformer")),
    ("evaluate", module("evaluate", "calibration", "--workdir={run}")),
    ("export", module("export", "--workdir={run}", "--format=stablehlo", "--out={case}/m")),
    ("restore", rerun),
    ("model_zoo_package", module("model_zoo", "package", "--workdir={run}", "--name=tiny", "--command=x", "--out={case}/z")),
  ):
    add(f"{name}_config_json_truncated", "9", command, says=("config.json",), setup=damaged_config)
  add("restore_in_shape_json_damaged", "9", rerun, says=("in_shape.json",),
      setup=(*RUN, write_text("{run}/in_shape.json", "[42, 4")))
  add("main_rerun_with_results_json_damaged", "9", main_command("{run}"), expect="either",
      says=("results.json",), setup=(*RUN, write_text("{run}/results.json", '{"step": 4, "te')),
      protect=("{run}/checkpoints",))
  add("main_resume_with_a_checkpoint_manifest_damaged", "9", main_command("{run}", num_steps=6),
      expect="succeed", setup=(*RUN, write_text("{run}/checkpoints/4/stn_jax_sha256.json", "{")),
      check=json_field("{run}/results.json", "step", 6), protect=("{run}/checkpoints/2",))
  add("sweep_rerun_with_a_truncated_record", "9", sweep_command(), expect="succeed",
      setup=(*SWEEP, truncate("{sweep}/{p1}/record.json", 30)),
      check=json_field("{sweep}/{p1}/record.json", "status", "finished"),
      protect=("{sweep}/{p0}/record.json",))
  add("sweep_collect_with_a_truncated_record", "9", sweep_command("--collect"),
      says=("{sweep}/{p1}/record.json",),
      setup=(*SWEEP, truncate("{sweep}/{p1}/record.json", 30)), protect=points)
  add("sweep_rerun_with_results_jsonl_damaged", "9", sweep_command(), expect="succeed",
      setup=(*SWEEP, write_text("{sweep}/results.jsonl", '{"name": "0')),
      check=output_has("2 skipped"), protect=points)
  add("sweep_archive_with_a_truncated_record", "9",
      sweep_command("--archive={archive}", workdir="{case}/new"), expect="either",
      says=("{archive}/{p1}/manifest.json",),
      setup=(*SWEEP, truncate("{archive}/{p1}/manifest.json", 30)),
      protect=("{archive}/{p0}",))
  add("sweep_point_config_json_damaged", "9", sweep_command(), expect="either",
      says=("{sweep}/{p0}", "config.json"),
      setup=(*SWEEP, truncate("{sweep}/{p0}/config.json", 30)), protect=("{sweep}/{p1}",))

  # 10. Sweep --set refusals printed (the failed points are recorded, by
  # design; nothing trains).
  for name, value, says in (
    ("unknown_field", "nosuch=1", ("nosuch", "no such config field")),
    ("bad_type", "learning_rate=abc", ("learning_rate", "abc")),
    ("no_equals", "num_steps", ("num_steps", "=")),
    ("seed_negative", "seed=-1", ("seed",)),
    ("batch_size_zero", "batch_size=0", ("batch_size",)),
  ):
    add(f"sweep_set_{name}", "10", sweep_command(f"--set={value}", workdir="{case}/s"),
        says=says, setup=SWEEP, check=not_created("{case}/s/{p0}/config.json"),
        protect=("{sweep}",))

  # 11. Population members.
  add("restore_a_population_point", "11",
      library("print('step', stn_jax.restore(sys.argv[1]).step)") + ["{point}"],
      expect="succeed", setup=POP, check=output_has("step 2"))
  add("predict_with_a_population_point", "11",
      library("r = stn_jax.restore(sys.argv[1])\n"
              "print('shape', r.predict(np.zeros((3, 42, 42, 1), np.uint8)).shape)") + ["{point}"],
      expect="succeed", setup=POP, check=output_has("shape (3, 10)"))
  # A sweep's population folder holds no member's files: a clear refusal
  # that names the way out (the point's folder) is as good as a restore.
  for member, expect, says in (("1", "either", ("point's folder",)),
                               ("5", "refuse", ("member", "2")), ("None", "refuse", ("member",))):
    add(f"restore_a_population_folder_member_{member}", "11",
        library(f"print('step', stn_jax.restore(sys.argv[1], member={member}).step)") + ["{population}"],
        expect=expect, says=says, setup=POP,
        check=(lambda p, r: None if r.returncode else output_has("step 2")(p, r))
        if expect == "either" else None)
  add("restore_a_single_run_with_a_member", "11",
      library("stn_jax.restore(sys.argv[1], member=0)") + ["{run}"], says=("member",), setup=RUN)
  add("viz_a_population_point", "11",
      module("viz", "--workdir={point}", "--figures=transformer", "--out={case}/figs"),
      expect="succeed", setup=POP, check=exists("{case}/figs"))
  add("evaluate_a_population_point", "11",
      module("evaluate", "calibration", "--workdir={point}", "--out={case}/e"),
      expect="succeed", setup=POP, check=exists("{case}/e/calibration.md"))
  add("export_a_population_point", "11",
      module("export", "--workdir={point}", "--format=stablehlo", "--out={case}/m"),
      expect="succeed", setup=POP, check=exists("{case}/m"))

  # 12. The smaller ones.
  add("main_diverges_at_once", "12", main_command(fresh, learning_rate=1e30, checkpoint_every=1000),
      says=("step", "checkpoint"), protect=("{case}/run/checkpoints",))  # it trained
  for tool, command in (
    ("main", main_command(fresh, arg="configs/mnist.py:distortion=rts,distortion=r")),
    ("sweep", module("sweep", "--config=configs/mnist.py:distortion=rts,distortion=r", "--sweep=tc", "--workdir={case}/s", "--dry_run")),
    ("data_build", module("data", "build", "--config=configs/mnist.py:distortion=rts,distortion=r")),
  ):
    add(f"{tool}_repeated_config_argument", "12", command, says=("distortion", "twice"))
  add("main_repeated_workdir_flag", "12", main_command("{case}/a", "--workdir={case}/b"),
      expect="either", says=("--workdir",),
      check=lambda p, r: "trained into both" if all(
        os.path.exists(os.path.join(p["case"], n, "config.json")) for n in "ab") else None)
  for tool, command in (
    ("main", main_command("")),
    ("main_blank", main_command(" ")),
    ("sweep", sweep_command(workdir="")),
    ("viz", module("viz", "--workdir=")),
    ("evaluate", module("evaluate", "calibration", "--workdir=")),
    ("export", module("export", "--workdir=", "--format=stablehlo", "--out={case}/m")),
    ("model_zoo_package", module("model_zoo", "package", "--workdir=", "--name=x", "--command=x", "--out={case}/z")),
  ):
    add(f"{tool}_empty_workdir_flag", "12", command, says=("--workdir",),
        setup=SWEEP if tool == "sweep" else (), check=not_created(os.path.join(REPO, ".lock")))
  for name, env, args in (("env", {"STN_DATA_MIRROR": "garbage"}, []),
                          ("flag", {}, ["--data_mirror=garbage"])):
    add(f"data_build_garbage_mirror_{name}", "12",
        module("data", "build", "distorted_mnist/rts", "--tfds_dir={case}/t", "--source_dir={empty}", *args),
        says=("garbage", "https://"), setup=(folder_at("empty", "empty"),),
        env={**env, "STN_DATA_OFFLINE": None, "STN_DATA_DIR": "{case}/cache"})
  add("viz_an_unfinished_run", "12", module("viz", "--workdir={run}"),
      says=("metrics.jsonl", "test_error"), setup=(*RUN, strip_test_lines),
      check=not_created("{run}/figures"))
  add("rotation_matrix_jitted_with_a_number_scale", "12",
      library("import jax\n"
              "center, angle = np.array([10.0, 12.0], np.float32), np.float32(30.0)\n"
              "jitted = jax.jit(stn_jax.rotation_matrix)(center, angle, 0.5)\n"
              "eager = stn_jax.rotation_matrix(center, angle, 0.5)\n"
              "print('equal', bool(np.allclose(jitted, eager, rtol=1e-6)))"),
      expect="succeed", check=output_has("equal True"))
  # A run in progress: a background run saving every step, one kept.
  busy = (busy_run,)
  add("restore_while_a_run_saves_with_one_checkpoint_kept", "12",
      library("print('restored', [stn_jax.restore(sys.argv[1]).step for _ in range(6)])") + ["{busy}"],
      expect="succeed", setup=busy, check=output_has("restored ["))
  add("main_second_process_in_a_busy_workdir", "12",
      main_command("{busy}", checkpoint_every=1, max_checkpoints=1, num_steps=100000, eval_every=1000),
      says=("in use", "pid"), setup=busy)
  add("viz_a_run_in_progress", "12",
      module("viz", "--workdir={busy}", "--figures=transformer", "--out={case}/figs"),
      expect="either", says=("{busy}",), setup=busy)
  add("sigterm_saves_a_checkpoint_and_exits_143", "12",
      library("import os, signal\n"
              "os.kill(int(open(sys.argv[1]).read()), signal.SIGTERM)\n"
              "print('sent SIGTERM')") + ["{busy_pid}"],
      expect="succeed", setup=busy, check=busy_run_stopped)

  # Other commands and flags, the same classes.
  for name, command, says in (
    ("main_without_workdir", [PY, "-m", "stn_jax.main", f"--config={ARG}"], ("workdir",)),
    ("main_extra_positional_argument", main_command(fresh, "extra"), ("extra",)),
    ("main_unknown_config_argument", main_command(fresh, arg="configs/mnist.py:modle=cnn"), ("modle",)),
    ("main_unknown_model", main_command(fresh, arg="configs/mnist.py:model=st_cmn"), ("st_cmn", "st_cnn")),
    ("main_unknown_config_field", main_command(fresh, "--config.learnig_rate=0.1"), ("learnig_rate",)),
    ("viz_workdir_missing", module("viz", "--workdir={case}/nothere"), ("{case}/nothere",)),
    ("viz_baseline_missing", module("viz", "--workdir={run}", "--figures=error", "--baseline={case}/nothere"), ("{case}/nothere",)),
    ("viz_a_sweep_folder", module("viz", "--workdir={sweep}"), ("{sweep}",)),
    ("viz_a_run_without_a_transformer", module("viz", "--workdir={sweep}/{p0}", "--figures=transformer"), ("transformer",)),
    ("evaluate_unknown_command", module("evaluate", "calibraton", "--workdir={run}"), ("calibraton", "calibration")),
    ("evaluate_workdir_missing", module("evaluate", "calibration", "--workdir={case}/nothere"), ("{case}/nothere",)),
    ("evaluate_a_sweep_folder", module("evaluate", "calibration", "--workdir={sweep}"), ("{sweep}",)),
    ("export_workdir_missing", module("export", "--workdir={case}/nothere", "--format=onnx", "--out={case}/m"), ("{case}/nothere",)),
    ("export_unknown_pretrained", module("export", "--pretrained=rts_st_cnn_smal", "--format=onnx", "--out={case}/m"), ("rts_st_cnn_smal",)),
    ("export_workdir_and_pretrained", module("export", "--workdir={run}", "--pretrained=x", "--format=onnx", "--out={case}/m"), ("--workdir", "--pretrained")),
    ("export_without_out", module("export", "--workdir={run}", "--format=onnx"), ("out",)),
    ("data_unknown_dataset", module("data", "build", "distorted_mnist/rst", "--tfds_dir={case}/t"), ("distorted_mnist/rst",)),
    ("data_gtsrb_size_out_of_range", module("data", "build", "gtsrb/7", "--tfds_dir={case}/t"), ("7", "8", "256")),
    ("data_no_command", module("data"), ("build", "preview")),
    ("data_preview_without_out", module("data", "preview", "distorted_mnist/rts", "--tfds_dir={tfds}"), ("--out",)),
    ("model_zoo_verify_unknown", module("model_zoo", "verify", "rts_st_cnn_smal"), ("rts_st_cnn_smal",)),
    ("model_zoo_unknown_command", module("model_zoo", "packge"), ("packge",)),
    ("model_zoo_package_without_name", module("model_zoo", "package", "--workdir={run}", "--command=x", "--out={case}/z"), ("--name",)),
    ("model_zoo_package_name_with_a_path", module("model_zoo", "package", "--workdir={run}", "--name=../escaped", "--command=x", "--out={case}/z"), ("name",)),
    ("sweep_unknown_sweep", sweep_command("--dry_run", sweep="tinny"), ("tinny", "tiny")),
    ("sweep_ray_address_with_the_local_launcher", sweep_command("--ray_address=auto"), ("ray",)),
  ):
    used = " ".join(command)
    setup = (SWEEP if "{sweep}" in used else ()) + (RUN if "{run}" in used else ())
    add(name, "other", command, says=says, setup=setup)
  add("main_overwrite_keeps_a_users_other_files", "other",
      main_command("{run}", "--overwrite", "--config.seed=5"), expect="succeed",
      setup=(*RUN, write_text("{run}/notes.txt", "my notes\n")), protect=("{run}/notes.txt",))
  add("main_overwrite_into_a_sweep_folder", "other", main_command("{sweep}", "--overwrite"),
      expect="either", says=("{sweep}",), setup=SWEEP, protect=("{sweep}",))
  add("main_into_a_sweep_point_of_another_config", "other", main_command("{sweep}/{p0}"),
      says=("{sweep}/{p0}", "--overwrite"), setup=SWEEP)
  # fmt: on
  return c


# ---------------------------------------------------------------------------
# The background run (cases in category "a run in progress").

_BUSY: dict = {}


def busy_run(p):
  """Starts (once) a run saving every step with one checkpoint kept."""
  if not _BUSY:
    folder = os.path.join(p["root"], "busy")
    os.makedirs(folder)
    workdir = os.path.join(folder, "run")
    command = [
      a.format_map(p)
      for a in main_command(
        workdir,
        checkpoint_every=1,
        max_checkpoints=1,
        num_steps=100000,
        eval_every=1000,
      )
    ]
    with open(os.path.join(folder, "log"), "w") as log:
      process = subprocess.Popen(
        command, cwd=REPO, env=p["env"], stdout=log, stderr=subprocess.STDOUT
      )
    pid_file = os.path.join(folder, "pid")
    with open(pid_file, "w") as f:
      f.write(str(process.pid))
    _BUSY.update(process=process, workdir=workdir, pid_file=pid_file)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
      checkpoints = os.path.join(workdir, "checkpoints")
      if os.path.isdir(checkpoints) and any(
        n.isdigit() for n in os.listdir(checkpoints)
      ):
        break
      time.sleep(1)
    else:
      raise NotRun("the background run saved no checkpoint")
  if _BUSY["process"].poll() is not None:
    raise NotRun("the background run has stopped")
  p["busy"], p["busy_pid"] = _BUSY["workdir"], _BUSY["pid_file"]


def busy_run_stopped(p, result):
  process = _BUSY["process"]
  try:
    status = process.wait(timeout=120)
  except subprocess.TimeoutExpired:
    process.kill()
    return "the run did not stop within 120 s of SIGTERM"
  if status != 128 + signal.SIGTERM:
    return f"the run exited with {status}, not 143"
  from stn_jax import checkpointing

  if not checkpointing.saved_steps(_BUSY["workdir"]):
    return "no checkpoint after SIGTERM"
  return None


def stop_busy_run():
  if _BUSY and _BUSY["process"].poll() is None:
    _BUSY["process"].kill()
    _BUSY["process"].wait()


# ---------------------------------------------------------------------------
# Running and classifying.


class NotRun(Exception):
  """A case that cannot run here (no root for a tmpfs, ...)."""


def snapshot(paths) -> dict[str, str]:
  """sha256 of every file under ``paths`` (lock files left out; a JSON
  file's of its content, not its layout)."""
  files = {}
  for top in paths:
    if os.path.isfile(top):
      walk = [(os.path.dirname(top), [], [os.path.basename(top)])]
    else:
      walk = os.walk(top)
    for folder, _, names in walk:
      for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".lock") or os.path.islink(path):
          continue  # locks: a refusal may take one
        if not os.path.isfile(path):
          continue
        if name.startswith("filler"):
          continue
        with open(path, "rb") as f:
          data = f.read()
        if name.endswith(".json"):  # rewritten in another layout: the same
          with contextlib.suppress(ValueError):
            data = json.dumps(json.loads(data), sort_keys=True).encode()
        files[path] = hashlib.sha256(data).hexdigest()
  return files


NOISE = re.compile(
  r"(\r|%\||it/s\]|examples/s\]|^\s*$|^WARNING: All log messages before absl"
  r"|Platform '\w+' is experimental)"
)


def message_lines(stderr: str) -> list[str]:
  """The lines of a refusal's message: progress bars left out, and the
  usage text that a flag error prints after its error line."""
  lines = []
  for line in stderr.splitlines():
    if lines and not line.strip() and "error:" in lines[-1]:
      break  # cli.run: "prog: error: ...", a blank line, then the usage
    if not NOISE.search(line):
      lines.append(line)
  if lines and lines[-1] == "Pass --helpshort for the flags.":
    lines.pop()
  return lines


@dataclasses.dataclass
class Outcome:
  case: Case
  outcome: str
  note: str
  command: str
  first_line: str
  seconds: float


def classify(case, p, result, timed_out, lost, problem):
  text = result.stdout + result.stderr
  lines = message_lines(result.stderr)
  if lost:
    return "data lost", f"{len(lost)} file(s) gone or changed: {lost[0]}"
  if case.expect == "refuse" and result.returncode == 0 and not timed_out:
    return "silently wrong", problem or "exit status 0: accepted"
  if problem:
    return "silently wrong", problem
  if "Traceback (most recent call last)" in text:
    return "traceback", ""
  if timed_out:
    return "hung", f"no end within {case.timeout} s"
  if result.returncode == 0:
    return "behaved well", ""
  if len(lines) > 3:
    return "traceback", f"{len(lines)} lines on stderr"
  missing = [
    word
    for word in (w.format_map(p) for w in case.says)
    if not any(alt.lower() in text.lower() for alt in word.split("|"))
  ]
  if missing:
    return "unclear message", f"does not say {missing}"
  if case.expect == "succeed":
    return "wrongly refused", ""
  return "behaved well", ""


def short(text: str, p) -> str:
  for key in ("root",):
    text = text.replace(p[key], "$S")
  return text.replace(PY, "python").replace(REPO + "/", "")


def run_case(case: Case, root: str, shared: dict) -> Outcome:
  folder = os.path.join(root, "cases", case.name)
  os.makedirs(folder)
  p = Paths(shared, case=folder)
  start = time.perf_counter()
  command = ""
  try:
    for step in case.setup:
      step(p)
    command = [  # python -c CODE: the code as it is
      a if case.command[i - 1] == "-c" else a.format_map(p)
      for i, a in enumerate(case.command)
    ]
    env = dict(p["env"])
    for key, value in case.env.items():
      if value is None:
        env.pop(key, None)
      else:
        env[key] = value.format_map(p)
    refusal = case.expect == "refuse"
    protected = [x.format_map(p) for x in case.protect]
    whole = refusal and not protected
    if whole:
      protected = [folder]
    before = snapshot(protected)
    timed_out = False
    try:
      result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=case.timeout,
      )
    except subprocess.TimeoutExpired as expired:
      timed_out = True
      result = subprocess.CompletedProcess(
        command,
        -9,
        _text(expired.stdout),
        _text(expired.stderr),
      )
    after = snapshot(protected)
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
      with open(
        os.path.join(p["root"], "cases", f"{case.name}.{name}"), "w"
      ) as f:
        f.write(text)
    lost = [
      short(path, p)
      for path, digest in before.items()
      if after.get(path) != digest
    ]
    problem = case.check(p, result) if case.check else None
    if whole and not problem:
      new = [  # hidden files: libraries' bookkeeping (TFDS's .config/)
        short(path, p)
        for path in after
        if path not in before and "/." not in path[len(folder) :]
      ]
      if new:
        problem = f"the refusal left {new[0]} behind"
    outcome, note = classify(case, p, result, timed_out, lost, problem)
    lines = message_lines(result.stderr)
    first = lines[0] if lines else ""
    if not first and result.returncode == 0:
      first = (result.stdout.strip().splitlines() or [""])[-1]
    shown = (
      f"python -c <{case.name}> " + " ".join(command[3:])
      if command[1] == "-c"
      else shlex.join(command)
    )
    return Outcome(
      case,
      outcome,
      short(note, p),
      short(shown, p),
      short(first, p)[:300],
      time.perf_counter() - start,
    )
  except Exception as error:  # noqa: BLE001 - NotRun, or the script's own
    note = str(error)
    if not isinstance(error, NotRun):
      note = f"the script failed: {type(error).__name__}: {error}"
    shown = short(shlex.join(command), p) if command else ""
    return Outcome(case, "not run", short(note, p), shown, "", 0.0)
  finally:
    for mount in reversed(p.get("_mounts", [])):
      subprocess.run(["umount", "-l", mount], check=False)


def _text(value) -> str:
  if value is None:
    return ""
  return value.decode(errors="replace") if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------
# The shared setup.


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
    int(d).to_bytes(4, "big") for d in array.shape
  )
  data = header + np.asarray(array, np.uint8).tobytes()
  with gzip.open(path + ".gz", "wb") as f:
    f.write(data)
  return hashlib.sha256(data).hexdigest()


def tiny_sources(folder):
  """Tiny MNIST IDX files (32 train, 16 test images of a bright cross) and
  a 32x32 GTSRB in its offline layout; returns the MNIST checksums."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(folder, "mnist"))
  checksums = {}
  for prefix, n in (("train", 32), ("t10k", 16)):
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
      y, x = rng.integers(8, 20, size=2)
      image[y - 4 : y + 4, x - 1 : x + 2] = 255
      image[y - 1 : y + 1, x - 4 : x + 4] = rng.integers(100, 255)
    for kind, array in (
      ("images-idx3-ubyte", images),
      ("labels-idx1-ubyte", rng.integers(0, 10, size=n)),
    ):
      name = f"{prefix}-{kind}"
      checksums[name] = write_idx(os.path.join(folder, "mnist", name), array)
  gtsrb = os.path.join(folder, "gtsrb")
  os.makedirs(gtsrb)
  for split, n in (("train", 30), ("test", 10)):
    extra = {"track": (np.arange(n) % 10 // 5).astype(np.int32)}
    np.savez(
      os.path.join(gtsrb, f"{split}.npz"),
      images=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
      labels=(np.arange(n) % 3).astype(np.int64),
      roi_orig=np.tile(np.array([[2, 3, 20, 21]], np.int16), (n, 1)),
      size_orig=np.tile(np.array([[30, 31]], np.int16), (n, 1)),
      filenames=np.array([f"{i:05d}.ppm" for i in range(n)]),
      **(extra if split == "train" else {}),
    )
  return checksums


class Paths(dict):
  """A case's paths. Reading a shared one (``{tfds}``, ``{base}``, ...)
  builds that part of the shared setup first, once (so a case needs only
  what it uses)."""

  def __getitem__(self, key):
    part = PARTS.get(key)
    if part is not None:
      build_part(part, self)
    return super().__getitem__(key)

  def get_plain(self, key):
    """The path without building anything."""
    return super().__getitem__(key)


# Which part of the shared setup a path belongs to.
PARTS = {
  "src": "dataset",
  "tfds": "dataset",
  "sweep_config": "sweep_config",
  "base": "run",
  "base_sweep": "sweep",
  "base_archive": "sweep",
  "base_pop": "population",
}
_BUILT: dict[str, tuple[threading.Event, int]] = {}
_FAILED: dict[str, str] = {}
_BUILDING = threading.Lock()


def build_part(part: str, p: Paths) -> None:
  """Builds ``part`` of the shared setup unless built (by this process or
  an earlier run with the same ``--scratch``); waits for another thread
  that builds it."""
  with _BUILDING:
    event, builder = _BUILT.get(part, (None, None))
    mine = event is None
    if mine:
      event, builder = _BUILT[part] = threading.Event(), threading.get_ident()
  if not mine:
    if builder != threading.get_ident():  # (the builder reads its own paths)
      event.wait()
    if part in _FAILED:
      raise RuntimeError(f"the shared setup {part!r} failed: {_FAILED[part]}")
    return
  done = os.path.join(p.get_plain("root"), "shared", f"{part}.done")
  try:
    if not os.path.exists(done):
      p.get_plain("log")(f"setup: {part}")
      SETUP[part](p)
      open(done, "w").close()
  except Exception as error:
    _FAILED[part] = f"{type(error).__name__}: {str(error)[-2000:]}"
    raise
  finally:
    event.set()


def build_dataset(p):
  from stn_jax.data import datasets

  src, tfds_dir = p.get_plain("src"), p.get_plain("tfds")
  shutil.rmtree(src, ignore_errors=True)
  shutil.rmtree(tfds_dir, ignore_errors=True)
  checksums = tiny_sources(src)
  datasets.build(
    "distorted_mnist/rts",
    tfds_dir=tfds_dir,
    source_dir=src,
    checksums=checksums,
  )


def write_sweep_config(p):
  config = p.get_plain("sweep_config")
  os.makedirs(os.path.dirname(config), exist_ok=True)
  shutil.copy(
    os.path.join(REPO, "configs", "common.py"), os.path.dirname(config)
  )
  with open(os.path.join(REPO, "configs", "mnist.py")) as f:
    source = f.read()
  with open(config, "w") as f:
    f.write(source + SWEEPS.format(tfds=p["tfds"], src=p["src"]))


def setup_command(what, command):
  def build(p):
    for key in what:  # what an interrupted build left
      shutil.rmtree(p.get_plain(key), ignore_errors=True)
    result = subprocess.run(
      [a.format_map(p) for a in command],
      cwd=REPO,
      env=p["env"],
      capture_output=True,
      text=True,
    )
    if result.returncode:
      raise RuntimeError(f"setup {what} failed:\n{result.stderr[-3000:]}")

  return build


SETUP = {
  "dataset": build_dataset,
  "sweep_config": write_sweep_config,
  "run": setup_command(("base",), main_command("{base}")),
  "sweep": setup_command(
    ("base_sweep", "base_archive"),
    sweep_command("--archive={base_archive}", workdir="{base_sweep}"),
  ),
  "population": setup_command(
    ("base_pop",),
    sweep_command("--population", sweep="pop", workdir="{base_pop}"),
  ),
}


def shared_paths(root: str, log) -> dict:
  """The paths of the shared setup under ``root/shared`` (built when a
  case first reads them: :class:`Paths`): the tiny dataset, one trained
  run, a finished sweep with its archive and a population sweep."""
  shared = os.path.join(root, "shared")
  os.makedirs(shared, exist_ok=True)
  p = {
    "root": root,
    "log": log,
    "repo": REPO,
    "src": os.path.join(shared, "src"),
    "tfds": os.path.join(shared, "tfds"),
    "base": os.path.join(shared, "run"),
    "base_sweep": os.path.join(shared, "sweep"),
    "base_archive": os.path.join(shared, "archive"),
    "base_pop": os.path.join(shared, "pop"),
    "sweep_config": os.path.join(shared, "config", "tiny_sweep.py"),
    "p0": POINTS[0],
    "p1": POINTS[1],
  }
  p["env"] = {
    **os.environ,
    "STN_DATA_OFFLINE": "1",  # never the network
    "STN_DATA_DIR": os.path.join(shared, "download_cache"),
    "XDG_CACHE_HOME": os.path.join(shared, "xdg_cache"),
    "TFDS_DATA_DIR": p["tfds"],
    "JAX_COMPILATION_CACHE_DIR": os.path.join(root, "xla_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    # the C++ sampler kernel, built once per machine (else again per run)
    "STN_JAX_CACHE_DIR": os.environ.get("STN_JAX_CACHE_DIR")
    or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
      "stn_jax",
    ),
  }
  p["env"].pop("STN_DATA_MIRROR", None)
  return p


# ---------------------------------------------------------------------------


def report(outcomes, seconds) -> str:
  totals = collections.Counter(o.outcome for o in outcomes)
  ran = [o for o in outcomes if o.outcome != "not run"]
  lines = provenance.header_lines("Hostile cases (issue 33, rerun)")
  lines += [
    f"- run time: {seconds / 60:.1f} min ({len(ran)} cases run, "
    f"{len(outcomes) - len(ran)} not run)",
    "",
    "Made by `experiments/hostile_cases.py` (its docstring defines the "
    "outcomes). `$S` is the script's scratch folder; `python -c <name>` a "
    "library call written out in the script under that case's name.",
    "",
    "## Totals",
    "",
    "| outcome | cases |",
    "|---|---|",
  ]
  lines += [f"| {name} | {totals.get(name, 0)} |" for name in OUTCOMES]
  lines += [f"| all | {len(outcomes)} |", "", "## Cases", ""]
  lines += [
    "| case | class | command | outcome | first line of stderr |",
    "|---|---|---|---|---|",
  ]

  def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")

  for o in outcomes:
    outcome = o.outcome + (f" ({o.note})" if o.note else "")
    lines.append(
      f"| {o.case.name} | {o.case.klass} | `{cell(o.command)}` | "
      f"{cell(outcome)} | {cell(o.first_line)} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", help="run the cases whose name matches this "
                      "glob (or contains it)")  # fmt: skip
  parser.add_argument("--list", action="store_true", help="list the cases")
  parser.add_argument("--scratch", help="scratch folder (default: a new "
                      "temporary one, deleted at the end)")  # fmt: skip
  parser.add_argument("--out", default=OUT, help="the markdown report")
  parser.add_argument(
    "--jobs", type=int, default=1, help="cases run at once (default 1)"
  )
  args = parser.parse_args(argv)
  chosen = [
    case
    for case in cases()
    if not args.only
    or fnmatch.fnmatch(case.name, args.only)
    or args.only in case.name
  ]
  if args.list:
    for case in chosen:
      print(f"{case.name}\t{case.klass}\t{case.expect}")
    print(f"{len(chosen)} cases")
    return 0
  if not chosen:
    print(f"no case matches {args.only!r}", file=sys.stderr)
    return 1
  root = args.scratch or tempfile.mkdtemp(prefix="stn_jax_hostile_")
  root = os.path.abspath(root)
  shutil.rmtree(os.path.join(root, "cases"), ignore_errors=True)
  start = time.perf_counter()

  def log(text):
    print(f"[{time.perf_counter() - start:6.0f} s] {text}", flush=True)

  outcomes = {}
  try:
    shared = shared_paths(root, log)
    # The background run's cases last, one at a time: the SIGTERM case
    # stops it.
    later = [case for case in chosen if busy_run in case.setup]
    first = [case for case in chosen if busy_run not in case.setup]

    def one(case):
      outcome = run_case(case, root, shared)
      outcomes[case.name] = outcome
      log(
        f"{len(outcomes)}/{len(chosen)} {case.name}: {outcome.outcome}"
        + (f" ({outcome.note})" if outcome.note else "")
        + f" [{outcome.seconds:.0f} s]"
      )

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      list(pool.map(one, first))
    for case in later:
      one(case)
  finally:
    stop_busy_run()
    if not args.scratch:
      shutil.rmtree(root, ignore_errors=True)
  outcomes = [outcomes[case.name] for case in chosen if case.name in outcomes]
  seconds = time.perf_counter() - start
  text = report(outcomes, seconds)
  with open(args.out, "w") as f:
    f.write(text)
  totals = collections.Counter(o.outcome for o in outcomes)
  print(", ".join(f"{n} {name}" for name, n in totals.most_common()))
  print(f"wrote {args.out} ({seconds / 60:.1f} min)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
