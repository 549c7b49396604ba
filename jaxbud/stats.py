"""Per-example test predictions and the statistics the study's verdicts rest on.

Every evaluated model saves the predicted class of each test image (`save_predictions`), so
two models are compared on the same images: a paired comparison, far tighter than comparing
two error rates.

`compare` gives the difference in test error a - b with an interval. Its target is the
difference of *expected* errors, over the population of test images and over training runs,
and its variance has three parts (law of total variance):

  Var(D) = s_a^2 / m + s_b^2 / k + sigma_img^2 / N

s_a^2 and s_b^2 are the run-to-run variances of each side's per-run test error (the sample
variance over its m, k runs; they include the per-image coin flips of a run), and sigma_img^2
is the across-image variance of the expected per-image difference: the sample variance over
images of d_i = (a's share of runs wrong on image i) - (b's share), less the run noise it
holds that the first two terms count already (mean_i u_a,i / m + mean_i u_b,i / k, u being a
side's per-image sample variance across runs), floored at 0. Runs of the two sides are separate
training runs and are never paired; only the images are. Each part gets its own quantile:
the run part a t with Welch-Satterthwaite degrees of freedom over s_a^2 and s_b^2, the image
part (thousands of images) the normal, and the half-width is sqrt((t se_runs)^2 +
(z se_images)^2). (One t over the whole variance undercovers: when a 1-df variance comes out
small by chance, the image part takes over the df and the interval is too narrow.) With few
runs a side's s^2 can be replaced by a pooled run-to-run variance over many points of the same
kind (`pool`), with its larger df. Calibrated in tests/test_stats.py; docs/study.md has the
numbers.

`paired_bootstrap`, a percentile bootstrap over images and seeds, is the method this replaced:
it ignores the run-to-run variance of a side with one run and understates it with a few, and
covers the truth in well under 95% of simulated studies (tests/test_stats.py).

The verdict on a claim "a errs less than b" is "supported" when the whole interval lies below
zero, "contradicted" when it lies above, and "inconclusive" when it contains zero. `holm`
adjusts the p-values of a family of comparisons; `mann_whitney` tests latencies.
"""
import dataclasses
import math
from typing import NamedTuple

import numpy as np
from scipy import special  # scipy comes with scikit-learn, a dependency

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


def interval_verdict(lo: float, hi: float) -> str:
  """On the claim "a errs less than b", from an interval of a - b."""
  if hi < 0:
    return SUPPORTED
  if lo > 0:
    return CONTRADICTED
  return INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Test error of a minus that of b (fractions), with its interval at `level` (`compare`).

  se: the standard error of diff, se_images its test-image part; df: the Welch-Satterthwaite
  degrees of freedom of its run-to-run part; p: two-sided p-value of "no difference" (below
  1 - level exactly when the interval excludes 0). pooled_a/b: whether that side's run-to-run
  variance came from a pool. A side with one run and no pool has no run-to-run variance
  estimate: the interval then covers the test images and that run's per-image noise only.
  """
  diff: float
  lo: float
  hi: float
  images: int
  runs_a: int
  runs_b: int
  level: float
  df: float = math.inf
  se: float = 0.0
  p: float = 1.0
  se_images: float = 0.0
  pooled_a: bool = False
  pooled_b: bool = False

  @property
  def verdict(self) -> str:
    """On the claim "a errs less than b"."""
    return interval_verdict(self.lo, self.hi)

  @property
  def runs_unestimated(self) -> bool:
    """Whether a side's run-to-run variance is missing from the interval."""
    return (self.runs_a < 2 and not self.pooled_a) or (self.runs_b < 2 and not self.pooled_b)

  def describe(self) -> str:
    text = (f'difference {100 * self.diff:+.2f}% [{100 * self.lo:+.2f}, {100 * self.hi:+.2f}] '
            f'({self.images:,} test images; {self.runs_a} vs {self.runs_b} '
            f'run{"s" if self.runs_b > 1 else ""}) p = {self.p:.2g}')
    if self.runs_unestimated:
      text += ', run-to-run variance not estimated (one run, no pool)'
    return text


class Pool(NamedTuple):
  """A pooled run-to-run variance of test error (fraction^2) and its degrees of freedom."""
  var: float
  df: int


