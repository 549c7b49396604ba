"""The report's comparisons on a hand-made study: pooled intervals, Holm per RQ, the copycat
counted once, RQ3's Mann-Whitney test, RQ5's compute multiples, and old comparisons.json."""
import os

import ml_collections
import numpy as np
import pytest

from jaxbud import report
from jaxbud import stats

N = 2000


def _row(tmp_path, name, arm, family, budget, errors, seed, **extra):
  """A row whose runs are wrong on a random `errors[j]` share of N images (run j)."""
  rng = np.random.default_rng(seed)
  labels = np.zeros(N, np.int32)
  runs = []
  for j, e in enumerate(errors):
    d = tmp_path / name / f'run{j}'
    os.makedirs(d)
    stats.save_predictions(d / 'predictions.npz', (rng.random(N) < e).astype(np.int32), labels)
    runs.append(str(d))
  row = {'arm': arm, 'family': family, 'budget': budget, 'params': budget, 'runs': runs,
         'test_error': float(np.mean(errors)), 'schedule': 1.0, 'same_run_as': None,
         'train_seconds': 1.0}
  row.update(extra)
  return row


def _latency(times):
  return {str(b): {'median_s': float(np.median(t)), 'times_s': list(t)}
          for b, t in zip((1, 8), times)}


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('report')
  fast, slow = np.linspace(1.0, 1.2, 10), np.linspace(2.0, 2.2, 10)
  rows = [
      _row(tmp, 'base', 'base', 'base', None, [0.05, 0.055], 0, train_macs=100.0),
      _row(tmp, 'p1000', 'pruned', 'fisher', 1000, [0.12, 0.125], 1, train_macs=120.0,
           prune_train_macs=20.0, latency=_latency((slow, slow))),
      _row(tmp, 'p500', 'pruned', 'fisher', 500, [0.15, 0.155], 2, train_macs=130.0,
           latency=_latency((slow, slow))),  # no prune_train_macs: train_macs - base's
      _row(tmp, 'r1000', 'reduced', 'wrn_width', 1000, [0.02, 0.022, 0.018], 3,
           train_macs=40.0, latency=_latency((fast, slow))),
      _row(tmp, 'r500', 'reduced', 'wrn_width', 500, [0.15, 0.152, 0.149], 4, train_macs=25.0,
           latency=_latency((slow, fast))),
      _row(tmp, 's1000', 'scratch', 'fisher', 1000, [0.12, 0.121, 0.118], 5, train_macs=40.0),
      _row(tmp, 'c500', 'copycat', 'fisher', 500, [0.149, 0.15, 0.151], 6, train_macs=25.0),
  ]
  # The copycat at the profile's budget is the Scratch-E run.
  rows.append({**rows[5], 'arm': 'copycat', 'same_run_as': 'scratch fisher budget1000'})
  config = ml_collections.ConfigDict({'study': {'main_criterion': 'fisher',
                                                'latency_batch_sizes': (1, 8)}})
  return rows, report.comparisons(rows, config)


def _of(comps, rq):
  return [c for c in comps if c['rq'] == rq]


def test_pools_count_shared_runs_once():
  errors = {'r': [0.1, 0.2, 0.3], 'same': [0.1, 0.2, 0.3], 'p1': [0.1, 0.3], 'p2': [0.2, 0.2]}
  wrong = lambda r: np.array(errors[r['name']])[:, None] * np.ones((1, 4))
  rows = [{'name': 'r', 'arm': 'reduced', 'family': 'w'},
          {'name': 'same', 'arm': 'copycat', 'family': 'fisher', 'same_run_as': 'scratch'},
          {'name': 'p1', 'arm': 'pruned', 'family': 'fisher'},
          {'name': 'p2', 'arm': 'pruned', 'family': 'fisher'},
          {'name': 'p1', 'arm': 'pruned', 'family': 'l1'}]
  pools = report.run_pools(rows, 'fisher', wrong)
  assert pools['from scratch'] == pytest.approx((0.01, 2))  # the reused runs not again
  assert pools['pruned'] == pytest.approx((0.01, 1))  # snapshots of the same 2 runs: 1 df


