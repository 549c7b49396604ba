"""The paired bootstrap behind every verdict: known intervals, ties, seeds, predictions files."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxbud import stats


def test_identical_predictions_are_inconclusive():
  wrong = np.random.default_rng(0).random((3, 200)) < 0.1
  one = stats.paired_bootstrap(wrong[:1], wrong[:1].copy(), samples=2000)
  assert (one.diff, one.lo, one.hi) == (0.0, 0.0, 0.0) and one.verdict == stats.INCONCLUSIVE
  # With several seeds a side's runs are redrawn independently of the other side's (seed k of
  # one arm has nothing to do with seed k of another), so the interval widens but holds 0.
  three = stats.paired_bootstrap(wrong, wrong.copy(), samples=2000)
  assert three.diff == 0.0 and three.lo < 0 < three.hi and three.verdict == stats.INCONCLUSIVE


def test_one_sided_disagreement_matches_the_binomial_interval():
  # a and b agree everywhere except d images, where a is wrong and b right: the bootstrap
  # difference is Binomial(N, d/N) / N, whose 95% interval is known exactly.
  n, d = 400, 20
  a, b = np.zeros(n, bool), np.zeros(n, bool)
  a[:d] = True
  c = stats.paired_bootstrap(a[None], b[None], samples=20_000)
  lo, hi = scipy_stats.binom.ppf([0.025, 0.975], n, d / n) / n
  assert c.diff == pytest.approx(d / n)
  assert c.lo == pytest.approx(lo, abs=1.5 / n) and c.hi == pytest.approx(hi, abs=1.5 / n)
  assert c.verdict == stats.CONTRADICTED  # the claim "a errs less" is contradicted
  flipped = stats.paired_bootstrap(b[None], a[None], samples=20_000)
  assert flipped.verdict == stats.SUPPORTED and flipped.hi == pytest.approx(-c.lo, abs=1.5 / n)


def test_seeds_are_resampled_too():
  # a: two runs, one wrong on every image, one right on every image; b always right. Images
  # carry no variation, so the interval comes from the seed draws alone: the share of the
  # all-wrong run in 2 draws is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
  a = np.stack([np.ones(50, bool), np.zeros(50, bool)])
  c = stats.paired_bootstrap(a, np.zeros((1, 50), bool), samples=4000)
  assert (c.diff, c.lo, c.hi, c.runs_a, c.runs_b) == (0.5, 0.0, 1.0, 2, 1)
  assert c.verdict == stats.INCONCLUSIVE


def test_pairing_is_tighter_than_unpaired_error_rates():
  # Two models wrong on 50 of 500 images each, 45 of them shared: the paired interval of the
  # difference is far narrower than either error's own binomial spread.
  n = 500
  a, b = np.zeros(n, bool), np.zeros(n, bool)
  a[:50], b[5:55] = True, True
  c = stats.paired_bootstrap(a[None], b[None], samples=5000)
  assert c.diff == 0.0 and c.hi - c.lo < 0.03 and c.verdict == stats.INCONCLUSIVE


def test_bootstrap_is_deterministic_and_checks_shapes():
  rng = np.random.default_rng(1)
  a, b = rng.random((2, 100)) < 0.2, rng.random((3, 100)) < 0.3
  assert stats.paired_bootstrap(a, b, samples=1000) == stats.paired_bootstrap(a, b, samples=1000)
  with pytest.raises(ValueError, match='same'):
    stats.paired_bootstrap(a, b[:, :50])


def test_predictions_round_trip_and_wrong_matrix(tmp_path):
  labels = np.array([0, 1, 2, 3], np.int32)
  stats.save_predictions(tmp_path / 'a.npz', [0, 1, 0, 3], labels)
  stats.save_predictions(tmp_path / 'b.npz', [1, 1, 2, 3], labels)
  w = stats.wrong([tmp_path / 'a.npz', tmp_path / 'b.npz'])
  np.testing.assert_array_equal(w, [[0, 0, 1, 0], [1, 0, 0, 0]])
  stats.save_predictions(tmp_path / 'c.npz', [0, 1, 2, 3], labels[::-1])
  with pytest.raises(ValueError, match='other test images'):
    stats.wrong([tmp_path / 'a.npz', tmp_path / 'c.npz'])
