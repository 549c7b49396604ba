"""The study end to end: base, prune-and-tune, reduced families, pruned-from-scratch, copycats.

Arms (the paper's; docs/study.md):
- base: the full network, trained once per seed of `study.prune_seeds`.
- pruned/<criterion>: one prune-and-tune run per criterion from each base network, tuned
  snapshots at the study's budgets; the main criterion's also at the parameter count of every
  reduced network, so that each reduced network meets a pruned network of its own size (at
  most one channel's parameters smaller; never a reduced network more than 2% larger).
- reduced/<family>: smaller versions trained from scratch; width and bottleneck families near
  each budget, the depth family at its own sizes.
- scratch: the main criterion's pruned architectures, re-initialised and trained with the base
  schedule (Liu et al.'s Scratch-E); scratch_b: the same with the whole schedule stretched by
  the base/pruned MACs ratio, capped at `study.scratch_b_cap` when it is > 0 (Scratch-B).
- copycat: the width profile of a pruned snapshot scaled to each budget (from below), trained
  from scratch.
Every from-scratch point trains once per seed of `study.seeds`. With several prune seeds, the
i-th seed of a scratch or copycat point uses the architecture of prune seed i mod k, so the
arm's runs cover the prune runs' variation in architecture too. Runs are keyed by (spec, seed,
schedule): a point whose run another point already has (the copycat at the profile's own budget
is the scratch network) reuses it, and the table says so.

A study can run as several jobs that share the workdir (`study.shard='i/n'`, `study.only=<glob>`;
jaxbud.study.jobs), then `study.report_only=True` writes the report from what they finished and
lists what has not.

Every run has its own folder under the study's workdir with a fingerprint of what determines
its result (fingerprint.json: spec, seed, schedule, data, and for prune runs their section and
their base's fingerprint). A finished run (train: final.json, prune: summary.json) is reused
only when its fingerprint matches; an unfinished one resumes from its checkpoint; a folder made
under another config is a usage error naming the fields that differ. So re-running a study
reuses what is done, and a killed study continues where it stopped.

  <workdir>/base/seed<s>/                  the trained base networks
  <workdir>/prune_<criterion>/seed<s>/     prune-and-tune runs, snapshots at the budgets
  <workdir>/arms/<arm>/<point>/seed<k>/    from-scratch runs
  <workdir>/plan.txt, results.json|csv, comparisons.json, report.md, *.png   (jaxbud.report)
"""
import copy
import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import re
import time

import jax

from jaxbud import bench
from jaxbud import criteria
from jaxbud import data as data_lib
from jaxbud import input_pipeline
from jaxbud import metrics as metrics_lib
from jaxbud import parallel
from jaxbud import prune_tune
from jaxbud import spec as spec_lib
from jaxbud import train as train_lib
from jaxbud.errors import UsageError
from jaxbud.study import jobs as jobs_lib

REDUCED = ('wrn_depth', 'wrn_width', 'wrn_bottleneck',
           'densenet_depth', 'densenet_growth', 'densenet_bottleneck')
DEPTH_FAMILIES = ('wrn_depth', 'densenet_depth')
MATCH_TOLERANCE = 0.02  # a "same size" pair: the from-scratch side at most 2% larger


@dataclasses.dataclass(frozen=True)
class Point:
  """One network the study trains from scratch (once per seed).

  `specs` holds one architecture, or for arms made from pruned networks one per prune seed:
  the i-th training seed uses specs[i % len(specs)] with schedule schedules[i % len(specs)].
  """
  arm: str            # reduced | scratch | scratch_b | copycat
  family: str         # e.g. wrn_width, fisher (the criterion a scratch arm comes from)
  label: str          # folder name, unique within the arm
  specs: tuple        # spec_lib.Spec per prune seed (one for reduced networks)
  budget: int         # the study budget it belongs to (its own size, for depth families)
  schedules: tuple = (1.0,)  # the base schedule stretched by this factor (Scratch-B)
  match: int | None = None   # the pruned snapshot it is compared with (default: budget)

  @property
  def spec(self) -> spec_lib.Spec:
    return self.specs[0]

  def run(self, i: int) -> tuple[spec_lib.Spec, float]:
    """(spec, schedule factor) of the point's i-th training seed."""
    return self.specs[i % len(self.specs)], self.schedules[i % len(self.schedules)]


def _as_size(size) -> spec_lib.Size:
  """A spec_lib.Size, or an int number of classes for parameter counts."""
  return size if isinstance(size, spec_lib.Size) else spec_lib.Size('params', size)


def closest(make, budget: int, lo: float, hi: float, size, iters: int = 50,
            below: bool = False):
  """The spec make(s), s in [lo, hi], whose size (a spec_lib.Size, or the number of classes
  for its parameter count) is nearest `budget` (with `below`, the largest that does not exceed
  it).

  Sizes grow with s in steps (widths are integers), so bisect to the step that crosses the
  budget and keep the nearer of its two sides.
  """
  size = _as_size(size)
  count = lambda s: size(make(s))
  if count(hi) <= budget:
    return make(hi)
  if count(lo) >= budget:
    return make(lo)
  for _ in range(iters):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
  under, over = make(lo), make(hi)
  if below:
    return under
  return min((under, over), key=lambda s: abs(size(s) - budget))