def test_paired_comparisons_use_the_pools_and_holm(study):
  rows, comps = study
  assert [len(_of(comps, rq)) for rq in ('RQ1', 'RQ2', 'RQ3', 'RQ4', 'RQ5')] == [2, 1, 4, 3, 2]
  # RQ4: the copycat at the profile's budget meets the reduced network, not the pruned one
  # again (that is RQ2's Scratch-E line).
  assert {(c['budget'], c['b'].split(' (')[0]) for c in _of(comps, 'RQ4')} == {
      (1000, 'reduced wrn_width'), (500, 'fisher-pruned'), (500, 'reduced wrn_width')}
  for rq in ('RQ1', 'RQ2', 'RQ4'):
    mine = _of(comps, rq)
    np.testing.assert_allclose([c['p_holm'] for c in mine], stats.holm([c['p'] for c in mine]))
    for c in mine:
      assert c['pooled_a'] and c['pooled_b'] and c['images'] == N
      assert c['lo'] <= c['diff'] <= c['hi']
      assert c['holm_verdict'] == (c['verdict'] if c['p_holm'] < 0.05 else 'inconclusive')
  (r1000, r500) = sorted(_of(comps, 'RQ1'), key=lambda c: -c['budget'])
  assert r1000['verdict'] == r1000['holm_verdict'] == 'supported'  # 2% vs 12% of 2,000
  assert r500['verdict'] == 'inconclusive'
  headline, lines = report.answer(comps)['RQ1']
  assert headline.endswith("supported in 1, inconclusive in 1 of 2 after Holm's correction "
                           '(family-wise 5%).')
  assert lines[1].endswith('**supported**, survives Holm') and 'Holm-adjusted' in lines[1]


def test_latency_is_a_mann_whitney_test(study):
  _, comps = study
  got = {(c['budget'], c['batch']): c['verdict'] for c in _of(comps, 'RQ3')}
  # 10 calls each, wholly apart: p = 0.00018 each, 0.00073 after Holm over four.
  assert got == {(1000, 1): 'supported', (1000, 8): 'inconclusive',
                 (500, 1): 'inconclusive', (500, 8): 'supported'}
  for c in _of(comps, 'RQ3'):
    same = c['verdict'] == 'inconclusive'
    assert c['p'] == pytest.approx(1.0 if same else 1.8e-4, rel=0.05)
  stable = report.answer(comps, timings=False)['RQ3'][1]  # budget order: 500, 1,000
  assert stable[2] == ('budget 1,000: reduced wrn_width (1,000 params) vs fisher-pruned (1,000 '
                       'params): batch 1: **supported**, survives Holm')


def test_rq5_gives_compute_multiples_not_a_verdict(study):
  _, comps = study
  c1000, c500 = sorted(_of(comps, 'RQ5'), key=lambda c: -c['budget'])
  assert (c1000['multiple'], c1000['prune_multiple']) == pytest.approx((3.0, 0.5))
  # Without prune_train_macs the prune run is the pruned row's cost less the bases' mean.
  assert (c500['multiple'], c500['prune_multiple']) == pytest.approx((5.2, 1.2))
  assert 'verdict' not in c1000
  headline, lines = report.answer(comps)['RQ5']
  assert 'trains 3.00x to 5.20x the compute' in headline
  assert 'the prune run alone 0.50x to 1.20x' in headline and 'no verdict' in headline
  assert '**' not in ''.join(lines)


def test_answer_reads_comparisons_without_holm():
  """Older comparisons.json (an unadjusted verdict per line) still render, unadjusted."""
  old = [{'rq': 'RQ1', 'budget': 90000, 'a': 'a', 'b': 'b', 'verdict': 'supported',
          'text': 'difference -1.00%'},
         {'rq': 'RQ1', 'budget': 60000, 'a': 'a', 'b': 'b', 'verdict': 'inconclusive',
          'text': 'difference +0.10%'}]
  headline, lines = report.answer(old)['RQ1']
  assert headline.endswith(': supported in 1, inconclusive in 1 of 2.')
  assert lines[0] == 'budget 90,000: a vs b: difference -1.00%: **supported**'
  assert report.answer(old)['RQ2'][0].endswith('not measured in this run.')


def test_a_verdict_that_does_not_survive_holm_is_said_so():
  comps = [{'rq': 'RQ2', 'budget': 1, 'a': 'a', 'b': 'b', 'verdict': 'supported',
            'holm_verdict': 'inconclusive', 'text': 't'},
           {'rq': 'RQ2', 'budget': 2, 'a': 'a', 'b': 'b', 'verdict': 'inconclusive',
            'holm_verdict': 'inconclusive', 'text': 't'}]
  headline, lines = report.answer(comps)['RQ2']
  assert "inconclusive in 2 of 2 after Holm's" in headline
  assert lines == ['budget 1: a vs b: t: **supported**, not after Holm',
                   'budget 2: a vs b: t: **inconclusive**']


