"""The study: its protocol (Scratch-B, copycat reuse, depth family at its own size, costs per
budget), the paired verdicts in the report, re-runs, and the plan printed before (dry run)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import optax
import pytest

from configs import study_digits
from jaxbud import bench
from jaxbud import spec as spec_lib
from jaxbud import stats
from jaxbud import study
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRN_10_1 = 77_562


def tiny_study_config():
  c = study_digits.get_config()
  c.model.update(depth=16, widen=1.0)  # WRN-16-1 (174,778 params); WRN-10-1 is its depth family
  c.train.update(epochs=2, milestones=(1,), eval_every_epochs=2, checkpoint_every_epochs=2)
  c.prune.update(prune_every=2, compact_every=64, log_every_rounds=50, eval_every_rounds=40)
  # Two reduced families (depth, width); the bottleneck family trains the same way and is
  # planned in test_cifar_study_dry_run_needs_no_data.
  # Two prune seeds (two base networks, two prune runs) and one from-scratch seed.
  c.study.update(criteria=('fisher',), budgets=(90_000,), copycat_budget=90_000, seeds=(0,),
                 prune_seeds=(0, 1),
                 reduced=('wrn_depth', 'wrn_width'),
                 depths=(10,), latency_batch_sizes=(1, 8), latency_repeats=2)
  return c


def test_scale_schedule_stretches_epochs_and_milestones():
  c = study_digits.get_config()
  c.train.update(epochs=200, milestones=(60, 120, 160))
  s = train.scale_schedule(c.train, 2.0)
  assert s.epochs == 400 and s.milestones == (120, 240, 320) and c.train.epochs == 200
  c.train.update(epochs=10, milestones=(5, 8))
  s = train.scale_schedule(c.train, 1.3)
  assert s.epochs == 13 and s.milestones == pytest.approx((6.5, 10.4))
  # The lr drops where the stretched schedule says: step 65 and 104 at 10 steps an epoch.
  tx = train.make_optimizer(s, steps_per_epoch=10)
  lrs = []
  state = tx.init({'w': np.zeros(())})
  for _ in range(110):
    updates, state = tx.update({'w': np.ones(())}, state, {'w': np.zeros(())})
    lrs.append(-float(updates['w']))
  drops = [i for i in range(1, 110) if lrs[i] < 0.5 * lrs[i - 1]]
  assert drops == [65, 104]
  assert isinstance(tx, optax.GradientTransformation)


def test_scratch_b_factor_is_the_macs_ratio_capped_only_when_asked():
  assert study.scratch_b_factor(1000, 800) == 1.25 and study.scratch_b_factor(1000, 100) == 10.0
  assert study.scratch_b_factor(1000, 100, cap=2.0) == 2.0  # Liu et al.'s ImageNet code
  assert study.scratch_b_factor(1000, 800, cap=2.0) == 1.25


def test_closest_and_copycat_hit_the_budget():
  base = spec_lib.wrn(16, 2)
  s = study.closest(lambda k: spec_lib.wrn(16, k), 400_000, 1 / 16, 2.0, 10)
  assert abs(spec_lib.count_params(s, 10) - 400_000) < 0.05 * 400_000
  profile = base.with_prunable((5, 0, 40, 10, 100, 3))
  cc = study.copycat_spec(profile, 300_000, 10)
  # The largest copycat within the budget: never larger than the pruned network it meets.
  assert 0.97 * 300_000 < spec_lib.count_params(cc, 10) <= 300_000
  assert cc.prunable[1] >= 1  # the copycat rule max(1, round(s * w)) revives empty blocks
  assert cc.prunable[4] > cc.prunable[3] > cc.prunable[0]  # the profile's shape is kept
  assert study.wider_than_base(study.copycat_spec(profile, 1_000_000, 10), base)
  assert not study.wider_than_base(profile, base)
  # A shallower network meets the base's layers at the same relative depth: WRN-10-2 is not
  # wider than WRN-16-2, WRN-10-4 is.
  assert not study.wider_than_base(spec_lib.wrn(10, 2), base)
  assert study.wider_than_base(spec_lib.wrn(10, 4), base)


def test_bad_study_settings_are_clear_errors():
  c = tiny_study_config()
  c.study.update(budgets=(10_000_000,), copycat_budget=10_000_000)
  with pytest.raises(ValueError, match=r'study.budgets entry 10000000 must be in \['):
    study.Study(c, '/nonexistent/never/written')
  c = tiny_study_config()
  c.study.reduced = ('densenet_growth',)
  with pytest.raises(ValueError, match="does not fit the base wrn"):
    study.Study(c, '/nonexistent/never/written')
  c = tiny_study_config()
  c.study.seeds = (0, 0)
  with pytest.raises(ValueError, match='study.seeds has repeats'):
    study.plan(c)
  c = tiny_study_config()
  c.study.latency_batch_sizes = (1,)
  with pytest.raises(ValueError, match=r'latency_batch_sizes must be two batch sizes'):
    study.plan(c)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('study')
  c = tiny_study_config()
  out = study.run_study(c, str(workdir))
  return c, workdir, out


def _rows(out, arm, family=None):
  return [r for r in out['rows'] if r['arm'] == arm and (family is None or r['family'] == family)]


def test_tiny_study_writes_every_output(tiny):
  _, workdir, out = tiny
  for name in ('report.md', 'results.json', 'results.csv', 'comparisons.json', 'plan.txt',
               'error_vs_params.png', 'latency_vs_params.png', 'width_profiles.png'):
    assert (workdir / name).stat().st_size > 0, name
  rows = list(csv.DictReader(open(workdir / 'results.csv')))
  assert {(r['arm'], r['family']) for r in rows} == {
      ('base', 'base'), ('pruned', 'fisher'), ('scratch', 'fisher'), ('scratch_b', 'fisher'),
      ('copycat', 'fisher'), ('reduced', 'wrn_depth'), ('reduced', 'wrn_width')}
  for r in out['rows']:
    assert 0 <= r['test_error'] <= 1
    # Latency is measured for the networks RQ3 compares, and the base.
    timed = r['arm'] in ('base', 'reduced') or r['arm'] == 'pruned'
    assert (r.get('latency_b1_s', 0) > 0) == timed, r
    for d in r['runs']:  # every evaluated model left its per-example predictions
      preds, labels = stats.load_predictions(os.path.join(d, 'predictions.npz'))
      assert len(preds) == len(labels) == 360


def test_depth_family_meets_a_pruned_network_of_its_own_size(tiny):
  _, _, out = tiny
  (depth,) = _rows(out, 'reduced', 'wrn_depth')
  assert depth['params'] == depth['budget'] == WRN_10_1
  (width,) = _rows(out, 'reduced', 'wrn_width')
  pruned = {r['budget']: r for r in _rows(out, 'pruned')}
  # A snapshot at each reduced network's own size: the width network's (a step above 90,000)
  # and the depth network's; the study's own budget for the scratch and copycat arms.
  assert width['budget'] == 90_000 and width['match'] == width['params'] == 90_838
  assert set(pruned) == {90_000, WRN_10_1, 90_838}
  for r in (depth, width):
    p = pruned[r['match']]
    assert r['params'] - 1200 < p['params'] <= r['params']  # within one channel below
    assert len(p['runs']) == 2 and p['seed_ids'] == [0, 1]  # one snapshot per prune seed
  rq1 = [c for c in out['comparisons'] if c['rq'] == 'RQ1']
  assert sorted(c['b'] for c in rq1) == sorted(
      f'fisher-pruned ({pruned[m]["params"]:,} params)' for m in (WRN_10_1, 90_838))
  assert {c['rq'] for c in out['comparisons'] if c['budget'] == WRN_10_1} == {
      'RQ1', 'RQ3', 'RQ5'}


def test_no_same_size_pair_has_a_larger_from_scratch_side():
  rows = [{'arm': 'pruned', 'family': 'fisher', 'budget': 1000, 'params': 1000},
          {'arm': 'reduced', 'family': 'wrn_width', 'label': 'budget1000', 'match': 1000,
           'params': 1020},
          {'arm': 'copycat', 'family': 'fisher', 'label': 'budget1000', 'match': 1000,
           'params': 990}]
  study.check_matched(rows, 'fisher')  # 2% larger at most
  rows[1]['params'] = 1021
  with pytest.raises(AssertionError, match=r'reduced wrn_width budget1000 \(1,021 params\) is '
                                           r'more than 2% larger than the pruned network'):
    study.check_matched(rows, 'fisher')


def test_copycat_at_the_profile_budget_reuses_the_scratch_run(tiny):
  _, workdir, out = tiny
  (scratch,) = _rows(out, 'scratch')
  (copycat,) = _rows(out, 'copycat')
  assert copycat['spec'] == scratch['spec'] and copycat['runs'] == scratch['runs']
  assert copycat['same_run_as'] == 'scratch fisher budget90000'
  assert not (workdir / 'arms' / 'copycat').exists()  # never trained twice
  assert 'same runs as scratch fisher budget90000' in open(workdir / 'report.md').read()


def test_scratch_b_trains_the_stretched_schedule(tiny):
  _, _, out = tiny
  (sb,) = _rows(out, 'scratch_b')
  (pruned,) = [r for r in _rows(out, 'pruned') if r['budget'] == 90_000]
  base = _rows(out, 'base')[0]
  # Seed 0 trains the architecture of prune seed 0 (the row's first snapshot).
  snap = json.load(open(os.path.join(pruned['runs'][0], 'result.json')))
  factor = min(base['macs'] / snap['macs'], 2.0)  # study_digits caps at 2
  cfg = json.load(open(os.path.join(sb['runs'][0], 'config.json')))
  # Whole epochs: 2 x factor rounded; the milestone (epoch 1) moves with them.
  assert cfg['train']['epochs'] == round(2 * factor) == 3
  assert sb['schedule'] == 1.5 and cfg['train']['milestones'] == pytest.approx([1.5])
  assert sb['same_run_as'] is None and sb['runs'] != _rows(out, 'scratch')[0]['runs']
  rq2 = [c['a'] for c in out['comparisons'] if c['rq'] == 'RQ2']
  assert len(rq2) == 2 and 'Scratch-E' in rq2[0] and 'Scratch-B, x1.50' in rq2[1]


def test_each_budget_is_charged_its_own_prune_cost(tiny):
  _, workdir, out = tiny
  bases = [json.load(open(workdir / 'base' / f'seed{s}' / 'final.json')) for s in (0, 1)]
  snaps = [{s['budget']: s for s in json.load(open(
      workdir / 'prune_fisher' / f'seed{seed}' / 'summary.json'))['snapshots']} for seed in (0, 1)]
  for r in _rows(out, 'pruned'):
    # The mean over the prune seeds of (its base's training + its prune run to the snapshot).
    per_run = [b['train_macs'] + s[r['budget']]['prune_train_macs'] for b, s in zip(bases, snaps)]
    assert r['train_macs'] == pytest.approx(sum(per_run) / 2)
    assert r['prune_train_macs'] == pytest.approx(
        sum(s[r['budget']]['prune_train_macs'] for s in snaps) / 2)
  costs = sorted((r['params'], r['train_macs']) for r in _rows(out, 'pruned'))
  assert costs[0][1] > costs[-1][1]  # the smallest snapshot took the most pruning
  rq5 = [c for c in out['comparisons'] if c['rq'] == 'RQ5']
  assert len(rq5) == 2
  for c in rq5:  # numbers, not a verdict: both multiples of the reduced network's compute
    assert 'verdict' not in c and c['multiple'] == pytest.approx(c['b_macs'] / c['a_macs'])
    assert c['prune_multiple'] == pytest.approx(c['prune_macs'] / c['a_macs'])
    assert c['multiple'] > c['prune_multiple'] > 0


def test_report_states_interval_verdict_and_evidence_for_every_comparison(tiny):
  _, workdir, out = tiny
  paired = [c for c in out['comparisons'] if c['rq'] in ('RQ1', 'RQ2', 'RQ4')]
  assert {c['runs_b'] for c in paired if c['b'].startswith('fisher-pruned')} == {2}
  assert paired
  for c in paired:
    assert c['lo'] <= c['diff'] <= c['hi'] and c['images'] == 360
    assert c['verdict'] == ('supported' if c['hi'] < 0 else
                            'contradicted' if c['lo'] > 0 else 'inconclusive')
    assert c['diff'] == pytest.approx(c['error_a'] - c['error_b'], abs=1e-6)
  report = open(workdir / 'report.md').read()
  # The platform, down to the CPU model: another CPU kind rounds differently.
  assert f'Machine: {bench.platform_name()}; jax ' in report
  for rq in ('RQ1', 'RQ2', 'RQ3', 'RQ4', 'RQ5'):
    assert f'**{rq}.**' in report
  assert report.count('(360 test images; 1 vs 2 runs)') == sum(
      c['b'].startswith('fisher-pruned') for c in paired)
  for c in out['comparisons']:
    if c['rq'] != 'RQ5':
      assert f'**{c["verdict"]}**' in report


def test_rerun_reuses_every_finished_run(tiny):
  c, workdir, _ = tiny
  finals = sorted(str(p) for p in workdir.rglob('final.json')) + \
      [str(workdir / 'prune_fisher' / f'seed{s}' / 'summary.json') for s in (0, 1)]
  stamps = {p: os.stat(p).st_mtime_ns for p in finals}
  study.run_study(c, str(workdir))
  assert {p: os.stat(p).st_mtime_ns for p in finals} == stamps


def test_a_run_made_under_other_settings_is_never_reused(tiny, tmp_path):
  c, workdir, _ = tiny
  # Another training setting: the base networks' fingerprints differ; nothing is written.
  c2 = tiny_study_config()
  c2.train.lr = 0.05
  before = {p: os.stat(p).st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  with pytest.raises(ValueError, match=r'base/seed0 holds a run made with other settings '
                                       r'\(train.lr differ\)'):
    study.Study(c2, str(workdir)).run_all()
  # A budget added after the prune runs finished: a clear message, not a silent skip.
  c3 = tiny_study_config()
  c3.study.budgets = (100_000, 90_000)
  with pytest.raises(ValueError, match=r'prune_fisher/seed0 has no snapshot at budget\(s\) '
                                       r'100,000'):
    study.Study(c3, str(workdir)).run_all()
  after = {p: os.stat(p).st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  assert {p: t for p, t in after.items() if p in before} == before
  # A folder with a finished run and no fingerprint (an older jaxbud) is not trusted either.
  old = tmp_path / 'old'
  old.mkdir()
  (old / 'final.json').write_text('{}')
  with pytest.raises(ValueError, match='holds a run without a fingerprint'):
    study.check_fingerprint(str(old), {'kind': 'train'}, 'final.json')


def test_the_dry_run_checks_the_prune_section_before_anything_trains(tmp_path):
  c = tiny_study_config()
  c.study.dry_run = True
  c.prune.prune_every = 0
  with pytest.raises(ValueError, match='prune.prune_every must be >= 1, got 0'):
    study.run_study(c, str(tmp_path / 'never'))
  c.prune.prune_every = 2
  c.prune.rounds = 500
  with pytest.raises(ValueError, match='prune.rounds=500 removes more channels than the 224'):
    study.run_study(c, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
  c = tiny_study_config()
  c.study.dry_run = True
  lines = []
  out = study.run_study(c, str(tmp_path / 'never'), log=lines.append)
  assert not (tmp_path / 'never').exists()
  assert out['step_seconds'] > 0 and 'total' in out['text'] and lines == [
      f'study plan (digits, wrn):\n{out["text"]}']
  whats = [r['what'] for r in out['plan']]
  assert whats[:2] == ['base network', 'prune-and-tune (fisher), about 128 rounds']
  assert 'copycat 90,000' not in whats  # the copycat at the profile's budget is the scratch run


def test_cifar_study_dry_run_needs_no_data(tmp_path):
  r = subprocess.run(
      [sys.executable, '-m', 'launch.study', '--config=configs/study_wrn_40_2_cifar10.py',
       f'--workdir={tmp_path}/never', '--config.study.dry_run=True',
       f'--config.data.data_dir={tmp_path}/no_data', '--config.model.depth=16',
       '--config.model.widen=1', '--config.study.depths=(10,)', '--config.train.batch_size=8',
       '--config.study.budgets=(100000,60000)', '--config.study.copycat_budget=60000',
       '--config.prune.rounds=200'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'reduced wrn_depth depth10' in r.stdout and 'prune-and-tune (l1)' in r.stdout
  assert 'reduced wrn_bottleneck budget60000' in r.stdout
  assert 'estimate from a measured base train step' in r.stdout
  assert not (tmp_path / 'never').exists() and not (tmp_path / 'no_data').exists()


def test_fields_added_later_leave_fingerprints_alone_at_their_neutral_value():
  """Runs made before train.bn_l1, prune.normalise and prune.channels_per_round existed keep
  their fingerprints while those fields are at the value that changes nothing."""
  c = tiny_study_config()
  spec = spec_lib.wrn(16, 1, in_channels=1)
  assert 'bn_l1' not in study.train_facts(c, spec)['train']
  assert not {'normalise', 'channels_per_round'} & set(study.prune_facts(c, 'fp')['prune'])
  later = {'normalise', 'channels_per_round', 'schedule', 'finetune_epochs', 'per_layer_ratio',
           'budget_unit'}
  assert not later & set(study.prune_facts(c, 'fp')['prune'])
  c.train.bn_l1 = 1e-4
  c.prune.update(normalise='l2', channels_per_round=2, schedule='one_shot', budget_unit='macs')
  assert study.train_facts(c, spec)['train']['bn_l1'] == 1e-4
  facts = study.prune_facts(c, 'fp')['prune']
  assert facts['channels_per_round'] == 2 and facts['schedule'] == 'one_shot'
  assert facts['budget_unit'] == 'macs'


def test_macs_budgets_match_every_arm_in_macs():
  """With prune.budget_unit='macs' the reduced networks and copycats are sized, and matched to
  pruned snapshots, by their MACs."""
  c = tiny_study_config()
  c.prune.budget_unit = 'macs'
  c.study.update(budgets=(1_000_000,), copycat_budget=1_000_000)
  size = study.study_size(c, 10, 8)
  base = spec_lib.wrn(16, 1, in_channels=1)
  study.validate(c, base, size)
  points = {p.family: p for p in study.all_reduced(c, base, size)}
  width = points['wrn_width']
  assert width.match == spec_lib.count_macs(width.spec, 8, 10)
  assert abs(width.match - 1_000_000) < 0.1 * 1_000_000
  depth = points['wrn_depth']  # WRN-10-1 at its own MACs
  assert depth.budget == spec_lib.count_macs(spec_lib.wrn(10, 1, in_channels=1), 8, 10) == 763_520
  assert study.main_budgets(c, base, size) == [1_000_000, width.match, 763_520]
  profile = base.with_prunable((5, 2, 16, 10, 40, 3))
  cc = study.copycat_spec(profile, 1_000_000, size)
  assert 0.9 * 1_000_000 < spec_lib.count_macs(cc, 8, 10) <= 1_000_000
  c.study.update(budgets=(5_000_000,), copycat_budget=5_000_000)
  with pytest.raises(ValueError, match=r'study.budgets entry 5000000 must be in '
                                       r'\[26240, 1648256\): the base has 1648256 macs'):
    study.validate(c, base, size)


def test_the_plan_counts_one_shot_and_per_layer_rounds(tmp_path):
  c = tiny_study_config()
  c.study.dry_run = True
  c.prune.update(schedule='one_shot', finetune_epochs=1.0)
  out = study.run_study(c, str(tmp_path / 'never'), log=lambda _: None)
  # one scoring round, then 1 epoch (1,437 // 64 = 22 steps: 11 rounds of 2) for each of the
  # main criterion's 3 snapshots (90,000 and the two reduced networks' sizes)
  prune_row = out['plan'][1]
  assert prune_row['what'] == 'prune-and-tune (fisher), one-shot, 34 rounds'
  assert prune_row['steps'] == 34 * 2
  c.prune.update(schedule='iterative', per_layer_ratio=0.25, rounds=3)
  out = study.run_study(c, str(tmp_path / 'never'), log=lambda _: None)
  assert out['plan'][1]['what'] == 'prune-and-tune (fisher), about 3 rounds'
  assert not (tmp_path / 'never').exists()
