"""Prune-and-tune runs: fine-tune a trained network, removing one channel every round.

Each round of the paper's schedule (`prune.schedule='iterative'`, jaxbud.schedules has the
others) follows the authors' pruning script (PAPER.md, "The prune run's loop"):

1. fine-tune `prune_every` steps, accumulating the statistics the criterion needs;
2. evaluate the tuned network on the test split every `eval_every_rounds` rounds (the pruning
   trajectory: test error against parameters, the paper's error-vs-size curve for pruning);
3. write a snapshot at every budget the network has reached: the network has been tuned since
   its last removal, as the reference's checkpoints are;
4. remove the globally least salient live channel (`prune.channels_per_round` of them, or a
   round rule's choice, see jaxbud.schedules).

Budgets count parameters, or MACs with `prune.budget_unit='macs'`. The one-shot schedule scores
the base network over one round, then for each budget cuts the base network to it at once and
fine-tunes it for `prune.finetune_epochs` before its snapshot.

A run of R rounds makes R removals and R + 1 tuning periods (the last one tunes the network
after the final removal). With `stop_after_last_budget` it ends once the last snapshot is
written. Fine-tuning runs at the base schedule's final learning rate unless `prune.lr` is given,
and reads its own data stream (seed derived from the run's seed, see `data_seed`), so it does
not replay the base run's batches and crops.

The network keeps fixed shapes between compactions: removed channels are masked by their gates
(exactly zero, see jaxbud.prune), in training and in evaluation, so the jitted steps are reused.
Once `compact_every` channels are masked the state is compacted (params, batch stats and
momentum sliced) and the steps are compiled once for the smaller shapes. A snapshot is a
compacted copy, evaluated and saved on its own; the run goes on with its masks. The loop around
the step (metrics, NaN guard, checkpoints, SIGTERM) is jaxbud.loop's, the same as training's.

Layout of a run's workdir:
  checkpoints/            the run's own state (resume point), with the current spec
  snapshots/<budget>/     spec.json, result.json, history.json, predictions.npz, checkpoint/
  history.json            {'removals': every removal (round, step, layer, original channel index,
                          score, params after it, the runner-up [layer, channel, score]),
                          'evaluations': the trajectory (round, removed, params, MACs, test
                          error and loss, training MACs and seconds so far)}
  summary.json            snapshots, compilations, timings
"""
import json
import os
import shutil
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxbud import augment
from jaxbud import checkpoint as ckpt_lib
from jaxbud import criteria
from jaxbud import inference
from jaxbud import input_pipeline
from jaxbud import loop as loop_lib
from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import prune
from jaxbud import schedules
from jaxbud import spec as spec_lib
from jaxbud import stats
from jaxbud import train as train_lib
from jaxbud.errors import UsageError
from jaxbud.graph import arch as graph_arch
from jaxbud.graph import step as graph_step

_PRUNE_STREAM = 0x707275  # keeps the prune run's data seed apart from the base run's


def data_seed(seed: int) -> int:
  """The seed of a prune run's data order and augmentation, derived from the run's seed."""
  return int(np.random.SeedSequence([seed, _PRUNE_STREAM]).generate_state(1)[0])


def finetune_lr(config) -> float:
  """`prune.lr`, or (0) the final learning rate of the base network's schedule.

  The base's schedule is read from the config.json its training run wrote (the prune config's
  own train section where the base folder has none).
  """
  pcfg = config.prune
  if pcfg.lr > 0:
    return pcfg.lr
  tcfg = config.train
  path = os.path.join(pcfg.base_workdir, 'config.json')
  if pcfg.base_workdir and os.path.isfile(path):
    with open(path) as f:
      tcfg = ml_collections.ConfigDict(json.load(f)['train'])
  return train_lib.final_lr(tcfg)


# Fields that may differ between a prune run and its base. Data: where the files are, and the
# training runs' own crop padding (prune runs use prune.pad_mode). Model: the spec file (the
# network pruned is the base's own, read from its checkpoint).
_BASE_FREE = {'data': ('data_dir', 'manual_dir', 'stream_workers', 'pad_mode'),
              'model': ('spec_file',)}