def test_the_base_is_set_beside_a_published_figure():
  base = {'test_error': 0.1021, 'test_error_std': 0.0012, 'seeds': 5}
  scfg = ml_collections.ConfigDict({'reference_error': 4.1, 'reference': 'WRN-28-10, Zalando'})
  line = report.reference_line(base, scfg)
  assert line == ('Base networks: 10.21% test error (mean of 5, sample sd 0.12). Published for '
                  'a network of its kind: 4.10% (WRN-28-10, Zalando); this study\'s network and '
                  'schedule leave it +6.11 points from that.')
  scfg.reference_error = 0.0  # no figure given: the base's own error only
  assert report.reference_line(base, scfg) == (
      'Base networks: 10.21% test error (mean of 5, sample sd 0.12).')


def test_other_criteria_are_compared_with_the_main_one_at_each_budget(tmp_path):
  """Each other criterion's pruned network against the main criterion's at the same budget,
  with its own run-to-run pool, Holm over the section, and its own headline."""
  rows = [
      _row(tmp_path, 'f1000', 'pruned', 'fisher', 1000, [0.10, 0.102], 0, train_macs=1.0),
      _row(tmp_path, 'f500', 'pruned', 'fisher', 500, [0.12, 0.121], 1, train_macs=1.0),
      _row(tmp_path, 'l1000', 'pruned', 'l1', 1000, [0.30, 0.35], 2, train_macs=1.0),
      _row(tmp_path, 'l500', 'pruned', 'l1', 500, [0.121, 0.122], 3, train_macs=1.0),
      _row(tmp_path, 'r250', 'pruned', 'random', 250, [0.5, 0.5], 4, train_macs=1.0),
  ]
  config = ml_collections.ConfigDict({'study': {'main_criterion': 'fisher',
                                                'latency_batch_sizes': (1, 8)}})
  comps = [c for c in report.comparisons(rows, config) if c['rq'] == report.CRITERIA]
  assert [(c['budget'], c['a'].split(' ')[0]) for c in comps] == [(1000, 'l1-pruned'),
                                                                  (500, 'l1-pruned')]
  assert comps[0]['verdict'] == stats.CONTRADICTED and 'p_holm' in comps[0]
  assert comps[0]['pooled_a'] and comps[0]['pooled_b']  # each side its own criterion's pool
  pools = report.run_pools(rows, 'fisher')
  assert pools['pruned/l1'].var > 2 * pools['pruned/fisher'].var  # l1's runs spread more
  headline, lines = report.answer(report.comparisons(rows, config))[report.CRITERIA]
  assert headline.startswith(report.CRITERIA_QUESTION) and len(lines) == 2
  assert 'Criteria' not in report.answer([])  # a study with one criterion has no section
  config.prune = ml_collections.ConfigDict({'budget_unit': 'macs'})
  _, lines = report.answer(report.comparisons(rows, config))[report.CRITERIA]
  assert lines[0].startswith('budget 1,000 MACs: l1-pruned')  # MACs budgets say so


def test_plots_put_the_budget_unit_on_the_x_axis(tmp_path):
  """With MACs budgets the error and latency plots are drawn against MACs (rows and trajectory
  points keyed by 'macs'; a row without it could not be placed)."""
  rows = [{'arm': 'pruned', 'family': 'fisher', 'macs': m, 'test_error': e,
           'test_error_std': 0.001, 'latency_b1_s': 1e-3, 'large_batch': 8}
          for m, e in ((1_000_000, 0.1), (500_000, 0.12))]
  trajs = {'fisher': [[{'macs': 2_000_000, 'test_error': 0.09}, {'macs': 500_000,
                                                                  'test_error': 0.12}]]}
  report._plot_error(rows, trajs, str(tmp_path / 'e.png'), 'macs')
  report._plot_latency(rows, str(tmp_path / 'l.png'), 'macs')
  assert (tmp_path / 'e.png').stat().st_size > 1000 and (tmp_path / 'l.png').stat().st_size > 1000
  with pytest.raises(KeyError, match='params'):
    report._plot_error(rows, trajs, str(tmp_path / 'p.png'))