def pool(errors, shared_runs: bool = False) -> Pool:
  """A run-to-run variance pooled over points of one kind (all from scratch, or all
  prune-and-tune; it assumes their run-to-run variances are alike).

  errors: per point, its n_j runs' test errors (e.g. `wrong(...).mean(axis=1)`). The variance
  is sum_j (n_j - 1) s_j^2 / sum_j (n_j - 1), s_j^2 the sample variance of point j's errors,
  on sum_j (n_j - 1) df. With `shared_runs` the points are snapshots of the same runs (the
  budgets of k prune runs): their s_j^2 are far from independent, so the df stay those of the
  largest point, max_j (n_j - 1) (conservative: with the sum, 95% intervals of 3 vs 2 runs
  covered 91.6% of simulated studies whose snapshots shared their run effects; docs/study.md).
  Points with one run add nothing; Pool(0, 0) when none has two.
  """
  ss, df, most = 0.0, 0, 0
  for e in errors:
    e = np.asarray(e, np.float64).ravel()
    if len(e) > 1:
      ss += float(np.sum((e - e.mean()) ** 2))
      df += len(e) - 1
      most = max(most, len(e) - 1)
  return Pool(ss / df if df else 0.0, most if shared_runs else df)


def compare(wrong_a, wrong_b, *, level: float = 0.95, pool_a: Pool | None = None,
            pool_b: Pool | None = None) -> Comparison:
  """Mean test error of a minus b with an interval over test images and training runs.

  wrong_a: (m, N) and wrong_b: (k, N) bool, one row per training run of each side (runs of the
  two sides are independent), one column per test image (the same images for both: paired).
  pool_a, pool_b: a pooled run-to-run variance (`pool`) that replaces that side's own sample
  variance and degrees of freedom (needed with one run; far tighter with two). The same pool
  for both sides is one estimate, so its df count once. See the module docstring.
  """
  a = np.atleast_2d(np.asarray(wrong_a, np.float64))
  b = np.atleast_2d(np.asarray(wrong_b, np.float64))
  if a.shape[1] != b.shape[1] or a.shape[1] == 0:
    raise ValueError(f'need the same (non-zero) number of test images, got {a.shape[1]} and '
                     f'{b.shape[1]}')
  n = a.shape[1]
  diff = float(a.mean() - b.mean())
  (var_a, df_a), noise_a = _side(a, pool_a)
  (var_b, df_b), noise_b = _side(b, pool_b)
  d = a.mean(axis=0) - b.mean(axis=0)
  img = max(float(d.var(ddof=1)) - noise_a - noise_b, 0.0) / n if n > 1 else 0.0
  t_a, t_b = var_a / len(a), var_b / len(b)
  if _usable(pool_a) and pool_a == pool_b:
    parts = [(t_a + t_b, df_a)]  # one estimate scaled twice: its df count once
  else:
    parts = [(t_a, df_a), (t_b, df_b)]
  runs2 = sum(t for t, _ in parts)
  denom = sum(t * t / df for t, df in parts if t > 0)
  df = runs2 * runs2 / denom if denom > 0 else math.inf  # Welch-Satterthwaite
  se_runs, se_img = math.sqrt(runs2), math.sqrt(img)
  half = _half_width(1 - level, se_runs, df, se_img)
  if se_runs == se_img == 0:
    p = 1.0 if diff == 0 else 0.0
  else:
    p = _p_value(abs(diff), se_runs, df, se_img)
  return Comparison(diff, diff - half, diff + half, n, len(a), len(b), level, df=float(df),
                    se=math.sqrt(runs2 + img), p=p, se_images=se_img,
                    pooled_a=_usable(pool_a), pooled_b=_usable(pool_b))


def _half_width(alpha: float, se_runs: float, df: float, se_img: float) -> float:
  """Half the width of the two-sided 1 - alpha interval: each part at its own quantile, the run
  part's from a t with `df`, the image part's (thousands of images) from the normal."""
  q = 1 - alpha / 2
  z = special.ndtri(q)
  t = z if math.isinf(df) else special.stdtrit(df, q)
  return float(np.hypot(t * se_runs if se_runs else 0.0, z * se_img if se_img else 0.0))


def _p_value(effect: float, se_runs: float, df: float, se_img: float) -> float:
  """The alpha whose interval just reaches zero (so p < 1 - level exactly when the interval at
  `level` excludes zero): bisection on log alpha, the half width falling as alpha grows."""
  if effect == 0:
    return 1.0
  lo, hi = -700.0, 0.0  # log alpha
  if _half_width(math.exp(lo), se_runs, df, se_img) < effect:
    return 0.0
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _half_width(math.exp(mid), se_runs, df, se_img) >= effect else (lo, mid)
  return math.exp(hi)