def check_base_data(config):
  """The prune config's data and model sections must be the ones its base network was trained
  with (as the base folder's config.json records them): another dataset, size, augmentation,
  network or compute dtype is an error naming the field."""
  path = os.path.join(config.prune.base_workdir, 'config.json')
  if not (config.prune.base_workdir and os.path.isfile(path)):
    return
  with open(path) as f:
    stored = json.load(f)
  for section, free in _BASE_FREE.items():
    base = stored.get(section, {})
    mine = json.loads(config[section].to_json())  # tuples as lists, as in the base's file
    for field in sorted(set(base) & set(mine) - set(free)):
      if base[field] != mine[field]:
        raise UsageError(f'{section}.{field}={mine[field]!r} differs from the base network\'s '
                         f'{base[field]!r} ({path}); prune with the {section} settings the base '
                         'was trained with')


def finetune_optimizer(pcfg, lr: float):
  """One SGD optimizer for the whole run (momentum persists across removals), constant lr."""
  return train_lib.make_optimizer(ml_collections.ConfigDict(dict(
      schedule='constant', lr=lr, momentum=pcfg.momentum,
      weight_decay=pcfg.weight_decay)), steps_per_epoch=1)


def validate_section(pcfg, base_spec=None):
  """Checks the fields of a `prune` section, and with `base_spec` that its rounds fit the
  network (also run by a study's plan, before anything trains)."""
  for field in ('prune_every', 'rounds', 'compact_every', 'batch_size', 'checkpoint_every_rounds',
                'log_every_rounds', 'eval_every_rounds'):
    if pcfg[field] < 1:
      raise UsageError(f'prune.{field} must be >= 1, got {pcfg[field]}')
  criteria.check_normalise(pcfg.get('normalise', 'none'))
  if pcfg.lr < 0:
    raise UsageError(f'prune.lr must be > 0, or 0 for the base schedule\'s final lr; got {pcfg.lr}')
  parallel.check_batch(pcfg.batch_size, 'prune.batch_size')
  if pcfg.pad_mode not in augment.PAD_MODES:
    raise UsageError(f'unknown prune.pad_mode {pcfg.pad_mode!r}; expected one of '
                     f'{tuple(augment.PAD_MODES)}')
  per_round = pcfg.get('channels_per_round', 1)
  if per_round < 1:
    raise UsageError(f'prune.channels_per_round must be >= 1, got {per_round}')
  schedules.check_section(pcfg)
  channels = (sum(w - min(w, getattr(base_spec, 'min_width', 0)) for w in base_spec.prunable)
              if base_spec is not None else None)
  if (channels is not None and pcfg.rounds * per_round > channels and
      not pcfg.get('per_layer_ratio', 0.0) and not one_shot(pcfg)):
    what = f'prune.rounds={pcfg.rounds}' + (
        f' x prune.channels_per_round={per_round}' if per_round > 1 else '')
    raise UsageError(f'{what} removes more channels than the {channels} prunable channels of '
                     'the base network' + (f' (each group keeps {base_spec.min_width})'
                                           if getattr(base_spec, 'min_width', 0) else ''))


def one_shot(pcfg) -> bool:
  return pcfg.get('schedule', 'iterative') == schedules.ONE_SHOT


def budget_size(pcfg, num_classes: int, image_size: int) -> spec_lib.Size:
  """How the prune section's budgets measure a network (`prune.budget_unit`)."""
  return spec_lib.Size(schedules.budget_unit(pcfg), num_classes, image_size)


