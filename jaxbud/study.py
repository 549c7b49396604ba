"""The study end to end: base, prune-and-tune, reduced families, pruned-from-scratch, copycats.

Arms (the paper's; docs/study.md):
- base: the full network, trained once (config.seed).
- pruned/<criterion>: one prune-and-tune run per criterion from the base, tuned snapshots at the
  study's budgets; the main criterion's also at the parameter count of every depth-reduced
  network (so that each depth-reduced network meets a pruned network of its own size).
- reduced/<family>: smaller versions trained from scratch; width and bottleneck families at each
  budget, the depth family at its own sizes.
- scratch: the main criterion's pruned architectures, re-initialised and trained with the base
  schedule (Liu et al.'s Scratch-E); scratch_b: the same with the whole schedule stretched by
  the base/pruned MACs ratio, capped at 2 (Scratch-B).
- copycat: the width profile of one pruned snapshot scaled to each budget, trained from scratch.
Every from-scratch point trains once per seed of `study.seeds`. Runs are keyed by (spec, seed,
schedule): a point whose run another point already has (the copycat at the profile's own budget
is the scratch network) reuses it, and the table says so.

Every run has its own folder under the study's workdir and is skipped when its result file
exists (train: final.json, prune: summary.json); an unfinished run resumes from its checkpoint.
So re-running a study reuses what is done, and a killed study continues where it stopped.

  <workdir>/base/                          the trained base network
  <workdir>/prune_<criterion>/             prune-and-tune run, snapshots at the budgets
  <workdir>/arms/<arm>/<point>/seed<k>/    from-scratch runs
  <workdir>/plan.txt, results.json|csv, comparisons.json, report.md, *.png   (jaxbud.report)
"""
import copy
import dataclasses
import json
import math
import os
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

REDUCED = ('wrn_depth', 'wrn_width', 'wrn_bottleneck',
           'densenet_depth', 'densenet_growth', 'densenet_bottleneck')
DEPTH_FAMILIES = ('wrn_depth', 'densenet_depth')
SCRATCH_B_CAP = 2.0  # Liu et al.: Scratch-B trains at most twice the epochs


@dataclasses.dataclass(frozen=True)
class Point:
  """One network the study trains from scratch (once per seed)."""
  arm: str            # reduced | scratch | scratch_b | copycat
  family: str         # e.g. wrn_width, fisher (the criterion a scratch arm comes from)
  label: str          # folder name, unique within the arm
  spec: spec_lib.Spec
  budget: int         # the parameter count it is compared at (its own, for depth families)
  schedule: float = 1.0  # the base schedule stretched by this factor (Scratch-B)


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
  if family in DEPTH_FAMILIES:
    for d in depths:
      s = (spec_lib.wrn(d, base_widen, c) if family == 'wrn_depth'
           else spec_lib.densenet_bc(d, base.growth, c))
      params = spec_lib.count_params(s, num_classes)
      if params < base_params:
        points.append(Point('reduced', family, f'depth{d}', s, params))
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


