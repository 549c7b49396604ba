"""The study end to end: base, prune-and-tune, reduced families, pruned-from-scratch, copycats.

Every run has its own folder under the study's workdir and is skipped when its result file
exists (train: final.json, prune: summary.json); an unfinished run resumes from its checkpoint.
So re-running a study reuses what is done, and a killed study continues where it stopped.

  <workdir>/base/                      the trained base network
  <workdir>/prune_<criterion>/         prune-and-tune run, snapshots at the budgets
  <workdir>/arms/<arm>/<point>/seed<k>/  from-scratch runs (reduced, scratch, copycat, scratch_b)
  <workdir>/results.json|csv, report.md, *.png   (jaxbud.report)
"""
import copy
import dataclasses
import json
import os
import time

import jax

from jaxbud import data as data_lib
from jaxbud import metrics as metrics_lib
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train as train_lib
from jaxbud.errors import UsageError

REDUCED = ('wrn_depth', 'wrn_width', 'wrn_bottleneck',
           'densenet_depth', 'densenet_growth', 'densenet_bottleneck')


@dataclasses.dataclass(frozen=True)
class Point:
  """One network the study trains from scratch."""
  arm: str            # reduced | scratch | copycat | scratch_b
  family: str         # e.g. wrn_width, fisher (the criterion a scratch arm comes from)
  label: str          # folder name, unique within the arm
  spec: spec_lib.Spec
  budget: int | None = None
  epochs: int | None = None  # None: the config's schedule


def closest(make, budget: int, lo: float, hi: float, num_classes: int, iters: int = 50):
  """The spec make(s), s in [lo, hi], whose parameter count is nearest `budget`.

  Counts grow with s in steps (widths are integers), so bisect to the step that crosses the
  budget and keep the nearer of its two sides.
  """
  count = lambda s: spec_lib.count_params(make(s), num_classes)
  if count(hi) <= budget:
    return make(hi)
  if count(lo) >= budget:
    return make(lo)
  for _ in range(iters):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
  below, above = make(lo), make(hi)
  return min((below, above),
             key=lambda s: abs(spec_lib.count_params(s, num_classes) - budget))


def reduced_points(family: str, base: spec_lib.Spec, budgets, depths, num_classes,
                   base_widen: float = 1.0):
  """Reduced networks of one family: one per budget, or one per depth for depth families."""
  base_params = spec_lib.count_params(base, num_classes)
  c = base.in_channels
  points = []
  if family in ('wrn_depth', 'densenet_depth'):
    for d in depths:
      s = (spec_lib.wrn(d, base_widen, c) if family == 'wrn_depth'
           else spec_lib.densenet_bc(d, base.growth, c))
      if spec_lib.count_params(s, num_classes) < base_params:
        points.append(Point('reduced', family, f'depth{d}', s))
    return points
  for b in budgets:
    if family == 'wrn_width':
      s = closest(lambda k: spec_lib.wrn(base.depth, k, c), b, 1 / 16, base_widen, num_classes)
    elif family == 'densenet_growth':
      s = closest(lambda g: spec_lib.densenet_bc(base.depth, max(1, int(g)), c), b, 1,
                  base.growth, num_classes)
    elif family in ('wrn_bottleneck', 'densenet_bottleneck'):
      s = closest(lambda z: base.with_prunable(max(1, int(w * z)) for w in base.prunable),
                  b, 0.0, 1.0, num_classes)
    else:
      raise UsageError(f'unknown reduced family {family!r}; expected one of {REDUCED}')
    points.append(Point('reduced', family, f'budget{b}', s, b))
  return points


def copycat_spec(profile: spec_lib.Spec, budget: int, num_classes: int) -> spec_lib.Spec:
  """The profile's per-layer widths scaled by s (max(1, round(s * w))) to hit `budget`."""
  return closest(lambda s: spec_lib.scale_prunable(profile, s, 1, keep_zeros=False), budget,
                 0.0, 8.0, num_classes)


