"""SIGTERM and Ctrl-C outside a training loop: a sweep stops before its
next point, a signal after its last point is passed on (never swallowed),
and a table script that runs sweep after sweep stops training at the
first signal, tabulates and says so."""

import functools
import os
import signal

import pytest
from conftest import experiment_script, write_mnist_config_with_sweep

from stn_jax import cli, sweep
from stn_jax.sweep import signals

FOUR_POINTS = """def sweep_tiny(add):
  for seed in range(2):
    for model in ("cnn", "fcn"):
      add(f"distortion=rts,model={model},small=true,seed={seed}")
"""


@pytest.fixture
def config_path(tmp_path):
  return str(write_mnist_config_with_sweep(tmp_path, FOUR_POINTS))


@pytest.fixture
def received():
  """An outer SIGTERM/SIGINT handler (the program's own) that lists what
  reaches it; the previous handlers come back after the test."""
  got = []
  previous = {
    n: signal.signal(n, lambda number, _: got.append(number))
    for n in signals.SIGNALS
  }
  yield got
  for number, handler in previous.items():
    signal.signal(number, handler)


def _signalling_train(at_call: int, number=signal.SIGTERM):
  """A train_fn that finishes every point and, at its ``at_call``-th
  call (1-based), sends ``number`` to this process before returning (as
  if it came during the point's final evaluation)."""
  calls = []

  def train_fn(config, point_dir):
    calls.append(os.path.basename(point_dir))
    if len(calls) == at_call:
      os.kill(os.getpid(), number)
    return {"test_error": 0.1}

  return train_fn, calls


def _run(config_path, workdir, train_fn):
  return sweep.run_sweep(
    config_path, "tiny", str(workdir), train_fn=train_fn, log=lambda *a: None
  )


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_a_point_stops_the_sweep_before_the_next(
  config_path, tmp_path, received, number
):
  train_fn, calls = _signalling_train(2, number)
  records = _run(config_path, tmp_path / "w", train_fn)
  assert len(calls) == 2
  assert [r.status for r in records] == ["finished", "finished", "interrupted"]
  assert records[2].signal == signal.Signals(number).name
  assert received == []  # acted on by the sweep, not passed on
  again, calls = _signalling_train(0)
  records = _run(config_path, tmp_path / "w", again)  # the same command
  assert calls == [r.name for r in records[2:]] and len(calls) == 2
  assert [r.status for r in records] == ["skipped"] * 2 + ["finished"] * 2


def test_a_signal_after_the_last_point_is_passed_on_not_swallowed(
  config_path, tmp_path, received
):
  train_fn, calls = _signalling_train(4)
  records = _run(config_path, tmp_path / "w", train_fn)
  assert [r.status for r in records] == ["finished"] * 4
  assert received == [signal.SIGTERM]  # once, after the sweep returned


def test_a_signal_held_outside_stops_a_sweep_before_its_first_point(
  config_path, tmp_path, received
):
  train_fn, calls = _signalling_train(0)
  with sweep.StopOnSignal() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    records = _run(config_path, tmp_path / "w", train_fn)
    assert outer.signal == "SIGTERM"
    assert signals.pending() == "SIGTERM"
    outer.acted()
    assert signals.pending() is None
  assert calls == []
  assert {r.status for r in records} == {"interrupted"}
  assert received == []


def test_a_signal_held_while_a_point_starts_stops_its_training_loop(
  tiny_tfds, tmp_path, received
):
  """A signal that came while a point built its data or compiled (held by
  the sweep's StopOnSignal, before the loop's own handler) stops the run
  after its first step, with a checkpoint; it does not train to the end."""
  from conftest import MNIST, tiny

  from stn_jax import train

  config = tiny(MNIST.get_config("model=cnn,small=true"), tiny_tfds)
  config.num_steps = 50
  with sweep.StopOnSignal() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results == {"interrupted_at_step": 1, "signal": "SIGTERM"}
    outer.acted()  # as the sweep runner does for an interrupted point
  assert received == []
  assert (tmp_path / "run" / "checkpoints" / "1").is_dir()


def test_a_second_signal_is_not_held(received):
  with sweep.StopOnSignal() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGINT" and received == []
    os.kill(os.getpid(), signal.SIGINT)
    assert received == [signal.SIGINT]  # at once, to the previous handler
    stop.acted()
  assert received == [signal.SIGINT]


def test_a_table_script_stops_training_at_a_signal_between_seed_passes(
  config_path, tmp_path, monkeypatch, capsys
):
  """The bug this fixes: a SIGTERM during the last point of seed 0's pass
  was swallowed and seed 1's points trained."""
  tables = experiment_script("_tables")
  train_fn, calls = _signalling_train(2)  # the last point of seed 0
  monkeypatch.setattr(
    tables.sweep,
    "run_sweep",
    functools.partial(sweep.run_sweep, train_fn=train_fn, log=lambda *a: None),
  )
  seen = []

  def main():
    for workdir in ("first", "second"):  # e.g. GTSRB, then RTS
      records, trained = tables.run_in_seed_passes(
        config_path,
        ["tiny"],
        str(tmp_path / workdir),
        seeds=2,
        keep=lambda arg: True,
        overrides={},
        extra_arg="",
      )
      seen.append([r["status"] for r in records])

  status = tables.run_script(main)
  assert status == cli.EXIT_STATUS["SIGTERM"]
  assert len(calls) == 2  # seed 1 and the second workdir: not trained
  assert seen == [["skipped", "skipped", "pending", "pending"], []]
  assert not (tmp_path / "second").exists()
  assert "stopped by SIGTERM between runs" in capsys.readouterr().err


def test_ctrl_c_outside_a_training_loop_is_one_line_and_130(capsys):
  from absl import flags

  def main(positional):
    raise KeyboardInterrupt

  status = cli.run(main, flags.FlagValues(), [], prog="prog", doc="doc")
  assert status == 130
  err = capsys.readouterr().err
  assert err.strip() == (
    "prog: stopped by SIGINT (Ctrl-C); rerun the same command to continue."
  )