def wider_than_base(spec: spec_lib.Spec, base: spec_lib.Spec) -> bool:
  """Whether any prunable layer of `spec` has more channels than the base network's layer at
  the same relative depth (the same layer when both have as many; a shallower network's layers
  meet the base's at the same fraction of the depth, so the stages line up)."""
  n, m = len(spec.prunable), len(base.prunable)
  return any(w > base.prunable[i * m // n] for i, w in enumerate(spec.prunable))


def scratch_b_factor(base_macs: int, macs: int) -> float:
  """Liu et al.'s Scratch-B: the base network's training compute, at most twice the epochs."""
  return min(base_macs / macs, SCRATCH_B_CAP)


def prune_floor(base: spec_lib.Spec, num_classes: int) -> int:
  """Parameters left with every prunable channel removed."""
  return spec_lib.count_params(base.with_prunable([0] * len(base.prunable)), num_classes)


def validate(config, base: spec_lib.Spec, num_classes: int):
  scfg = config.study
  base_params = spec_lib.count_params(base, num_classes)
  for f in scfg.reduced:
    if f not in REDUCED:
      raise UsageError(f'unknown study.reduced family {f!r}; expected some of {REDUCED}')
    if not f.startswith(base.family.split('_')[0]):
      raise UsageError(f'study.reduced family {f!r} does not fit the base {base.family}')
  if not scfg.budgets:
    raise UsageError('study.budgets is empty; give parameter counts below the base network')
  floor = prune_floor(base, num_classes)
  for b in scfg.budgets:
    if not floor <= b < base_params:
      raise UsageError(f'study.budgets entry {b} must be in [{floor}, {base_params}): the base '
                       f'has {base_params} params and {floor} remain with every prunable '
                       'channel gone')
  if scfg.main_criterion not in scfg.criteria:
    raise UsageError(f'study.main_criterion {scfg.main_criterion!r} must be one of '
                     f'study.criteria {tuple(scfg.criteria)}')
  for crit in scfg.criteria:
    criteria.get(crit)
  if scfg.copycat_budget not in scfg.budgets:
    raise UsageError(f'study.copycat_budget {scfg.copycat_budget} must be one of study.budgets')
  if not scfg.seeds:
    raise UsageError('study.seeds is empty; give at least one seed, e.g. (0,)')
  if len(set(scfg.seeds)) != len(scfg.seeds):
    raise UsageError(f'study.seeds has repeats: {tuple(scfg.seeds)}')
  if scfg.bootstrap_samples < 100:
    raise UsageError(f'study.bootstrap_samples must be >= 100, got {scfg.bootstrap_samples}')
  sizes = tuple(scfg.latency_batch_sizes)
  if len(sizes) != 2 or not all(isinstance(b, int) and b >= 1 for b in sizes):
    raise UsageError(f'study.latency_batch_sizes must be two batch sizes (small, large), e.g. '
                     f'(1, 128); got {sizes}')


def _read(path):
  with open(path) as f:
    return json.load(f)


def _base_spec(config, in_channels: int) -> spec_lib.Spec:
  return train_lib.build_spec(config.model, in_channels)


def depth_budgets(config, base, num_classes) -> list[int]:
  """The parameter counts of the depth-reduced networks a pruned snapshot can match."""
  scfg, floor = config.study, prune_floor(base, num_classes)
  widen = config.model.get('widen', 1.0)
  return [p.budget for f in scfg.reduced if f in DEPTH_FAMILIES
          for p in reduced_points(f, base, (), scfg.depths, num_classes, widen)
          if p.budget >= floor]


# -- the plan and its cost, before anything runs ------------------------------------------

def plan(config, step_seconds: float | None = None) -> list[dict]:
  """Every run of the study with its training steps and an estimated time.

  Sizes come from the config and the dataset's known shape (nothing is loaded). Architectures
  that only pruning reveals (scratch, Scratch-B, copycats) are estimated at their budget: MACs
  in proportion to parameters, Scratch-B at its 2x cap, and a prune run ending at the smallest
  budget after the average channel's parameters per removal. `step_seconds` is the measured
  time of one training step of the base network; other networks are scaled by their MACs.
  """
  scfg, tcfg, pcfg = config.study, config.train, config.prune
  n_train, image_shape, nc = data_lib.describe(config.data.name, config.data.image_size,
                                                config.data.get('synthetic'))
  base = _base_spec(config, image_shape[-1])
  validate(config, base, nc)
  base_params = spec_lib.count_params(base, nc)
  base_macs = spec_lib.count_macs(base, image_shape[0], nc)
  spe = n_train // tcfg.batch_size
  steps = tcfg.epochs * spe
  seeds = len(scfg.seeds)
  rows = [dict(what='base network', kind='train', runs=1, steps=steps, macs=base_macs,
               batch=tcfg.batch_size)]
  per_channel = (base_params - prune_floor(base, nc)) / sum(base.prunable)
  for crit in scfg.criteria:
    smallest = min(scfg.budgets)
    if crit == scfg.main_criterion:
      smallest = min([smallest, *depth_budgets(config, base, nc)])
    rounds = pcfg.rounds
    if pcfg.stop_after_last_budget:
      rounds = min(rounds, math.ceil((base_params - smallest) / per_channel))
    mean_macs = (base_macs + smallest / base_params * base_macs) / 2  # shrinking as it goes
    rows.append(dict(what=f'prune-and-tune ({crit}), about {rounds} rounds', kind='prune',
                     runs=1, steps=(rounds + 1) * pcfg.prune_every, macs=mean_macs,
                     batch=pcfg.batch_size))
  widen = config.model.get('widen', 1.0)
  for fam in scfg.reduced:
    for p in reduced_points(fam, base, scfg.budgets, scfg.depths, nc, widen):
      rows.append(dict(what=f'reduced {fam} {p.label}', kind='train', runs=seeds, steps=steps,
                       macs=spec_lib.count_macs(p.spec, image_shape[0], nc),
                       batch=tcfg.batch_size))
  for b in scfg.budgets:
    est = b / base_params * base_macs
    rows.append(dict(what=f'scratch {b:,}', kind='train', runs=seeds, steps=steps, macs=est,
                     batch=tcfg.batch_size))
    if scfg.scratch_b:
      rows.append(dict(what=f'scratch_b {b:,} (at most 2x epochs)', kind='train', runs=seeds,
                       steps=int(steps * SCRATCH_B_CAP), macs=est, batch=tcfg.batch_size))
    if b != scfg.copycat_budget:  # that one is the scratch run
      rows.append(dict(what=f'copycat {b:,}', kind='train', runs=seeds, steps=steps, macs=est,
                       batch=tcfg.batch_size))
  for r in rows:
    r['seconds'] = (None if step_seconds is None else
                    r['runs'] * r['steps'] * step_seconds * r['macs'] / base_macs
                    * r['batch'] / tcfg.batch_size)
  return rows


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
  n_train, image_shape, nc = data_lib.describe(config.data.name, config.data.image_size,
                                                config.data.get('synthetic'))
  ds = data_lib.synthetic(train_size=n_train, test_size=1, image_size=image_shape[0],
                          channels=image_shape[-1], num_classes=nc)
  return train_lib.setup(config, ds)


# -- running -------------------------------------------------------------------------------

class Study:
  """Runs the arms of a study config in order, skipping finished runs."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir, self.scfg = config, workdir, config.study
    self.ts = train_lib.setup(config)  # validates train/model/data, loads the data once
    self.dataset: data_lib.Dataset = self.ts.dataset
    self.base_spec = self.ts.spec
    self.nc = self.dataset.num_classes
    self.size = self.dataset.image_shape[0]
    validate(config, self.base_spec, self.nc)
    self.base_macs = spec_lib.count_macs(self.base_spec, self.size, self.nc)
    self.rows = []      # one dict per arm point (see _row)
    self._runs = {}     # (spec json, seed, schedule) -> (run dir, the point that owns it)
    # (spec json, schedule) -> TrainSetup shared by the seeds (jitted once); the base network's
    # is self.ts, whose train step measure_step has compiled already.
    self._setups = {(self.base_spec.to_json(), 1.0): self.ts}
    self._done, self._total, self._t0 = 0, 0, time.perf_counter()

  # -- runs -------------------------------------------------------------------------------
  def _train(self, spec, workdir, seed, schedule=1.0):
    final_path = os.path.join(workdir, 'final.json')
    if os.path.exists(final_path):
      return _read(final_path)
    cfg = copy.deepcopy(self.config)
    with cfg.unlocked():
      cfg.seed = seed
      if schedule != 1.0:
        cfg.train = train_lib.scale_schedule(cfg.train, schedule)
      os.makedirs(workdir, exist_ok=True)
      spec_lib.save(spec, os.path.join(workdir, 'arm_spec.json'))
      cfg.model.spec_file = os.path.join(workdir, 'arm_spec.json')
    key = (spec.to_json(), schedule)
    if key not in self._setups:
      self._setups[key] = train_lib.setup(cfg, self.dataset)
    return train_lib.train_and_evaluate(cfg, workdir,
                                        dataclasses.replace(self._setups[key], config=cfg))

  def _prune(self, criterion, budgets):
    workdir = os.path.join(self.workdir, f'prune_{criterion}')
    path = os.path.join(workdir, 'summary.json')
    if os.path.exists(path):
      return _read(path)
    cfg = copy.deepcopy(self.config)
    with cfg.unlocked():
      cfg.prune.update(base_workdir=os.path.join(self.workdir, 'base'), criterion=criterion,
                       budgets=tuple(budgets), stop_after_last_budget=True)
    return prune_tune.prune_and_tune(cfg, workdir, self.dataset)

  def _progress(self, what):
    self._done += 1
    elapsed = time.perf_counter() - self._t0
    eta = elapsed / self._done * max(self._total - self._done, 0)
    metrics_lib.log(f'study [{self._done}/{self._total}] {what}  '
                    f'elapsed {metrics_lib.format_seconds(elapsed)}, '
                    f'ETA {metrics_lib.format_seconds(eta)}')

  def scratch_points(self, snapshots: dict) -> list[Point]:
    """Reduced, pruned-from-scratch, Scratch-B and copycat points, all trained from scratch."""
    scfg, points = self.scfg, []
    widen = self.config.model.get('widen', 1.0)
    floor = prune_floor(self.base_spec, self.nc)
    for fam in scfg.reduced:
      points += [p for p in reduced_points(fam, self.base_spec, scfg.budgets, scfg.depths,
                                           self.nc, widen)
                 if fam not in DEPTH_FAMILIES or p.budget >= floor]
    main = {s['budget']: s for s in snapshots[scfg.main_criterion]}
    for b in scfg.budgets:
      if b not in main:
        continue
      spec = spec_lib.load(os.path.join(main[b]['dir'], 'spec.json'))
      points.append(Point('scratch', scfg.main_criterion, f'budget{b}', spec, b))
      if scfg.scratch_b:
        factor = scratch_b_factor(self.base_macs, main[b]['macs'])
        epochs = self.config.train.epochs
        # The factor the whole epochs allow: a run that rounds to the base's epochs is Scratch-E.
        factor = round(epochs * factor) / epochs if epochs else 1.0
        points.append(Point('scratch_b', scfg.main_criterion, f'budget{b}', spec, b, factor))
    if scfg.copycat_budget in main:
      profile = spec_lib.load(os.path.join(main[scfg.copycat_budget]['dir'], 'spec.json'))
      for b in scfg.budgets:
        spec = (profile if b == scfg.copycat_budget  # the profile itself, not a rescaled copy
                else copycat_spec(profile, b, self.nc))
        points.append(Point('copycat', scfg.main_criterion, f'budget{b}', spec, b))
    return points

  def run_all(self) -> list[dict]:
    scfg = self.scfg
    base_dir = os.path.join(self.workdir, 'base')
    metrics_lib.log(f'study: base {self.base_spec.family} '
                    f'({spec_lib.count_params(self.base_spec, self.nc):,} params), '
                    f'budgets {tuple(scfg.budgets)}, criteria {tuple(scfg.criteria)}, '
                    f'seeds {tuple(scfg.seeds)}')
    self._total = 1 + len(scfg.criteria)  # grows once the from-scratch points are known
    base = self._train(self.base_spec, base_dir, self.config.seed)
    self._progress('base network')
    self.rows.append(self._row(Point('base', 'base', 'base', self.base_spec, None),
                               [base_dir], [base]))
    # The main criterion also meets each depth-reduced network at its own size; the others
    # are reported at the study's budgets only.
    depth = depth_budgets(self.config, self.base_spec, self.nc)
    snapshots = {}
    for crit in scfg.criteria:
      budgets = set(scfg.budgets) | (set(depth) if crit == scfg.main_criterion else set())
      summary = self._prune(crit, sorted(budgets, reverse=True))
      snapshots[crit] = summary['snapshots']
      for s in summary['snapshots']:
        spec = spec_lib.load(os.path.join(s['dir'], 'spec.json'))
        row = self._row(Point('pruned', crit, f'budget{s["budget"]}', spec, s['budget']),
                        [s['dir']], [s])
        # Its cost: the base network plus the prune run up to this snapshot.
        row.update(compilations=summary['compilations'],
                   train_seconds=base['train_seconds'] + s['prune_seconds'],
                   train_macs=base['train_macs'] + s['prune_train_macs'],
                   rounds=s['round'])
        self.rows.append(row)
      self._progress(f'prune-and-tune ({crit})')
    points = self.scratch_points(snapshots)
    self._total += sum(len(scfg.seeds) for _ in points)
    for p in points:
      dirs, finals, owner = [], [], None
      for seed in scfg.seeds:
        key = (p.spec.to_json(), seed, p.schedule)
        d = os.path.join(self.workdir, 'arms', p.arm, f'{p.family}_{p.label}', f'seed{seed}')
        if key in self._runs:
          d, owner = self._runs[key]
        else:
          self._runs[key] = (d, f'{p.arm} {p.family} {p.label}')
        finals.append(self._train(p.spec, d, seed, p.schedule))
        dirs.append(d)
        self._progress(f'{p.arm}/{p.family}/{p.label} seed {seed}'
                       + (f' (the run of {owner})' if owner else ''))
      row = self._row(p, dirs, finals)
      row['same_run_as'] = owner
      self.rows.append(row)
    return self.rows

  def _row(self, p: Point, dirs, finals) -> dict:
    errs = [f['test_error'] for f in finals]
    mean = sum(errs) / len(errs)
    std = (sum((e - mean) ** 2 for e in errs) / (len(errs) - 1)) ** 0.5 if len(errs) > 1 else 0.0
    return {'arm': p.arm, 'family': p.family, 'label': p.label, 'budget': p.budget,
            'params': spec_lib.count_params(p.spec, self.nc),
            'macs': spec_lib.count_macs(p.spec, self.size, self.nc),
            'test_error': mean, 'test_error_std': std, 'seeds': len(errs),
            'schedule': p.schedule,
            'train_seconds': sum(f.get('train_seconds', 0.0) for f in finals) / len(finals),
            'train_macs': sum(f.get('train_macs', 0) for f in finals) / len(finals),
            'compilations': None, 'same_run_as': None,
            'wider_than_base': wider_than_base(p.spec, self.base_spec),
            'runs': list(dirs), 'spec': spec_lib.to_json(p.spec)}


def use_compilation_cache(directory: str):
  """Keeps compiled programs in `directory` (JAX's persistent cache) unless one is set already.

  A study trains each architecture once per seed; the seed is data (TrainState.rng), so the
  seeds of one architecture run the same programs and all but the first load them from here.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


def run_study(config, workdir: str, log=print) -> dict:
  """Prints the plan and its estimated cost; unless `study.dry_run`, runs (or continues) the
  whole study and writes its report. Returns the report's facts (or the plan)."""
  from jaxbud import report  # pylint: disable=g-import-not-at-top
  rows = plan(config)  # validates the study settings before anything is measured or written
  device = bench.platform_name()
  # A real study measures the step its base run will use (compiled once for both); a dry run
  # loads no data and measures the same step on data of the same shape.
  study = None if config.study.dry_run else Study(config, workdir)
  step_s = measure_step(study.ts if study else _shape_only_setup(config))
  text = format_plan(plan(config, step_s), step_s, device)
  log(f'study plan ({config.data.name}, {config.model.family}):\n{text}')
  if config.study.dry_run:
    return {'plan': rows, 'step_seconds': step_s, 'text': text}
  metrics_lib.make_workdir(workdir)
  if config.study.compilation_cache:
    use_compilation_cache(os.path.join(workdir, 'jax_cache'))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))
    with open(os.path.join(workdir, 'plan.txt'), 'w') as f:
      f.write(text + '\n')
  rows = study.run_all()
  report.add_latency(rows, config, study.dataset, os.path.join(workdir, 'latency.json'))
  return report.write(rows, workdir, config, study.dataset)