def _validate(config, base: spec_lib.Spec, num_classes: int):
  scfg = config.study
  base_params = spec_lib.count_params(base, num_classes)
  for f in scfg.reduced:
    if f not in REDUCED:
      raise UsageError(f'unknown study.reduced family {f!r}; expected some of {REDUCED}')
    if not f.startswith(base.family.split('_')[0]):
      raise UsageError(f'study.reduced family {f!r} does not fit the base {base.family}')
  if not scfg.budgets:
    raise UsageError('study.budgets is empty; give parameter counts below the base network')
  for b in scfg.budgets:
    if not 0 < b < base_params:
      raise UsageError(f'study.budgets entry {b} must be in (0, {base_params}), the base size')
  if scfg.main_criterion not in scfg.criteria:
    raise UsageError(f'study.main_criterion {scfg.main_criterion!r} must be one of '
                     f'study.criteria {tuple(scfg.criteria)}')
  if scfg.copycat_budget not in scfg.budgets:
    raise UsageError(f'study.copycat_budget {scfg.copycat_budget} must be one of study.budgets')
  if not scfg.seeds:
    raise UsageError('study.seeds is empty; give at least one seed, e.g. (0,)')


def _read(path):
  with open(path) as f:
    return json.load(f)


class Study:
  """Runs the arms of a study config in order, skipping finished runs."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir, self.scfg = config, workdir, config.study
    self.run = train_lib.setup(config)  # validates train/model/data, loads the data once
    self.dataset: data_lib.Dataset = self.run.dataset
    self.base_spec = self.run.spec
    self.nc = self.dataset.num_classes
    _validate(config, self.base_spec, self.nc)
    for crit in self.scfg.criteria:
      prune_tune.criteria.get(crit)
    self.results = []   # one dict per finished run (see _row)
    self._done = 0

  # -- runs -------------------------------------------------------------------------------
  def _train(self, spec, workdir, seed, epochs=None):
    final_path = os.path.join(workdir, 'final.json')
    if os.path.exists(final_path):
      return _read(final_path)
    cfg = copy.deepcopy(self.config)
    with cfg.unlocked():
      cfg.seed = seed
      if epochs is not None:
        cfg.train.epochs = epochs
      os.makedirs(workdir, exist_ok=True)
      spec_lib.save(spec, os.path.join(workdir, 'arm_spec.json'))
      cfg.model.spec_file = os.path.join(workdir, 'arm_spec.json')
    return train_lib.train_and_evaluate(cfg, workdir, train_lib.setup(cfg, self.dataset))

  def _prune(self, criterion):
    workdir = os.path.join(self.workdir, f'prune_{criterion}')
    path = os.path.join(workdir, 'summary.json')
    if os.path.exists(path):
      return _read(path)
    cfg = copy.deepcopy(self.config)
    with cfg.unlocked():
      cfg.prune.update(base_workdir=os.path.join(self.workdir, 'base'), criterion=criterion,
                       budgets=tuple(self.scfg.budgets), stop_after_last_budget=True)
    return prune_tune.prune_and_tune(cfg, workdir, self.dataset)

  def _progress(self, what):
    self._done += 1
    elapsed = time.perf_counter() - self._t0
    eta = elapsed / self._done * (self._total - self._done)
    metrics_lib.log(f'study [{self._done}/{self._total}] {what}  '
                    f'elapsed {metrics_lib.format_seconds(elapsed)}, '
                    f'ETA {metrics_lib.format_seconds(eta)}')

  def scratch_points(self, snapshots: dict) -> list[Point]:
    """Reduced, pruned-from-scratch, copycat (and Scratch-B) points, all trained from scratch."""
    scfg, points = self.scfg, []
    widen = self.config.model.get('widen', 1.0)
    for fam in scfg.reduced:
      points += reduced_points(fam, self.base_spec, scfg.budgets, scfg.depths, self.nc, widen)
    main = snapshots[scfg.main_criterion]
    base_macs = spec_lib.count_macs(self.base_spec, self.dataset.image_shape[0], self.nc)
    for s in main:
      spec = spec_lib.load(os.path.join(s['dir'], 'spec.json'))
      points.append(Point('scratch', scfg.main_criterion, f'budget{s["budget"]}', spec,
                          s['budget']))
      if scfg.scratch_b:
        # Liu et al.'s Scratch-B: the base network's compute budget, epochs scaled by MACs.
        epochs = int(round(self.config.train.epochs * min(base_macs / s['macs'], 2.0)))
        points.append(Point('scratch_b', scfg.main_criterion, f'budget{s["budget"]}', spec,
                            s['budget'], epochs))
    profile = next(s for s in main if s['budget'] == scfg.copycat_budget)
    profile_spec = spec_lib.load(os.path.join(profile['dir'], 'spec.json'))
    for b in scfg.budgets:
      points.append(Point('copycat', scfg.main_criterion, f'budget{b}',
                          copycat_spec(profile_spec, b, self.nc), b))
    return points

  def run_all(self) -> list[dict]:
    scfg = self.scfg
    n_prune = len(scfg.criteria)
    self._t0, self._total = time.perf_counter(), 1 + n_prune  # grows once points are known
    base_dir = os.path.join(self.workdir, 'base')
    metrics_lib.log(f'study: base {self.base_spec.family} '
                    f'({spec_lib.count_params(self.base_spec, self.nc):,} params), '
                    f'budgets {tuple(scfg.budgets)}, criteria {tuple(scfg.criteria)}, '
                    f'seeds {tuple(scfg.seeds)}')
    base = self._train(self.base_spec, base_dir, self.config.seed)
    self._progress('base network')
    self.results.append(self._row('base', 'base', self.base_spec, None, [base]))
    snapshots = {}
    for crit in scfg.criteria:
      summary = self._prune(crit)
      snapshots[crit] = summary['snapshots']
      for s in summary['snapshots']:
        spec = spec_lib.load(os.path.join(s['dir'], 'spec.json'))
        row = self._row('pruned', crit, spec, s['budget'], [s])
        row.update(compilations=summary['compilations'],
                   train_seconds=base['train_seconds'] + summary['seconds'])
        self.results.append(row)
      self._progress(f'prune-and-tune ({crit})')
    points = self.scratch_points(snapshots)
    self._total += len(points) * len(scfg.seeds)
    for p in points:
      finals = []
      for seed in scfg.seeds:
        d = os.path.join(self.workdir, 'arms', p.arm, f'{p.family}_{p.label}', f'seed{seed}')
        finals.append(self._train(p.spec, d, seed, p.epochs))
        self._progress(f'{p.arm}/{p.family}/{p.label} seed {seed}')
      self.results.append(self._row(p.arm, p.family, p.spec, p.budget, finals))
    return self.results

  def _row(self, arm, family, spec, budget, finals) -> dict:
    errs = [f['test_error'] for f in finals]
    mean = sum(errs) / len(errs)
    std = (sum((e - mean) ** 2 for e in errs) / (len(errs) - 1)) ** 0.5 if len(errs) > 1 else 0.0
    return {'arm': arm, 'family': family, 'budget': budget,
            'params': spec_lib.count_params(spec, self.nc),
            'macs': spec_lib.count_macs(spec, self.dataset.image_shape[0], self.nc),
            'test_error': mean, 'test_error_std': std, 'seeds': len(errs),
            'train_seconds': sum(f.get('train_seconds', 0.0) for f in finals) / len(finals),
            'compilations': None, 'spec': spec_lib.to_json(spec)}


def run_study(config, workdir: str) -> dict:
  """Runs (or continues) the whole study and writes its report; returns the report's facts."""
  from jaxbud import report  # pylint: disable=g-import-not-at-top
  study = Study(config, workdir)
  metrics_lib.make_workdir(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
  rows = study.run_all()
  report.add_latency(rows, study.dataset.image_shape, study.nc, config.study,
                     os.path.join(workdir, 'latency.json'))
  return report.write(rows, workdir, config, len(study.dataset.test_labels))
