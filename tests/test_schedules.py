"""Schedules as plain functions: a round rule's choice, one-shot cuts to a budget in params or
MACs, Li et al.'s per-layer ratio. Runs of each schedule are in tests/test_prune_run.py."""
import ml_collections
import numpy as np
import pytest

from jaxbud import prune
from jaxbud import schedules
from jaxbud import spec as spec_lib

SPEC = spec_lib.wrn(16, 1.0, 1)


def scores(seed=0, spec=SPEC):
  rng = np.random.default_rng(seed)
  return {n: rng.random(w) for n, w in zip(spec.prunable_names, spec.prunable)}


def options(**kw):
  return ml_collections.ConfigDict({**dict(channels_per_round=1, per_layer_ratio=0.0), **kw})


def widths_after(spec, cut):
  gone = {n: 0 for n in spec.prunable_names}
  for name, _, _ in cut:
    gone[name] += 1
  return [w - gone[n] for n, w in zip(spec.prunable_names, spec.prunable)]


@pytest.mark.parametrize('unit', ['params', 'macs'])
def test_one_shot_cut_is_the_shortest_global_prefix_that_meets_the_budget(unit):
  size = spec_lib.Size(unit, 10, 8)
  s = scores()
  base = size(SPEC)
  for budget in (base - 1, int(base * 0.7), int(base * 0.4), size.floor(SPEC)):
    cut = schedules.cut(SPEC, s, budget, size)
    ranked = prune.rank(SPEC, s)
    assert cut == ranked[:len(cut)]
    assert size(SPEC.with_prunable(widths_after(SPEC, cut))) <= budget
    # one channel fewer would not meet it
    assert size(SPEC.with_prunable(widths_after(SPEC, cut[:-1]))) > budget


def test_macs_and_params_budgets_cut_differently():
  """A MACs budget favours the wide early layers' channels (14x14 feature maps cost more)."""
  s = {n: np.ones(w) for n, w in zip(SPEC.prunable_names, SPEC.prunable)}  # ties: layer order
  s[SPEC.prunable_names[-1]] = np.zeros(SPEC.prunable[-1])
  p, m = spec_lib.Size('params', 10, 14), spec_lib.Size('macs', 10, 14)
  by_params = schedules.cut(SPEC, s, int(0.8 * p(SPEC)), p)
  by_macs = schedules.cut(SPEC, s, int(0.8 * m(SPEC)), m)
  assert len(by_params) != len(by_macs)
  assert m(SPEC.with_prunable(widths_after(SPEC, by_macs))) <= int(0.8 * m(SPEC))


@pytest.mark.parametrize('ratio', [0.1, 0.25])
def test_per_layer_ratio_cuts_each_layer_by_the_same_fraction_its_lowest_first(ratio):
  size = spec_lib.Size('params', 10)
  s = scores(1)
  budget = int(0.6 * size(SPEC))
  cut = schedules.cut(SPEC, s, budget, size, per_layer_ratio=ratio)
  widths = widths_after(SPEC, cut)
  k = next(k for k in range(1, 100)
           if size(SPEC.with_prunable(schedules.ratio_widths(SPEC.prunable, k * ratio)))
           <= budget)
  assert widths == [w - round(k * ratio * w) for w in SPEC.prunable]
  for name in SPEC.prunable_names:  # within a layer, its lowest scores go
    mine = sorted(c for n, c, _ in cut if n == name)
    assert mine == sorted(np.argsort(s[name], kind='stable')[:len(mine)].tolist())


def test_iterative_rule_removes_k_a_round_or_tracks_the_ratio():
  alive = {n: np.ones(w, bool) for n, w in zip(SPEC.prunable_names, SPEC.prunable)}
  ranked = prune.rank(SPEC, scores(2), alive)
  base = dict(zip(SPEC.prunable_names, SPEC.prunable))
  rule = schedules.get('iterative')
  assert rule(schedules.Round(0, SPEC, ranked, alive, base, options())) == ranked[:1]
  assert rule(schedules.Round(0, SPEC, ranked, alive, base,
                              options(channels_per_round=5))) == ranked[:5]
  # per-layer ratio 0.2, round 2: every layer down to w - round(0.6 w), whatever it lost so far
  for name in SPEC.prunable_names[:2]:
    alive[name][:3] = False
  ranked = prune.rank(SPEC, scores(2), alive)
  chosen = rule(schedules.Round(2, SPEC, ranked, alive, base, options(per_layer_ratio=0.2)))
  for name, w in base.items():
    n = sum(1 for r in chosen if r[0] == name)
    assert int(alive[name].sum()) - n == w - round(0.6 * w)


def test_schedule_fields_are_checked():
  good = dict(schedule='iterative', per_layer_ratio=0.0, channels_per_round=1,
              finetune_epochs=1.0, budget_unit='params')
  schedules.check_section(ml_collections.ConfigDict(good))
  for bad, message in ((dict(schedule='greedy'), "unknown prune.schedule 'greedy'"),
                       (dict(per_layer_ratio=1.0), r'per_layer_ratio must be in \[0, 1\)'),
                       (dict(per_layer_ratio=0.1, channels_per_round=2), 'both set'),
                       (dict(schedule='one_shot', finetune_epochs=0.0), 'finetune_epochs'),
                       (dict(budget_unit='flops'), "unknown prune.budget_unit 'flops'")):
    with pytest.raises(ValueError, match=message):
      schedules.check_section(ml_collections.ConfigDict({**good, **bad}))


def test_a_registered_round_rule_is_a_schedule():
  @schedules.register('every_other_layer_test')
  def rule(r):
    return [row for row in r.ranked if row[0] == r.spec.prunable_names[r.index % 2]][:1]

  assert 'every_other_layer_test' in schedules.names()
  alive = {n: np.ones(w, bool) for n, w in zip(SPEC.prunable_names, SPEC.prunable)}
  ranked = prune.rank(SPEC, scores(3), alive)
  (row,) = schedules.get('every_other_layer_test')(
      schedules.Round(1, SPEC, ranked, alive, {}, options()))
  assert row[0] == SPEC.prunable_names[1]
  with pytest.raises(ValueError, match='built-in'):
    schedules.register('one_shot')
