"""Evaluation during and after training: loss and error over whole splits,
written per member and logged.

:func:`evaluate` runs the eval step over a split; an :class:`Evaluator` is
the loop's evaluation action (the periodic hook's and the final one): a
transformer snapshot, every eval split, one metrics record per member.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax import steps, xla_cpu
from stn_jax.normalization import Normalization


def evaluate(
  eval_step,
  model_state,
  arrays,
  normalization: Normalization,
  batch_size: int,
  sharding=None,
) -> list[dict[str, float]]:
  """Loss and error over a whole split (the last batch padded and masked).

  ``eval_step`` is :func:`stn_jax.steps.make_eval_step`'s; for a population
  (``model_state`` stacked over members) it returns per-member sums.
  Returns one ``{'loss', 'error'}`` per member (one for a single model).
  """
  outputs = []
  n = len(arrays["label"])
  # No batch larger than the split (rounded up to whole shards): a huge
  # eval_batch_size would only pad, and allocate, rows that are masked out.
  shards = len(sharding.device_set) if sharding is not None else 1
  batch_size = min(batch_size, -(-n // shards) * shards)
  put = (lambda x: jax.device_put(x, sharding)) if sharding else jnp.asarray
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)
    mask = (index < n).astype(np.float32)
    index = np.minimum(index, n - 1)
    outputs.append(
      eval_step(
        model_state,
        {
          "image": put(normalization(arrays["image"][index])),
          "label": put(arrays["label"][index].astype(np.int32)),
          "mask": put(mask),
        },
      )
    )
  totals = {
    k: np.sum(
      np.stack([np.atleast_1d(o[k]) for o in jax.device_get(outputs)]),
      0,
      dtype=np.float64,
    )
    for k in outputs[0]
  }
  return [
    {"loss": float(loss / count), "error": float(wrong / count)}
    for loss, wrong, count in zip(
      totals["loss_sum"], totals["wrong"], totals["count"]
    )
  ]


def format_metrics(results: dict[str, float]) -> str:
  """``'test_loss 0.1234, test_error 1.20%'``: errors as percentages."""
  return ", ".join(
    f"{n} {v:.2%}" if n.endswith("error") else f"{n} {v:.4f}"
    for n, v in results.items()
  )


class Evaluator:
  """The loop's evaluation: ``evaluator(context)`` snapshots the
  transformer (``outputs.snapshot``), evaluates every split of ``evals``,
  writes and logs each member's ``{split}_{loss,error}`` and returns them
  (one dict per member). For a run that keeps a moving average of its
  parameters (``ema_decay`` > 0) those are the average's, and
  ``{split}_raw_{loss,error}`` the trained parameters'.

  Args:
    eval_step: :func:`stn_jax.steps.make_eval_step`'s.
    evals: ``{split: arrays}``.
    normalization: the run's input normalisation.
    batch_size: the evaluation batch.
    placement: the run's :mod:`~stn_jax.train.placement` (its evaluation
      sharding and member prefixes).
    outputs: the run's :class:`~stn_jax.train.outputs.RunOutputs`.
    log: prints a line (process 0's).
  """

  def __init__(
    self, eval_step, evals, normalization, batch_size, placement, outputs, log
  ):
    self.eval_step = eval_step
    self.evals = evals
    self.normalization = normalization
    self.batch_size = batch_size
    self.placement = placement
    self.outputs = outputs
    self.log = log

  @classmethod
  def for_run(cls, placement, graphdef, evals, outputs, log) -> Evaluator:
    """The evaluation of ``placement``'s run: its eval step over every
    split of ``evals``, at the config's batch size and normalisation."""
    first = placement.configs[0]
    return cls(
      steps.make_eval_step(
        graphdef,
        population=placement.method or False,
        compiler_options=xla_cpu.step_compiler_options(first),
      ),
      evals,
      Normalization.from_config(first),
      first.eval_batch_size,
      placement,
      outputs,
      log,
    )

  def __call__(self, context) -> list[dict[str, float]]:
    self.outputs.snapshot(context)
    results = [{} for _ in self.outputs.folders]
    models = {"": steps.evaluated_model(context.state)}
    if context.state.average is not None:  # the trained parameters too
      models["raw_"] = context.state.model
    for split, arrays in self.evals.items():
      for prefix, model_state in models.items():
        for k, metrics in enumerate(
          evaluate(
            self.eval_step,
            model_state,
            arrays,
            self.normalization,
            self.batch_size,
            self.placement.eval_sharding,
          )
        ):
          results[k].update(
            {f"{split}_{prefix}{n}": v for n, v in metrics.items()}
          )
    for k, (writer, member_results) in enumerate(
      zip(self.outputs.writers, results)
    ):
      writer.write(context.step, member_results)
      self.log(
        f"{self.placement.log_prefix(k)}step {context.step}: "
        + format_metrics(member_results)
      )
    return results