def reduced_points(family: str, base: spec_lib.Spec, budgets, depths, size,
                   base_widen: float = 1.0):
  """Reduced networks of one family: one per budget, or one per depth for depth families
  (`size`: the budgets' spec_lib.Size, or the number of classes for parameter counts)."""
  size = _as_size(size)
  base_size = size(base)
  c = base.in_channels
  points = []
  if family in DEPTH_FAMILIES:
    for d in depths:
      s = (spec_lib.wrn(d, base_widen, c) if family == 'wrn_depth'
           else spec_lib.densenet_bc(d, base.growth, c))
      if size(s) < base_size:
        points.append(Point('reduced', family, f'depth{d}', (s,), size(s)))
    return points
  for b in budgets:
    if family == 'wrn_width':
      s = closest(lambda k: spec_lib.wrn(base.depth, k, c), b, 1 / 16, base_widen, size)
    elif family == 'densenet_growth':
      s = closest(lambda g: spec_lib.densenet_bc(base.depth, max(1, int(g)), c), b, 1,
                  base.growth, size)
    elif family in ('wrn_bottleneck', 'densenet_bottleneck'):
      s = closest(lambda z: base.with_prunable(max(1, int(w * z)) for w in base.prunable),
                  b, 0.0, 1.0, size)
    else:
      raise UsageError(f'unknown reduced family {family!r}; expected one of {REDUCED}')
    # Compared with a pruned snapshot at its own size: `closest` may land a step above b.
    points.append(Point('reduced', family, f'budget{b}', (s,), b, match=size(s)))
  return points


def copycat_spec(profile: spec_lib.Spec, budget: int, size) -> spec_lib.Spec:
  """The profile's per-layer widths scaled by s (max(1, round(s * w))): the largest such
  network within `budget` (never larger than the pruned network it is compared with)."""
  return closest(lambda s: spec_lib.scale_prunable(profile, s, 1, keep_zeros=False), budget,
                 0.0, 8.0, size, below=True)