def tune_periods(pcfg, n_train: int) -> int:
  """One-shot: rounds of `prune_every` steps that make up `finetune_epochs` (rounded up)."""
  per_epoch = input_pipeline.steps_per_epoch(n_train, pcfg.batch_size, drop_last=True)
  return max(1, -(-int(round(pcfg.get('finetune_epochs', 1.0) * per_epoch)) // pcfg.prune_every))


def total_rounds(pcfg, n_train: int) -> int:
  """Rounds of fine-tuning a run makes at most: rounds + 1 (iterative: the last tunes after
  the final removal), or one scoring round plus each budget's tuning (one-shot)."""
  if one_shot(pcfg):
    return 1 + len(pcfg.budgets) * tune_periods(pcfg, n_train)
  return pcfg.rounds + 1


def _validate(config, base_spec, num_classes, image_size):
  pcfg = config.prune
  validate_section(pcfg, base_spec)
  size = budget_size(pcfg, num_classes, image_size)
  base, floor, unit = size(base_spec), size.floor(base_spec), size.unit
  for b in pcfg.budgets:
    if not floor <= b < base:
      raise UsageError(f'prune.budgets entry {b} must lie in [{floor}, {base}): the base network '
                       f'has {base} {unit} and {floor} remain with every prunable channel gone')
  if one_shot(pcfg) and not pcfg.budgets:
    raise UsageError('prune.schedule=one_shot cuts the base network to each of prune.budgets, '
                     'which is empty')


class _Ops(NamedTuple):
  """The prune run's operations that depend on how a network's channels are coupled: by hand
  (jaxbud's own families, jaxbud.prune) or read from the traced program (model.module
  networks, jaxbud.graph.step)."""
  make_prune_step: Callable
  make_eval_step: Callable
  shrink_state: Callable
  live_params: Callable  # (spec, {name: (C,) mask}, classes) -> params with masked ones gone


_OPS = {'spec': _Ops(prune.make_prune_step, prune.make_eval_step, prune.shrink_state,
                     lambda spec, mask, nc: spec_lib.count_params(_mask_spec(spec, mask), nc)),
        # From the masks on the variables' layout: one trace per removal would be too slow.
        'module': _Ops(graph_step.make_model_prune_step, graph_step.make_eval_step,
                       graph_step.shrink_state,
                       lambda spec, mask, nc: graph_arch.live_params(spec, mask))}


def ops(spec) -> _Ops:
  return _OPS['module' if spec.family == graph_arch.ModuleSpec.family else 'spec']


def check_module_criterion(spec, criterion):
  """A model.module network is scored from the statistics of its groups: a criterion that
  reads the layout of jaxbud's own families (l1, bn_scale, ...) or records activations is a
  usage error, named, before anything is written."""
  if spec.family != graph_arch.ModuleSpec.family:
    return
  if not criterion.any_model:
    usable = [n for n in criteria.names() if criteria.get(n).any_model and
              'activation' not in criteria.get(n).needs]
    raise UsageError(f'prune.criterion={criterion.name!r} reads the layers of jaxbud\'s own '
                     f'families; a model.module network takes one of {usable}')
  graph_step.check_accumulators(criterion.needs)


def _mask_spec(spec, mask):
  return spec.with_prunable(int(np.sum(np.asarray(mask[n]))) for n in spec.prunable_names)


def _compact(ps: prune.PruneState, spec, orig):
  """Slices away masked channels; returns (state, spec, orig index map) for the smaller net."""
  keep = {n: np.flatnonzero(np.asarray(ps.mask[n]) > 0).astype(np.int32)
          for n in spec.prunable_names}
  new_spec = spec.with_prunable(len(keep[n]) for n in spec.prunable_names)
  train_state = ops(spec).shrink_state(ps.train, spec, keep)
  mask = {n: np.ones((len(keep[n]),), np.float32) for n in spec.prunable_names}
  stats = {a: {n: parallel.host_copy(per_layer[n])[keep[n]] for n in spec.prunable_names}
           for a, per_layer in ps.stats.items()}
  orig = {n: [orig[n][i] for i in keep[n]] for n in spec.prunable_names}
  return prune.PruneState(train_state, mask, stats), new_spec, orig


class PruneSetup:
  """What a prune run is built from: the training setup, the fine-tune optimizer, the criterion."""

  def __init__(self, config, ts: train_lib.TrainSetup):
    self.config, self.pcfg, self.ts, self.ds = config, config.prune, ts, ts.dataset
    self.mesh = parallel.make_mesh()
    self.lr = finetune_lr(config)
    self.tx = finetune_optimizer(self.pcfg, self.lr)
    self.criterion = criteria.get(self.pcfg.criterion)
    self.seed = data_seed(config.seed)

  def model(self, spec):
    return models.build(spec, self.ds.num_classes, self.config.model.dtype)

  def template(self, spec):
    model = self.model(spec)
    state = jax.eval_shape(lambda k: train_lib.create_state(model, self.tx, k,
                                                            self.ds.image_shape),
                           jax.random.key(0))
    return jax.eval_shape(lambda s: prune.init_prune_state(s, spec, self.criterion.needs),
                          state)


def load_base(config, ps: PruneSetup):
  """The trained base network (spec and TrainState with a fresh fine-tune optimizer)."""
  base_dir = config.prune.base_workdir
  ckpt_dir = os.path.join(base_dir, 'checkpoints')
  ckpts = ckpt_lib.Checkpoints(ckpt_dir) if base_dir and os.path.isdir(ckpt_dir) else None
  if ckpts is None or ckpts.latest_step() is None:
    raise UsageError(f'no trained checkpoint in prune.base_workdir={base_dir!r}; train the base '
                     'network first (python -m launch.train --config=... --workdir=DIR) and '
                     'point --config.prune.base_workdir at DIR')
  base_tx = train_lib.make_optimizer(config.train, ps.ts.steps_per_epoch)

  def load(step):
    spec = ckpts.restore_spec(step)
    model = ps.model(spec)
    template = jax.eval_shape(lambda k: train_lib.create_state(model, base_tx, k,
                                                               ps.ds.image_shape),
                              jax.random.key(0))
    return spec, ckpts.restore(ckpt_lib.abstract(template, parallel.replicated(ps.mesh)),
                               step)[0]

  found = ckpts.restore_newest(load, quarantine=False)  # not this run's folder: only read it
  ckpts.close()
  if found is None:
    raise UsageError(f'no readable checkpoint in prune.base_workdir={base_dir!r} (see the '
                     'warnings above)')
  _, (spec, state) = found
  # A fresh optimizer, step counter and data stream (the prune run's own seed).
  state = train_lib.TrainState(jnp.zeros((), jnp.int32), state.params, state.batch_stats,
                               ps.tx.init(state.params), train_lib.data_rng(ps.seed))
  return spec, parallel.replicate(ps.mesh, state)


class _Pruning:
  """The prune run as a `loop.Task`: one round per period (see the module docstring)."""

  def __init__(self, p: PruneSetup, workdir, ckpts, writer, spec, meta, base_spec):
    self.p, self.pcfg, self.workdir, self.ckpts, self.writer = p, p.pcfg, workdir, ckpts, writer
    self.nc, self.size = p.ds.num_classes, p.ds.image_shape[0]
    self.measure = budget_size(self.pcfg, self.nc, self.size)
    self.spec, self.base_spec = spec, base_spec
    self.base_widths = dict(zip(base_spec.prunable_names, base_spec.prunable))
    self.removals, self.evaluations = meta.get('removals', []), meta.get('evaluations', [])
    self.snapshots, self.train_macs = meta.get('snapshots', []), meta.get('train_macs', 0)
    self.orig = meta.get('orig') or {n: list(range(w))
                                     for n, w in zip(spec.prunable_names, spec.prunable)}
    done = {s['budget'] for s in self.snapshots}
    self.budgets = sorted((b for b in self.pcfg.budgets if b not in done), reverse=True)
    # One-shot: the base network's scores (from its first round), and rounds per budget.
    self.scores = meta.get('scores')
    self.tune_periods = tune_periods(self.pcfg, len(p.ds.train_labels))
    self.key = jax.random.key(p.config.seed + 1)
    self.compilations, self.loop = 0, None
    self.compile()

  def compile(self):
    """Jitted prune and eval steps for the current spec (compiled on first call)."""
    self.compilations += 1
    model = self.p.model(self.spec)
    # prune.pad_mode: zero padding by default, as the reference's pruning script crops.
    augmentation = input_pipeline.device_augment(self.p.config, prune=True)
    self.step = parallel.jit(ops(self.spec).make_prune_step(
        model, self.p.tx, self.p.ds, **augmentation,
        accumulators=self.p.criterion.needs), donate_argnums=0)
    self.eval_step = self.compile_eval(model)

  def compile_eval(self, model):
    return parallel.jit(ops(model.spec).make_eval_step(model, self.p.ds),
                        out_shardings=parallel.replicated(self.p.mesh))

  def evaluate(self, eval_step, ps):
    return train_lib.evaluate(eval_step, ps, input_pipeline.eval_batches(self.p.config,
                                                                         self.p.ds),
                              self.p.mesh)

  def _compact(self, ps):
    ps, self.spec, self.orig = _compact(ps, self.spec, self.orig)
    ps = parallel.replicate(self.p.mesh, ps)  # fresh masks are process-local arrays
    self.compile()
    return ps

  def _snapshots(self, ps, due, done):
    """Snapshots at the budgets `due`: the network compacted (a copy; the run goes on masked,
    with no recompilation of its step), evaluated and saved."""
    snap, spec, _ = _compact(ps, self.spec, self.orig)
    snap = parallel.replicate(self.p.mesh, snap)
    result, preds = self.evaluate(self.compile_eval(self.p.model(spec)), snap)
    for b in due:
      self.snapshots.append(self._snapshot(snap.train, spec, b, result, preds, done))
      self.budgets.remove(b)

  def end_period(self, ps, done):
    pcfg = self.pcfg
    rnd = done // pcfg.prune_every - 1
    live = _mask_spec(self.spec, ps.mask)
    params = ops(self.spec).live_params(self.spec, ps.mask, self.nc)
    macs = spec_lib.count_macs(live, self.size, self.nc)
    self.train_macs += train_lib.training_macs(macs, pcfg.prune_every * pcfg.batch_size)
    if one_shot(pcfg):
      return self._one_shot(ps, rnd, done, params, macs)
    due = [b for b in self.budgets if (macs if self.measure.unit == 'macs' else params) <= b]
    final = rnd == pcfg.rounds
    if due or final or rnd % pcfg.eval_every_rounds == 0:
      self._evaluate(ps, rnd, done, params, macs)
    if due:
      self._snapshots(ps, due, done)
    if final:
      return ps, True
    if not self.budgets and pcfg.stop_after_last_budget:
      metrics_lib.log('all budgets reached, stopping')
      return ps, True
    return self._remove(ps, rnd, done)

  def _evaluate(self, ps, rnd, done, params, macs):
    """A point of the trajectory: the tuned network's test error at its current size."""
    result, _ = self.evaluate(self.eval_step, ps)
    self.evaluations.append({'round': rnd, 'step': done, 'removed': len(self.removals),
                             'params': params, 'macs': macs, **result,
                             'train_macs': self.train_macs, 'seconds': self.loop.elapsed()})
    self.writer.write(done, {**result, 'params': params, 'round': rnd})

  def _scores(self, ps, rnd, alive):
    """The criterion's scores of the current channels, normalised per `prune.normalise`."""
    stats = jax.device_get(ps.stats)
    ctx = criteria.Context(self.spec, ps.train.params, stats.get('fisher'),
                           jax.random.fold_in(self.key, rnd), self.pcfg, self.size, self.nc,
                           stats=stats, steps=self.pcfg.prune_every)
    return criteria.normalise(self.p.criterion.fn(ctx), self.pcfg.get('normalise', 'none'),
                              alive)

  def _one_shot(self, ps, rnd, done, params, macs):
    """Round 0 scores the base network; then each budget's rounds tune the network cut to it,
    and the last one takes its snapshot and cuts the base network to the next budget."""
    budgets = sorted(self.pcfg.budgets, reverse=True)
    if rnd == 0:
      self._evaluate(ps, rnd, done, params, macs)
      alive = {n: np.asarray(ps.mask[n]) > 0 for n in self.spec.prunable_names}
      self.scores = {n: np.asarray(v, np.float64).tolist()
                     for n, v in self._scores(ps, rnd, alive).items()}
      return self._cut(ps, budgets[0], rnd, done), False
    i, r = divmod(rnd - 1, self.tune_periods)
    if r < self.tune_periods - 1:
      return ps, False
    self._evaluate(ps, rnd, done, params, macs)
    if budgets[i] in self.budgets:
      self._snapshots(ps, [budgets[i]], done)
    if i + 1 == len(budgets):
      return ps, True
    return self._cut(ps, budgets[i + 1], rnd, done), False

  def _cut(self, ps, budget, rnd, done):
    """The base network (fresh optimizer, the run's step count) cut to `budget` by the base
    network's scores, compacted and compiled for its shapes."""
    spec = self.base_spec
    _, base = load_base(self.p.config, self.p)
    base = base.replace(step=ps.train.step, rng=ps.train.rng)
    cut = schedules.cut(spec, self.scores, budget, self.measure,
                        self.pcfg.get('per_layer_ratio', 0.0))
    mask = {n: np.ones((w,), np.float32) for n, w in zip(spec.prunable_names, spec.prunable)}
    for name, c, score in cut:
      mask[name][c] = 0.0
      self.removals.append({'round': rnd, 'step': done, 'budget': budget, 'layer': name,
                            'channel': int(c), 'score': score,
                            'params': ops(spec).live_params(spec, mask, self.nc)})
    metrics_lib.log(f'one-shot: {len(cut)} channels cut for budget {budget:,} '
                    f'{self.measure.unit}')
    # A budget's cost is the scoring round's plus its own tuning: each starts from the base.
    self.train_macs = self.evaluations[0]['train_macs']
    self.spec = spec
    self.orig = {n: list(range(w)) for n, w in zip(spec.prunable_names, spec.prunable)}
    stats = {a: {n: np.zeros((w,), np.float32) for n, w in self.base_widths.items()}
             for a in ps.stats}
    ps = prune.PruneState(base, mask, stats)
    return self._compact(ps)

  def _remove(self, ps, rnd, done):
    """Removes the `channels_per_round` least salient live channels (one by default, as the
    paper); compacts once `compact_every` are masked."""
    spec, pcfg = self.spec, self.pcfg
    alive = {n: np.asarray(ps.mask[n]) > 0 for n in spec.prunable_names}
    ranked = prune.rank(spec, self._scores(ps, rnd, alive), alive)
    if not ranked:
      metrics_lib.log(f'round {rnd}: no prunable channel left, stopping')
      return ps, True
    chosen = schedules.get(pcfg.get('schedule', 'iterative'))(schedules.Round(
        rnd, spec, ranked, alive, self.base_widths, pcfg))
    chosen = [tuple(r[:3]) for r in chosen]
    gone = {(name, c) for name, c, _ in chosen}
    if len(gone) != len(chosen) or not all(alive[name][c] for name, c in gone):
      raise ValueError(f'schedule {pcfg.get("schedule")!r} chose a removed or repeated channel')
    mask = dict(ps.mask)
    position = {(r[0], r[1]): i for i, r in enumerate(ranked)}
    for name, c, score in chosen:
      mask[name] = mask[name].at[c].set(0.0)
      # The next channel in line that stays says how decisive the removal was (near ties flip
      # under float rounding).
      nxt = next((r for r in ranked[position[name, c] + 1:] if (r[0], r[1]) not in gone), None)
      self.removals.append({
          'round': rnd, 'step': done, 'layer': name, 'channel': int(self.orig[name][c]),
          'score': score,
          'params': ops(spec).live_params(spec, mask, self.nc),
          'runner_up': nxt and [nxt[0], int(self.orig[nxt[0]][nxt[1]]), nxt[2]]})
    # Replicated like the state the step returns, so the step is not compiled a second time for
    # the single-device arrays eager ops make.
    mask, stats = parallel.replicate(self.p.mesh,
                                     (mask, jax.tree.map(jnp.zeros_like, ps.stats)))
    ps = ps.replace(mask=mask, stats=stats)
    dead = sum(int(np.sum(~alive[n])) for n in spec.prunable_names) + len(chosen)
    if dead >= pcfg.compact_every:
      ps = self._compact(ps)
    return ps, False

  def history(self) -> dict:
    return {'removals': self.removals, 'evaluations': self.evaluations}

  def _snapshot(self, state, spec, budget, result, preds, done) -> dict:
    """Writes the compacted, tuned network at `budget` with its spec, history and predictions."""
    nc = self.nc
    out = {'budget': budget, 'budget_unit': self.measure.unit,
           'params': spec_lib.count_params(spec, nc),
           'macs': spec_lib.count_macs(spec, self.size, nc),
           'round': done // self.pcfg.prune_every - 1, 'step': done,
           'removed': len(self.removals), **result,
           # The cost of reaching this snapshot (the base network's training not included).
           'prune_train_macs': self.train_macs, 'prune_seconds': self.loop.elapsed()}
    d = os.path.join(self.workdir, 'snapshots', str(budget))
    out['dir'] = d
    if jax.process_index() == 0:
      os.makedirs(d, exist_ok=True)
      spec_lib.save(spec, os.path.join(d, 'spec.json'))
      inference.write_model_json(d, spec, self.p.ds, self.p.config.model.dtype)
      stats.save_predictions(os.path.join(d, 'predictions.npz'), **preds)
    train_lib.write_json(os.path.join(d, 'history.json'), self.history())
    train_lib.write_json(os.path.join(d, 'result.json'), out)
    # A snapshot re-taken after a resume replaces the one an interrupted run left (Orbax would
    # not save a step it already holds; the state may differ, e.g. on another CPU kind).
    ckpt_dir = os.path.join(d, 'checkpoint')
    if jax.process_index() == 0 and os.path.isdir(ckpt_dir):
      shutil.rmtree(ckpt_dir)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'jaxbud_snapshot_{budget}')
    ck = ckpt_lib.Checkpoints(ckpt_dir, keep=1)
    ck.save(done, state, spec, {'budget': budget})
    ck.wait()
    ck.close()
    metrics_lib.log(f'snapshot at budget {budget:,}: {out["params"]:,} params, '
                    f'test error {out["test_error"]:.4f} -> {d}')
    return out

  def log_line(self, done, means):
    params = spec_lib.count_params(self.spec, self.nc) if not self.removals else (
        self.removals[-1]['params'])
    last = (f'  last removed {self.removals[-1]["layer"]}[{self.removals[-1]["channel"]}]'
            if self.removals else '')
    return (f'params {params:,}  loss {means["train_loss"]:.4f}{last}',
            {'params': params, 'round': done // self.pcfg.prune_every})

  def save(self, done, ps, meta):
    self.ckpts.save(done, ps, self.spec, {
        **self.history(), 'snapshots': self.snapshots, 'orig': self.orig,
        'train_macs': self.train_macs, 'scores': self.scores, **meta})

  def params(self, ps):
    return ps.train.params


def prune_and_tune(config: ml_collections.ConfigDict, workdir: str, dataset=None) -> dict:
  """Runs (or resumes) the prune-and-tune run of `config` in `workdir`; returns its summary."""
  pcfg = config.prune
  criteria.get(pcfg.criterion)
  check_base_data(config)
  ts = train_lib.setup(config, dataset)
  p = PruneSetup(config, ts)
  base_spec, state = load_base(config, p)
  _validate(config, base_spec, p.ds.num_classes, p.ds.image_shape[0])
  check_module_criterion(base_spec, p.criterion)
  metrics_lib.make_workdir(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))

  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=2)

  def load(step):
    spec = ckpts.restore_spec(step)
    return (spec, *ckpts.restore(ckpt_lib.abstract(p.template(spec),
                                                   parallel.replicated(p.mesh)), step))

  start, meta = 0, {}
  restored = ckpts.restore_newest(load)
  if restored is not None:
    start, (spec, ps, meta) = restored
    metrics_lib.log(f'resumed prune run at step {start} ({len(meta["removals"])} removed)')
  else:
    # Replicated like everything the step returns (one compilation of the step, not two).
    spec, ps = base_spec, parallel.replicate(
        p.mesh, prune.init_prune_state(state, base_spec, p.criterion.needs))
  writer = metrics_lib.Writer(workdir, resume_step=start)
  base_params = spec_lib.count_params(base_spec, p.ds.num_classes)
  task_rounds = total_rounds(pcfg, len(p.ds.train_labels))
  rounds = (f'one-shot to each budget, {task_rounds - 1} rounds of tuning after the scoring '
            'round' if one_shot(pcfg) else f'{pcfg.rounds} rounds')
  metrics_lib.log(f'pruning {base_spec.family} ({base_params:,} params) with '
                  f'{pcfg.criterion}: {rounds} of {pcfg.prune_every} steps at lr {p.lr:g}, '
                  f'budgets {tuple(pcfg.budgets)} {schedules.budget_unit(pcfg)}')

  task = _Pruning(p, workdir, ckpts, writer, spec, meta, base_spec)
  every = pcfg.prune_every
  total = task_rounds * every
  loop = loop_lib.Loop(ckpts=ckpts, writer=writer, where=f'prune run in {workdir}',
                       total=total, period=every, log_every=pcfg.log_every_rounds * every,
                       checkpoint_every=pcfg.checkpoint_every_rounds * every,
                       log_period_ends=False, unit=('round', every), restored_meta=meta)
  task.loop = loop
  if not meta.get('finished'):
    batches = input_pipeline.train_batches(config, p.ds, seed=p.seed,
                                           batch_size=pcfg.batch_size, start=start,
                                           stop=total, mesh=p.mesh)
    loop.run(task, ps, batches, start)
  ckpts.wait()
  ckpts.close()
  writer.close()
  for b in task.budgets:
    metrics_lib.log(f'budget {b:,} not reached in {pcfg.rounds} rounds')
  summary = {'criterion': pcfg.criterion, 'schedule': pcfg.get('schedule', 'iterative'),
             'budget_unit': task.measure.unit, 'base_params': base_params,
             'removed': len(task.removals), 'compilations': task.compilations,
             'lr': p.lr, 'data_seed': p.seed,
             'seconds': meta['elapsed_s'] if meta.get('finished') else loop.elapsed(),
             'train_macs': task.train_macs, 'snapshots': task.snapshots}
  train_lib.write_json(os.path.join(workdir, 'history.json'), task.history())
  train_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary
