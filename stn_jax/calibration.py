"""Calibration of a classifier's confidence: expected calibration error
(ECE) and the reliability diagram's bins (Guo et al. 2017).

The confidence of a prediction is its largest softmax probability; the
``num_bins`` equal-width bins split ``[0, 1]`` as ``(0, 1/M], (1/M, 2/M],
..., ((M-1)/M, 1]`` (a confidence of exactly 0 goes to the first). ECE is
``sum_b (n_b / N) |accuracy_b - confidence_b|``: the bins' gaps between
accuracy and mean confidence, weighted by their share of the examples.
Pure ``jnp``: both functions jit and vmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_NUM_BINS = 15
# How far from 1 a row may sum and still be read as probabilities.
PROBABILITY_TOLERANCE = 1e-4


def _confidence_and_correct(probs_or_logits, labels, from_logits):
  scores = jnp.asarray(probs_or_logits)
  if scores.ndim != 2:
    raise ValueError(
      "probs_or_logits must have shape (N, num_classes); got shape "
      f"{tuple(scores.shape)}."
    )
  labels = jnp.asarray(labels)
  if labels.shape != scores.shape[:1]:
    raise ValueError(
      f"labels must have shape ({scores.shape[0]},) to match "
      f"probs_or_logits; got shape {tuple(labels.shape)}."
    )
  scores = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
  if from_logits is None:  # probabilities if every row is a distribution
    is_probs = jnp.all((scores >= 0) & (scores <= 1)) & jnp.all(
      jnp.abs(scores.sum(axis=-1) - 1) <= PROBABILITY_TOLERANCE
    )
    probs = jnp.where(is_probs, scores, jax.nn.softmax(scores, axis=-1))
  else:
    probs = jax.nn.softmax(scores, axis=-1) if from_logits else scores
  confidence = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(probs.dtype)
  return confidence, correct


def _check_bins(num_bins):
  if (
    isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1
  ):
    raise ValueError(f"num_bins must be a positive int; got {num_bins!r}.")


def reliability_bins(
  probs_or_logits,
  labels,
  num_bins: int = DEFAULT_NUM_BINS,
  *,
  from_logits: bool | None = None,
):
  """Per-bin counts, accuracies and mean confidences.

  Args:
    probs_or_logits: ``(N, num_classes)`` probabilities (rows summing to
      1) or logits.
    labels: ``(N,)`` int class indices.
    num_bins: M equal-width confidence bins (static under jit).
    from_logits: True: ``probs_or_logits`` are logits (softmax applied);
      False: probabilities; None (default): probabilities if every entry
      is in [0, 1] and every row sums to 1 within
      ``PROBABILITY_TOLERANCE``, else logits.

  Returns:
    ``(counts, accuracy, confidence)``, each ``(M,)`` float: examples per
    bin, their accuracy and mean confidence (0 in an empty bin).
  """
  _check_bins(num_bins)
  confidence, correct = _confidence_and_correct(
    probs_or_logits, labels, from_logits
  )
  index = jnp.clip(
    jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1
  )
  counts = jnp.zeros(num_bins, confidence.dtype).at[index].add(1)
  correct_sum = jnp.zeros(num_bins, confidence.dtype).at[index].add(correct)
  confidence_sum = (
    jnp.zeros(num_bins, confidence.dtype).at[index].add(confidence)
  )
  safe = jnp.maximum(counts, 1)
  return counts, correct_sum / safe, confidence_sum / safe


def expected_calibration_error(
  probs_or_logits,
  labels,
  num_bins: int = DEFAULT_NUM_BINS,
  *,
  from_logits: bool | None = None,
):
  """Expected calibration error on max-softmax confidence.

  Args:
    probs_or_logits: ``(N, num_classes)`` probabilities or logits (what
      ``Restored.predict`` returns); see ``from_logits``.
    labels: ``(N,)`` int class indices.
    num_bins: M equal-width bins on ``[0, 1]`` (default 15).
    from_logits: as :func:`reliability_bins` (default None: told apart
      by the values).

  Returns:
    float scalar in ``[0, 1]`` (a JAX array): ``sum_b (n_b / N)
    |accuracy_b - confidence_b|``. NaN for ``N = 0``.

  Example: a predictor that always says 0.8 and is right 60% of the time
  has ECE 0.2.
  """
  counts, accuracy, confidence = reliability_bins(
    probs_or_logits, labels, num_bins, from_logits=from_logits
  )
  return jnp.sum(counts * jnp.abs(accuracy - confidence)) / counts.sum()
