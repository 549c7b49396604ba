"""Per-example test predictions and the paired statistics the study's verdicts rest on.

Every evaluated model saves the predicted class of each test image (`save_predictions`), so
two models are compared on the same images: a paired comparison, far tighter than comparing
two error rates. `paired_bootstrap` gives the difference in test error with a percentile
bootstrap interval that resamples test images (the same draw for both sides) and, for a side
trained with several seeds, its seeds. The verdict on a claim "a errs less than b" is
"supported" when the whole interval lies below zero, "contradicted" when it lies above, and
"inconclusive" when it contains zero.
"""
import dataclasses

import numpy as np

SUPPORTED, CONTRADICTED, INCONCLUSIVE = 'supported', 'contradicted', 'inconclusive'


def save_predictions(path, predictions, labels):
  """Writes predicted classes and labels (int32, one per test image, split order) to `path`."""
  np.savez(path, predictions=np.asarray(predictions, np.int32),
           labels=np.asarray(labels, np.int32))


def load_predictions(path) -> tuple[np.ndarray, np.ndarray]:
  """(predictions, labels) as written by `save_predictions`."""
  with np.load(path) as f:
    return f['predictions'], f['labels']


def wrong(paths) -> np.ndarray:
  """(runs, images) bool: whether each run's prediction of each test image is wrong.

  All runs must be evaluated on the same test images in the same order (checked by labels).
  """
  rows, labels0 = [], None
  for p in paths:
    preds, labels = load_predictions(p)
    if labels0 is None:
      labels0 = labels
    elif not np.array_equal(labels, labels0):
      raise ValueError(f'{p} was evaluated on other test images than {paths[0]}')
    rows.append(preds != labels)
  return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Test error of a minus that of b (fractions), with its bootstrap interval."""
  diff: float
  lo: float
  hi: float
  images: int
  runs_a: int
  runs_b: int
  level: float

  @property
  def verdict(self) -> str:
    """On the claim "a errs less than b"."""
    if self.hi < 0:
      return SUPPORTED
    if self.lo > 0:
      return CONTRADICTED
    return INCONCLUSIVE

  def describe(self) -> str:
    return (f'difference {100 * self.diff:+.2f}% [{100 * self.lo:+.2f}, {100 * self.hi:+.2f}] '
            f'({self.images:,} test images; {self.runs_a} vs {self.runs_b} '
            f'run{"s" if self.runs_b > 1 else ""})')


def paired_bootstrap(wrong_a, wrong_b, *, samples: int = 10_000, level: float = 0.95,
                     seed: int = 0, chunk: int = 500) -> Comparison:
  """Mean test error of a minus b with a paired percentile bootstrap interval.

  wrong_a: (k, N) and wrong_b: (m, N) bool, one row per training run (seed) of each side, one
  column per test image. Every bootstrap sample draws N images with replacement, used by both
  sides, and draws each side's k (m) runs with replacement; its statistic is the mean error of
  a's drawn runs on the drawn images minus b's. Deterministic for a given `seed`.
  """
  a, b = np.atleast_2d(np.asarray(wrong_a, np.float64)), np.atleast_2d(
      np.asarray(wrong_b, np.float64))
  if a.shape[1] != b.shape[1] or a.shape[1] == 0:
    raise ValueError(f'need the same (non-zero) number of test images, got {a.shape[1]} and '
                     f'{b.shape[1]}')
  n, (k, m) = a.shape[1], (len(a), len(b))
  rng = np.random.default_rng(seed)
  stats = []
  for start in range(0, samples, chunk):
    size = min(chunk, samples - start)
    images = rng.multinomial(n, np.full(n, 1 / n), size=size)        # (size, N) counts
    ea = _runs(rng, k, size) @ a if k > 1 else np.broadcast_to(a, (size, n))
    eb = _runs(rng, m, size) @ b if m > 1 else np.broadcast_to(b, (size, n))
    stats.append(np.sum(images * (ea - eb), axis=1) / n)
  stats = np.concatenate(stats)
  tail = 100 * (1 - level) / 2
  lo, hi = np.percentile(stats, [tail, 100 - tail])
  return Comparison(float(a.mean() - b.mean()), float(lo), float(hi), n, k, m, level)


def _runs(rng, k: int, size: int) -> np.ndarray:
  """(size, k) weights: each row the share of k draws with replacement that picked each run."""
  return rng.multinomial(k, np.full(k, 1 / k), size=size) / k