def wider_than_base(spec: spec_lib.Spec, base: spec_lib.Spec) -> bool:
  """Whether any prunable layer of `spec` has more channels than the base network's layer at
  the same relative depth (the same layer when both have as many; a shallower network's layers
  meet the base's at the same fraction of the depth, so the stages line up)."""
  n, m = len(spec.prunable), len(base.prunable)
  return any(w > base.prunable[i * m // n] for i, w in enumerate(spec.prunable))


def scratch_b_factor(base_macs: int, macs: int, cap: float = 0.0) -> float:
  """Liu et al.'s Scratch-B: the base network's training compute (epochs x base/pruned MACs),
  at most `cap` times the epochs when cap > 0 (their ImageNet code caps at 2; their CIFAR code
  does not cap)."""
  factor = base_macs / macs
  return min(factor, cap) if cap > 0 else factor


def prune_floor(base: spec_lib.Spec, size) -> int:
  """The size (parameters, for a number of classes) left with every prunable channel removed."""
  return _as_size(size).floor(base)


def study_size(config, num_classes: int, image_size: int) -> spec_lib.Size:
  """How the study measures its budgets and matches networks: `prune.budget_unit`."""
  return prune_tune.budget_size(config.prune, num_classes, image_size)


def validate(config, base: spec_lib.Spec, size: spec_lib.Size):
  scfg = config.study
  base_size, unit = size(base), size.unit
  for f in scfg.reduced:
    if f not in REDUCED:
      raise UsageError(f'unknown study.reduced family {f!r}; expected some of {REDUCED}')
    if not f.startswith(base.family.split('_')[0]):
      raise UsageError(f'study.reduced family {f!r} does not fit the base {base.family}')
  if not scfg.budgets:
    raise UsageError(f'study.budgets is empty; give sizes ({unit}) below the base network\'s')
  floor = prune_floor(base, size)
  for b in scfg.budgets:
    if not floor <= b < base_size:
      raise UsageError(f'study.budgets entry {b} must be in [{floor}, {base_size}): the base '
                       f'has {base_size} {unit} and {floor} remain with every prunable '
                       'channel gone')
  if scfg.main_criterion not in scfg.criteria:
    raise UsageError(f'study.main_criterion {scfg.main_criterion!r} must be one of '
                     f'study.criteria {tuple(scfg.criteria)}')
  for crit in scfg.criteria:
    criteria.get(crit)
  if scfg.copycat_budget not in scfg.budgets:
    raise UsageError(f'study.copycat_budget {scfg.copycat_budget} must be one of study.budgets')
  for field in ('seeds', 'prune_seeds'):
    seeds = tuple(scfg[field])
    if not seeds:
      raise UsageError(f'study.{field} is empty; give at least one seed, e.g. (0,)')
    if len(set(seeds)) != len(seeds):
      raise UsageError(f'study.{field} has repeats: {seeds}')
  if scfg.scratch_b_cap < 0:
    raise UsageError(f'study.scratch_b_cap must be >= 0 (0: no cap), got {scfg.scratch_b_cap}')
  # The prune section is checked here too, so a bad value stops the study (and its dry run)
  # before the base network trains, not after.
  prune_tune.validate_section(config.prune, base)
  sizes = tuple(scfg.latency_batch_sizes)
  if len(sizes) != 2 or not all(isinstance(b, int) and b >= 1 for b in sizes):
    raise UsageError(f'study.latency_batch_sizes must be two batch sizes (small, large), e.g. '
                     f'(1, 128); got {sizes}')


def _read(path):
  with open(path) as f:
    return json.load(f)


def _base_spec(config, in_channels: int) -> spec_lib.Spec:
  return train_lib.build_spec(config.model, in_channels)


def all_reduced(config, base, size: spec_lib.Size) -> list[Point]:
  """Every reduced network of the study (depth families only where pruning can reach them)."""
  scfg, floor = config.study, prune_floor(base, size)
  widen = config.model.get('widen', 1.0)
  return [p for f in scfg.reduced
          for p in reduced_points(f, base, scfg.budgets, scfg.depths, size, widen)
          if f not in DEPTH_FAMILIES or p.budget >= floor]


def matched_budgets(config, base, size: spec_lib.Size) -> list[int]:
  """The sizes of the reduced networks that a pruned snapshot must also match."""
  return sorted({p.match or p.budget for p in all_reduced(config, base, size)}, reverse=True)


def main_budgets(config, base, size: spec_lib.Size) -> list[int]:
  """Snapshot budgets of the main criterion's prune runs: the study's and the matched ones."""
  return sorted(set(config.study.budgets) | set(matched_budgets(config, base, size)),
                reverse=True)


def fingerprint(facts: dict) -> str:
  """A stable hash of the JSON facts that determine a run's result."""
  return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


# Fields that change where or how often a run reports, not its result.
_NOT_RESULT = {'data': ('data_dir', 'manual_dir'),
               'train': ('log_every_steps', 'checkpoint_every_epochs', 'keep_checkpoints',
                         'eval_every_epochs'),
               'prune': ('base_workdir', 'budgets', 'stop_after_last_budget', 'log_every_rounds',
                         'checkpoint_every_rounds', 'eval_every_rounds')}


# Fields added after fingerprints existed, left out at the value that leaves a run as it was, so
# that runs made before them stay reusable.
_NEUTRAL = {'train': {'bn_l1': 0.0},
            'prune': {'normalise': 'none', 'channels_per_round': 1, 'schedule': 'iterative',
                      'finetune_epochs': 1.0, 'per_layer_ratio': 0.0, 'budget_unit': 'params'}}


def _section(config, name) -> dict:
  neutral = _NEUTRAL.get(name, {})
  return {k: v for k, v in config[name].to_dict().items()
          if k not in _NOT_RESULT.get(name, ()) and not (k in neutral and v == neutral[k])}


def train_facts(config, spec: spec_lib.Spec) -> dict:
  """What determines a from-scratch run's result (its fingerprint's input)."""
  return {'kind': 'train', 'spec': spec.to_json(), 'seed': config.seed,
          'dtype': config.model.dtype, 'data': _section(config, 'data'),
          'train': _section(config, 'train')}


def prune_facts(config, base_fingerprint: str) -> dict:
  """What determines a prune run's result, budgets aside (they only add snapshots)."""
  return {'kind': 'prune', 'base': base_fingerprint, 'seed': config.seed,
          'dtype': config.model.dtype, 'data': _section(config, 'data'),
          'prune': _section(config, 'prune')}


def check_fingerprint(workdir: str, facts: dict, done_file: str, job: str = '') -> str:
  """The fingerprint of `facts`; written to `workdir` for a new run (with `job`, the job that
  trains it), checked against an existing run's (a finished or resumable run made under other
  settings is a usage error)."""
  facts = json.loads(json.dumps(facts, sort_keys=True, default=str))  # as stored: lists
  fp = fingerprint(facts)
  path = os.path.join(workdir, 'fingerprint.json')
  if os.path.exists(path):
    old = _read(path)
    if old['fingerprint'] != fp:
      raise UsageError(f'{workdir} holds a run made with other settings '
                       f'({", ".join(differences(facts, old["facts"]))} differ); give the study '
                       'a new --workdir, or delete that folder to re-run it')
    return fp
  if os.path.exists(os.path.join(workdir, done_file)) or os.path.isdir(
      os.path.join(workdir, 'checkpoints')):
    raise UsageError(f'{workdir} holds a run without a fingerprint (made by an older jaxbud); '
                     'give the study a new --workdir, or delete that folder to re-run it')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    train_lib.write_json(path, {'fingerprint': fp, 'facts': facts, 'job': job})
  return fp


# -- the plan and its cost, before anything runs ------------------------------------------

def plan(config, step_seconds: float | None = None) -> list[dict]:
  """Every run of the study with its training steps and an estimated time.

  Sizes come from the config and the dataset's known shape (nothing is loaded). Architectures
  that only pruning reveals (scratch, Scratch-B, copycats) are estimated at their budget: MACs
  in proportion to parameters, Scratch-B at the base/budget MACs ratio (capped as configured),
  and a prune run ending at its smallest budget after the average channel's parameters per
  removal. `step_seconds` is the measured time of one training step of the base network; other
  networks are scaled by their MACs.
  """
  scfg, tcfg, pcfg = config.study, config.train, config.prune
  n_train, image_shape, nc = describe_data(config)
  base = _base_spec(config, image_shape[-1])
  size = study_size(config, nc, image_shape[0])
  validate(config, base, size)
  base_size = size(base)
  base_macs = spec_lib.count_macs(base, image_shape[0], nc)
  steps = tcfg.epochs * input_pipeline.steps_per_epoch(n_train, tcfg.batch_size, drop_last=False)
  seeds, prune_seeds = len(scfg.seeds), len(scfg.prune_seeds)
  rows = [dict(what='base network', kind='train', runs=prune_seeds, steps=steps,
               macs=base_macs, batch=tcfg.batch_size)]
  per_channel = (base_size - prune_floor(base, size)) / sum(base.prunable)
  per_round = (pcfg.get('per_layer_ratio', 0.0) * sum(base.prunable) or
               pcfg.get('channels_per_round', 1))
  for crit in scfg.criteria:
    budgets = main_budgets(config, base, size) if crit == scfg.main_criterion else scfg.budgets
    smallest = min(budgets)
    mean_macs = (base_macs + smallest / base_size * base_macs) / 2  # shrinking as it goes
    if prune_tune.one_shot(pcfg):
      rounds = 1 + len(budgets) * prune_tune.tune_periods(pcfg, n_train)
      what = f'prune-and-tune ({crit}), one-shot, {rounds} rounds'
      mean_macs = (base_macs + sum(budgets) / len(budgets) / base_size * base_macs) / 2
    else:
      rounds = pcfg.rounds
      if pcfg.stop_after_last_budget:
        rounds = min(rounds, math.ceil((base_size - smallest) / per_channel / per_round))
      what = f'prune-and-tune ({crit}), about {rounds} rounds'
      rounds += 1  # the last tunes after the final removal
    rows.append(dict(what=what, kind='prune', runs=prune_seeds, steps=rounds * pcfg.prune_every,
                     macs=mean_macs, batch=pcfg.batch_size))
  for p in all_reduced(config, base, size):
    rows.append(dict(what=f'reduced {p.family} {p.label}', kind='train', runs=seeds,
                     steps=steps, macs=spec_lib.count_macs(p.spec, image_shape[0], nc),
                     batch=tcfg.batch_size))
  for b in scfg.budgets:
    est = b / base_size * base_macs
    rows.append(dict(what=f'scratch {b:,}', kind='train', runs=seeds, steps=steps, macs=est,
                     batch=tcfg.batch_size))
    if scfg.scratch_b:
      factor = scratch_b_factor(base_macs, est, scfg.scratch_b_cap)
      rows.append(dict(what=f'scratch_b {b:,} (x{factor:.2f} epochs)', kind='train',
                       runs=seeds, steps=int(steps * factor), macs=est, batch=tcfg.batch_size))
    if b != scfg.copycat_budget:  # that one is the scratch run
      rows.append(dict(what=f'copycat {b:,}', kind='train', runs=seeds, steps=steps, macs=est,
                       batch=tcfg.batch_size))
  for r in rows:
    r['seconds'] = (None if step_seconds is None else
                    r['runs'] * r['steps'] * step_seconds * r['macs'] / base_macs
                    * r['batch'] / tcfg.batch_size)
  return rows


def describe_data(config) -> tuple[int, tuple[int, int, int], int]:
  """(training images, image shape, classes) of the config's dataset, without loading it."""
  d = config.data
  return data_lib.describe(d.name, d.image_size, d.get('synthetic'),
                           downsample=d.get('downsample', 1))


def format_plan(rows, step_seconds, device: str) -> str:
  head = f'{"run":<44} {"runs":>5} {"steps each":>11} {"est. time":>10}'
  lines = [head]
  for r in rows:
    t = metrics_lib.format_seconds(r['seconds']) if r['seconds'] is not None else '?'
    lines.append(f'{r["what"][:44]:<44} {r["runs"]:>5} {r["steps"]:>11,} {t:>10}')
  runs = sum(r['runs'] for r in rows)
  total_steps = sum(r['runs'] * r['steps'] for r in rows)
  total = sum(r['seconds'] or 0 for r in rows)
  lines.append(f'{"total":<44} {runs:>5} {total_steps:>11,} '
               f'{metrics_lib.format_seconds(total) if step_seconds else "?":>10}')
  lines.append(f'estimate from a measured base train step of {step_seconds or 0:.4f} s on '
               f'{device}, other networks scaled by their MACs; evaluation, compilation and '
               'latency timing not included')
  return '\n'.join(lines)


def measure_step(ts: train_lib.TrainSetup, repeats: int = 3) -> float:
  """Median seconds of one step of `ts`'s own jitted training step on this device.

  The batch is random bytes of the dataset's shape (a step's time does not depend on pixel
  values). The step is the one `ts.functions` keeps, so the base run that trains from `ts`
  afterwards neither traces nor compiles it again.
  """
  ds = ts.dataset
  mesh = parallel.make_mesh()
  batch = bench.synthetic_batch(ts.config.train.batch_size, ds.image_shape, ds.num_classes)
  batch = parallel.put_batch(mesh, input_pipeline.local_rows(batch))
  return bench.pipelined_median(ts.functions(mesh)[1], (ts.initial_state(mesh), batch), 1,
                                repeats)


def _shape_only_setup(config) -> train_lib.TrainSetup:
  """The training setup of `config` on random data of its dataset's shape (nothing loaded)."""
  n_train, image_shape, nc = describe_data(config)
  ds = data_lib.synthetic(train_size=n_train, test_size=1, image_size=image_shape[0],
                          channels=image_shape[-1], num_classes=nc)
  return train_lib.setup(config, ds)


# -- running -------------------------------------------------------------------------------

class Study:
  """Runs the arms of a study config in order, reusing finished runs (module docstring); with
  `study.shard`, `study.only` or `study.report_only`, only this job's share (jaxbud.study.jobs).
  """

  def __init__(self, config, workdir: str, jobs: jobs_lib.Jobs | None = None):
    self.config, self.workdir, self.scfg = config, workdir, config.study
    self.jobs = jobs or jobs_lib.Jobs(config.study)
    self.ts = train_lib.setup(config)  # validates train/model/data, loads the data once
    self.dataset: data_lib.Dataset = self.ts.dataset
    self.base_spec = self.ts.spec
    self.nc = self.dataset.num_classes
    self.size = self.dataset.image_shape[0]
    self.measure = study_size(config, self.nc, self.size)
    validate(config, self.base_spec, self.measure)
    self.base_macs = spec_lib.count_macs(self.base_spec, self.size, self.nc)
    self.rows = []      # one dict per arm point (see _row)
    self._runs = {}     # (spec json, seed, schedule) -> (run dir, the point that owns it)
    # (spec json, schedule) -> TrainSetup shared by the seeds (jitted once); the base network's
    # is self.ts, whose train step measure_step has compiled already.
    self._setups = {(self.base_spec.to_json(), 1.0): self.ts}
    self._fingerprints = {}  # run dir -> fingerprint
    self._done, self._total, self._t0 = 0, 0, time.perf_counter()

  # -- runs -------------------------------------------------------------------------------
  def _obtain(self, stage, rel, facts, done_file, start, needed):
    """The result of run `rel` (its `done_file`), trained here by `start(dir)` if this job
    claims it; else another job's: waited for when `needed`, or None while unfinished."""
    d = os.path.join(self.workdir, rel)
    done = os.path.join(d, done_file)
    if self.jobs.claim(stage, rel):
      assert facts is not None, rel  # a claimed run's inputs were waited for
      self._fingerprints[d] = check_fingerprint(d, facts, done_file, self.jobs.name())
      self.jobs.trained.append(rel)
      return _read(done) if os.path.exists(done) else start(d)
    result = (None if facts is None else
              self._finished_elsewhere(rel, facts, done_file, wait=needed))
    (self.jobs.unfinished if result is None else self.jobs.elsewhere).append(rel)
    return result

  def _finished_elsewhere(self, rel, facts, done_file, wait: bool):
    """The result of run `rel`, which another job trains: waited for with `wait`, else None
    while it is unfinished; its fingerprint checked against `facts`."""
    d = os.path.join(self.workdir, rel)
    done = os.path.join(d, done_file)
    if not os.path.exists(done):
      if not wait:
        return None
      self.jobs.wait(done, rel)
    self._fingerprints[d] = check_fingerprint(d, facts, done_file)
    return _read(done)

  def _seeded(self, seed, schedule=1.0):
    cfg = copy.deepcopy(self.config)
    with cfg.unlocked():
      cfg.seed = seed
      if schedule != 1.0:
        cfg.train = train_lib.scale_schedule(cfg.train, schedule)
    return cfg

  def _late_base(self, seed, wait: bool):
    """A base network another job trains, finished since stage A (or waited for, when this
    job needs it after all): its final.json, or None."""
    rel = os.path.join('base', f'seed{seed}')
    final = self._finished_elsewhere(rel, train_facts(self._seeded(seed), self.base_spec),
                                     'final.json', wait)
    if final is not None and rel in self.jobs.unfinished:
      self.jobs.unfinished.remove(rel)
      self.jobs.elsewhere.append(rel)
    return final

  def _train(self, spec, rel, seed, schedule=1.0, stage='C', needed=False):
    cfg = self._seeded(seed, schedule)

    def start(workdir):
      with cfg.unlocked():
        os.makedirs(workdir, exist_ok=True)
        spec_lib.save(spec, os.path.join(workdir, 'arm_spec.json'))
        cfg.model.spec_file = os.path.join(workdir, 'arm_spec.json')
      key = (spec.to_json(), schedule)
      if key not in self._setups:
        self._setups[key] = train_lib.setup(cfg, self.dataset)
      return train_lib.train_and_evaluate(cfg, workdir,
                                          dataclasses.replace(self._setups[key], config=cfg))

    return self._obtain(stage, rel, train_facts(cfg, spec), 'final.json', start, needed)

  def _prune(self, criterion, seed, base_dir, budgets, needed):
    rel = f'prune_{criterion}/seed{seed}'
    cfg = self._seeded(seed)
    with cfg.unlocked():
      cfg.prune.update(base_workdir=base_dir, criterion=criterion, budgets=tuple(budgets),
                       stop_after_last_budget=True)
    base_fp = self._fingerprints.get(base_dir)  # None: the base network is unfinished
    summary = self._obtain('B', rel, base_fp and prune_facts(cfg, base_fp), 'summary.json',
                           lambda d: prune_tune.prune_and_tune(cfg, d, self.dataset), needed)
    if summary is None:
      return None
    self._check_snapshots(rel, summary, budgets)
    return summary

  def _check_snapshots(self, rel, summary, budgets):
    missing = sorted(set(budgets) - {s['budget'] for s in summary['snapshots']}, reverse=True)
    if missing:
      raise UsageError(f'the prune run in {os.path.join(self.workdir, rel)} has no snapshot at '
                       f'budget(s) {", ".join(f"{b:,}" for b in missing)} (it finished before '
                       'they were asked for, or its rounds ran out); delete that folder to re-run '
                       'it with these budgets, or raise prune.rounds')

  def _prune_budgets(self, crit) -> list[int]:
    """The main criterion also meets each reduced network at its own size; the others are
    reported at the study's budgets only."""
    if crit == self.scfg.main_criterion:
      return main_budgets(self.config, self.base_spec, self.measure)
    return sorted(self.scfg.budgets, reverse=True)

  def _train_point(self, p: 'Point', stage: str):
    """Trains (or reads) a from-scratch point's run for every seed; (dirs, finals, the point
    whose runs it reuses, specs). A final is None while another job has not finished it."""
    dirs, finals, owner, specs = [], [], None, []
    for i, seed in enumerate(self.scfg.seeds):
      spec, schedule = p.run(i)
      key = (spec.to_json(), seed, schedule)
      rel = os.path.join('arms', p.arm, f'{p.family}_{p.label}', f'seed{seed}')
      if key in self._runs:  # another point's run (no new run, no new position)
        rel, owner = self._runs[key]
        final_path = os.path.join(self.workdir, rel, 'final.json')
        final = _read(final_path) if os.path.exists(final_path) else None
      else:
        self._runs[key] = (rel, f'{p.arm} {p.family} {p.label}')
        final = self._train(spec, rel, seed, schedule, stage)
      finals.append(final)
      dirs.append(os.path.join(self.workdir, rel))
      specs.append(spec)
      self._progress(f'{p.arm}/{p.family}/{p.label} seed {seed}'
                     + (f' (the run of {owner})' if owner else '')
                     + ('' if final else ' (not finished)'))
    return dirs, finals, owner, specs

  def _progress(self, what):
    self._done += 1
    elapsed = time.perf_counter() - self._t0
    eta = elapsed / self._done * max(self._total - self._done, 0)
    metrics_lib.log(f'study [{self._done}/{self._total}] {what}  '
                    f'elapsed {metrics_lib.format_seconds(elapsed)}, '
                    f'ETA {metrics_lib.format_seconds(eta)}')

  def pruned_points(self, snapshots: dict) -> list[Point]:
    """Pruned-from-scratch, Scratch-B and copycat points, all trained from scratch.

    `snapshots`: {budget: [snapshot of each prune seed]} of the main criterion.
    """
    scfg = self.scfg
    points = []
    load = lambda s: spec_lib.load(os.path.join(s['dir'], 'spec.json'))
    for b in scfg.budgets:
      specs = tuple(load(s) for s in snapshots[b])
      points.append(Point('scratch', scfg.main_criterion, f'budget{b}', specs, b))
      if scfg.scratch_b:
        epochs = self.config.train.epochs
        factors = []
        for s in snapshots[b]:
          f = scratch_b_factor(self.base_macs, s['macs'], scfg.scratch_b_cap)
          # The factor whole epochs allow: a run that rounds to the base's epochs is Scratch-E.
          factors.append(round(epochs * f) / epochs if epochs else 1.0)
        points.append(Point('scratch_b', scfg.main_criterion, f'budget{b}', specs, b,
                            tuple(factors)))
    profiles = tuple(load(s) for s in snapshots[scfg.copycat_budget])
    for b in scfg.budgets:
      specs = (profiles if b == scfg.copycat_budget  # the profiles themselves, not rescaled
               else tuple(copycat_spec(p, b, self.measure) for p in profiles))
      points.append(Point('copycat', scfg.main_criterion, f'budget{b}', specs, b))
    return points

  def stage_c_folders(self) -> list[str]:
    """Every run folder stage C may use (before the pruned architectures are known; the
    copycat at the profile's own budget is the scratch run)."""
    scfg = self.scfg
    arms = ('scratch', 'scratch_b', 'copycat') if scfg.scratch_b else ('scratch', 'copycat')
    return [os.path.join('arms', arm, f'{scfg.main_criterion}_budget{b}', f'seed{seed}')
            for arm in arms for b in scfg.budgets for seed in scfg.seeds
            if not (arm == 'copycat' and b == scfg.copycat_budget)]

  def run_all(self) -> list[dict]:
    """Stage A (base and reduced networks), B (prune runs), C (from the pruned networks); the
    rows of every point whose runs have all finished."""
    scfg, jobs = self.scfg, self.jobs
    metrics_lib.log(f'study ({jobs.name()}): base {self.base_spec.family} '
                    f'({spec_lib.count_params(self.base_spec, self.nc):,} params), '
                    f'budgets {tuple(scfg.budgets)}, criteria {tuple(scfg.criteria)}, '
                    f'seeds {tuple(scfg.seeds)}, prune seeds {tuple(scfg.prune_seeds)}')
    k = len(scfg.prune_seeds)
    reduced = all_reduced(self.config, self.base_spec, self.measure)
    self._total = k * (1 + len(scfg.criteria)) + len(reduced) * len(scfg.seeds)
    prune_runs = [(c, s) for c in scfg.criteria for s in scfg.prune_seeds]
    prunes_here = dict(zip(prune_runs, jobs.peek('B', [f'prune_{c}/seed{s}'
                                                       for c, s in prune_runs])))
    # A finished prune run without a snapshot the config now asks for stops the study here,
    # before anything trains.
    for crit, seed in prune_runs:
      path = os.path.join(self.workdir, f'prune_{crit}', f'seed{seed}', 'summary.json')
      if os.path.exists(path):
        self._check_snapshots(f'prune_{crit}/seed{seed}', _read(path), self._prune_budgets(crit))
    # Stage A. A base network is waited for by the job that prunes it.
    bases = {}
    for seed in scfg.prune_seeds:
      d = os.path.join(self.workdir, 'base', f'seed{seed}')
      needed = any(prunes_here[(c, seed)] for c in scfg.criteria)
      bases[seed] = (d, self._train(self.base_spec, os.path.join('base', f'seed{seed}'), seed,
                                    stage='A', needed=needed))
      self._progress(f'base network seed {seed}')
    reduced_runs = [self._train_point(p, 'A') for p in reduced]
    # Stage B. The main criterion's prune runs are waited for by a job that may train stage C.
    stage_c = not jobs.report_only and (not jobs.only or any(
        fnmatch.fnmatchcase(rel, jobs.only) for rel in self.stage_c_folders()))
    snapshots, pruned_rows = None, []
    for crit in scfg.criteria:
      budgets = self._prune_budgets(crit)
      by_budget = {b: [] for b in budgets}
      finished = True
      for seed in scfg.prune_seeds:
        needed = stage_c and crit == scfg.main_criterion
        base_dir, base_final = bases[seed]
        if base_final is None:
          base_final = self._late_base(seed, wait=needed)
          bases[seed] = (base_dir, base_final)
        summary = self._prune(crit, seed, base_dir, budgets, needed)
        self._progress(f'prune-and-tune ({crit}) seed {seed}'
                       + ('' if summary else ' (not finished)'))
        if summary is None:
          finished = False
          continue
        for s in summary['snapshots']:
          if s['budget'] in by_budget:
            by_budget[s['budget']].append({
                **s, 'seed': seed, 'compilations': summary['compilations'],
                # Its cost: the base network plus the prune run up to this snapshot.
                'train_seconds': base_final['train_seconds'] + s['prune_seconds'],
                'train_macs': base_final['train_macs'] + s['prune_train_macs']})
      if not finished:
        continue
      for b in budgets:
        snaps = by_budget[b]
        specs = tuple(spec_lib.load(os.path.join(s['dir'], 'spec.json')) for s in snaps)
        row = self._row(Point('pruned', crit, f'budget{b}', specs, b),
                        [s['dir'] for s in snaps], snaps, [s['seed'] for s in snaps])
        mean = lambda key: sum(s[key] for s in snaps) / len(snaps)
        row.update(compilations=snaps[0]['compilations'], rounds=round(mean('round')),
                   prune_train_macs=mean('prune_train_macs'),
                   prune_seconds=mean('prune_seconds'))
        pruned_rows.append(row)
      if crit == scfg.main_criterion:
        snapshots = by_budget
    # Stage C: its architectures are known once the main criterion's prune runs are.
    points = self.pruned_points(snapshots) if snapshots else []
    if not snapshots:
      jobs.unfinished.extend(f'{rel} (waits for the prune runs)'
                             for rel in self.stage_c_folders())
    self._total += len(points) * len(scfg.seeds)
    point_runs = [self._train_point(p, 'C') for p in points]
    finals = [f for _, f in bases.values()]
    if all(finals):
      self.rows.append(self._row(Point('base', 'base', 'base', (self.base_spec,), None),
                                 [d for d, _ in bases.values()], finals,
                                 list(scfg.prune_seeds)))
    self.rows.extend(pruned_rows)
    for p, (dirs, finals, owner, specs) in zip(reduced + points, reduced_runs + point_runs):
      if not all(finals):
        continue
      row = self._row(dataclasses.replace(p, specs=tuple(specs),
                                          schedules=tuple(p.run(i)[1]
                                                          for i in range(len(scfg.seeds)))),
                      dirs, finals, list(scfg.seeds))
      row['same_run_as'] = owner
      self.rows.append(row)
    check_matched(self.rows, scfg.main_criterion)
    return self.rows

  def _row(self, p: Point, dirs, finals, seeds) -> dict:
    errs = [f['test_error'] for f in finals]
    mean = sum(errs) / len(errs)
    std = (sum((e - mean) ** 2 for e in errs) / (len(errs) - 1)) ** 0.5 if len(errs) > 1 else 0.0
    specs = list(p.specs)
    avg = lambda values: sum(values) / len(values)
    return {'arm': p.arm, 'family': p.family, 'label': p.label, 'budget': p.budget,
            'match': p.match or p.budget,
            'params': round(avg([spec_lib.count_params(s, self.nc) for s in specs])),
            'macs': round(avg([spec_lib.count_macs(s, self.size, self.nc) for s in specs])),
            'test_error': mean, 'test_error_std': std, 'seeds': len(errs),
            'seed_ids': list(seeds), 'run_errors': errs,
            'schedule': avg(list(p.schedules)),
            'train_seconds': avg([f.get('train_seconds', 0.0) for f in finals]),
            'train_macs': avg([f.get('train_macs', 0) for f in finals]),
            'compilations': None, 'same_run_as': None,
            'wider_than_base': any(wider_than_base(s, self.base_spec) for s in specs),
            'runs': list(dirs), 'spec': spec_lib.to_json(specs[0]),
            'specs': [spec_lib.to_json(s) for s in specs]}


def check_matched(rows, main: str):
  """Every from-scratch network the report compares with a pruned one "of the same size" is at
  most MATCH_TOLERANCE larger than it (the study's protocol; a bug if not)."""
  pruned = {r['budget']: r for r in rows if r['arm'] == 'pruned' and r['family'] == main}
  for r in rows:
    if r['arm'] in ('reduced', 'scratch', 'scratch_b', 'copycat') and r['match'] in pruned:
      p = pruned[r['match']]
      if r['params'] > (1 + MATCH_TOLERANCE) * p['params']:
        raise AssertionError(f'{r["arm"]} {r["family"]} {r["label"]} ({r["params"]:,} params) '
                             f'is more than {MATCH_TOLERANCE:.0%} larger than the pruned network '
                             f'it is compared with ({p["params"]:,})')


def use_compilation_cache(directory: str):
  """Keeps compiled programs in `directory` (JAX's persistent cache) unless one is set already.

  A study trains each architecture once per seed; the seed is data (TrainState.rng), so the
  seeds of one architecture run the same programs and all but the first load them from here.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


def differences(new: dict, old: dict) -> list[str]:
  """The keys (`section.field` inside dicts) whose values differ between two JSON dicts."""
  out = []
  for k in sorted(set(new) | set(old)):
    a, b = new.get(k), old.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += [f'{k}.{f}' for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    elif a != b:
      out.append(k)
  return out


def _study_facts(stored: dict) -> dict:
  """A study config as config.json stores it, less what may differ between the jobs of one
  study (which job runs what, where each host keeps the data)."""
  stored = copy.deepcopy(stored)
  for section, fields in (('study', jobs_lib.FAN_OUT_FIELDS), ('data', _NOT_RESULT['data'])):
    for f in fields:
      stored.get(section, {}).pop(f, None)
  for section, neutral in _NEUTRAL.items():  # a study begun before these fields existed
    for f, value in neutral.items():
      if stored.get(section, {}).get(f, value) == value:
        stored.get(section, {}).pop(f, None)
  return stored


def check_same_study(workdir: str, config):
  """A job of a fanned-out study joins a workdir only if its config.json is this study's."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  differ = differences(_study_facts(json.loads(config.to_json())), _study_facts(_read(path)))
  if differ:
    raise UsageError(f'{workdir} holds a study with another config ({", ".join(differ)} '
                     'differ); every job of one study needs the same config')


def _write_text(path: str, text: str):
  """Atomic (a unique temporary file, then a rename): jobs of one study may write at once."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def run_study(config, workdir: str, log=print) -> dict:
  """Prints the plan and its estimated cost; unless `study.dry_run`, runs (or continues) the
  whole study, or this job's share of it (`study.shard`, `study.only`), and writes its report
  (a job's share: no report; `study.report_only`: the report of what has finished). Returns the
  report's facts (or the plan; or, for a share, what it trained and what is unfinished)."""
  from jaxbud import report  # pylint: disable=g-import-not-at-top
  rows = plan(config)  # validates the study settings before anything is measured or written
  jobs = jobs_lib.Jobs(config.study)
  device = bench.platform_name()
  if not jobs.whole:
    check_same_study(workdir, config)
  # A real study measures the step its base run will use (compiled once for both); a dry run
  # loads no data and measures the same step on data of the same shape. The report step
  # trains nothing and prints no plan.
  study = None if config.study.dry_run else Study(config, workdir, jobs)
  text = None
  if not jobs.report_only:
    step_s = measure_step(study.ts if study else _shape_only_setup(config))
    text = format_plan(plan(config, step_s), step_s, device)
    log(f'study plan ({config.data.name}, {config.model.family}):\n{text}')
    if config.study.dry_run:
      return {'plan': rows, 'step_seconds': step_s, 'text': text}
  metrics_lib.make_workdir(workdir)
  if config.study.compilation_cache:
    # Each job of a fanned-out study keeps its own cache: JAX writes cache entries in place,
    # so two jobs sharing a folder could read each other's half-written programs.
    cache = os.path.join(workdir, 'jax_cache')
    if not jobs.whole:
      cache = os.path.join(cache, re.sub(r'[^A-Za-z0-9_.-]+', '_', jobs.name()))
    use_compilation_cache(cache)
  if jax.process_index() == 0:
    stored = copy.deepcopy(config)
    with stored.unlocked():
      stored.study.update(shard='', only='', report_only=False)
    _write_text(os.path.join(workdir, 'config.json'), stored.to_json(indent=2))
    if text:
      _write_text(os.path.join(workdir, 'plan.txt'), text + '\n')
  rows = study.run_all()
  if not (jobs.whole or jobs.report_only):
    log(jobs.summary())
    log('when every job has finished, write the report: the same command with '
        '--config.study.report_only=True and no shard or only')
    return {'trained': jobs.trained, 'elsewhere': jobs.elsewhere,
            'unfinished': jobs.unfinished}
  report.add_latency(rows, config, study.dataset, os.path.join(workdir, 'latency.json'))
  return report.write(rows, workdir, config, study.dataset, unfinished=jobs.unfinished)