def _usable(p: Pool | None) -> bool:
  return p is not None and p.df > 0


def _side(w: np.ndarray, p: Pool | None):
  """((run-to-run variance, its df), run noise in var_i(d_i)) of one side's (runs, N) matrix.

  With one run and no pool the variance is unknown (0, inf df); that run's per-image noise then
  stays in the image term, which is not corrected for it. With one run and a pool the image
  term cannot be corrected either, and counts that noise twice (conservative).
  """
  runs = len(w)
  noise = float(w.var(axis=0, ddof=1).mean()) / runs if runs > 1 else 0.0
  if _usable(p):
    return (p.var, p.df), noise
  if runs > 1:
    return (float(w.mean(axis=1).var(ddof=1)), runs - 1), noise
  return (0.0, math.inf), noise


def holm(pvalues) -> np.ndarray:
  """Holm's step-down adjusted p-values of one family (reject where adjusted < alpha): the
  family-wise error rate stays at alpha whatever the dependence between the tests."""
  p = np.asarray(pvalues, np.float64)
  order = np.argsort(p, kind='stable')
  scaled = (len(p) - np.arange(len(p))) * p[order]
  adjusted = np.empty_like(p)
  adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
  return adjusted


def mann_whitney(x, y) -> tuple[float, float]:
  """(U of x, two-sided p) of the Mann-Whitney U test that x and y come from one distribution.

  Normal approximation with the tie correction and a continuity correction (as scipy's
  'asymptotic' method). U of x below len(x) * len(y) / 2: x tends to be the smaller.
  """
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  n1, n2 = len(x), len(y)
  if not n1 or not n2:
    raise ValueError(f'need samples on both sides, got {n1} and {n2} values')
  both = np.concatenate([x, y])
  _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
  midranks = np.cumsum(counts) - (counts - 1) / 2  # average rank of each distinct value
  u = float(midranks[inverse][:n1].sum() - n1 * (n1 + 1) / 2)
  n = n1 + n2
  var = n1 * n2 / 12 * ((n + 1) - np.sum(counts ** 3 - counts) / (n * (n - 1)))
  if var <= 0:  # every value the same
    return u, 1.0
  z = max(abs(u - n1 * n2 / 2) - 0.5, 0.0) / math.sqrt(var)
  return u, float(min(1.0, math.erfc(z / math.sqrt(2))))


# -- the method `compare` replaced -----------------------------------------------------------

def paired_bootstrap(wrong_a, wrong_b, *, samples: int = 10_000, level: float = 0.95,
                     seed: int = 0, chunk: int = 500) -> Comparison:
  """Mean test error of a minus b with a paired percentile bootstrap interval (superseded by
  `compare`; kept to show its miscalibration in tests/test_stats.py).

  wrong_a: (m, N) and wrong_b: (k, N) bool. Every bootstrap sample draws N images with
  replacement, used by both sides, and draws each side's runs with replacement; its statistic
  is the mean error of a's drawn runs on the drawn images minus b's. Deterministic for a given
  `seed`.
  """
  a, b = np.atleast_2d(np.asarray(wrong_a, np.float64)), np.atleast_2d(
      np.asarray(wrong_b, np.float64))
  if a.shape[1] != b.shape[1] or a.shape[1] == 0:
    raise ValueError(f'need the same (non-zero) number of test images, got {a.shape[1]} and '
                     f'{b.shape[1]}')
  n, (m, k) = a.shape[1], (len(a), len(b))
  rng = np.random.default_rng(seed)
  stats = []
  for start in range(0, samples, chunk):
    size = min(chunk, samples - start)
    images = rng.multinomial(n, np.full(n, 1 / n), size=size)        # (size, N) counts
    ea = _runs(rng, m, size) @ a if m > 1 else np.broadcast_to(a, (size, n))
    eb = _runs(rng, k, size) @ b if k > 1 else np.broadcast_to(b, (size, n))
    stats.append(np.sum(images * (ea - eb), axis=1) / n)
  stats = np.concatenate(stats)
  tail = 100 * (1 - level) / 2
  lo, hi = np.percentile(stats, [tail, 100 - tail])
  return Comparison(float(a.mean() - b.mean()), float(lo), float(hi), n, m, k, level)


def _runs(rng, k: int, size: int) -> np.ndarray:
  """(size, k) weights: each row the share of k draws with replacement that picked each run."""
  return rng.multinomial(k, np.full(k, 1 / k), size=size) / k
