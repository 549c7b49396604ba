"""Prune-and-tune runs: fine-tune a trained network, removing one channel every `prune_every` steps.

The network keeps fixed shapes between compactions: removed channels are masked by their gates
(exactly zero, see jaxbud.prune), so the jitted step is reused. Once `compact_every` channels are
masked, or a snapshot is due, the state is compacted (params, batch stats and momentum sliced)
and the step is compiled once for the smaller shapes. Snapshots at the configured parameter
budgets hold the compacted network, its spec, the prune history and its test error.

Layout of a run's workdir:
  checkpoints/            the run's own state (resume point), with the current spec
  snapshots/<params>/     spec.json, result.json, history.json, checkpoint/
  history.json            every removal: round, step, layer, original channel index, score,
                          the runner-up [layer, channel, score]
  summary.json            snapshots, compilations, timings
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxbud import checkpoint as ckpt_lib
from jaxbud import criteria
from jaxbud import inference
from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import preempt
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import train as train_lib


def finetune_optimizer(pcfg):
  """One SGD optimizer for the whole run (momentum persists across removals), constant lr."""
  return train_lib.make_optimizer(ml_collections.ConfigDict(dict(
      schedule='constant', lr=pcfg.lr, momentum=pcfg.momentum,
      weight_decay=pcfg.weight_decay)), steps_per_epoch=1)


def _validate(config, base_spec, num_classes):
  pcfg = config.prune
  for field in ('prune_every', 'rounds', 'compact_every', 'batch_size', 'checkpoint_every_rounds'):
    if pcfg[field] < 1:
      raise ValueError(f'prune.{field} must be >= 1, got {pcfg[field]}')
  parallel.check_batch(pcfg.batch_size, 'prune.batch_size')
  channels = sum(base_spec.prunable)
  if pcfg.rounds > channels:
    raise ValueError(f'prune.rounds={pcfg.rounds} removes more channels than the '
                     f'{channels} prunable channels of the base network')
  base = spec_lib.count_params(base_spec, num_classes)
  floor = spec_lib.count_params(base_spec.with_prunable([0] * len(base_spec.prunable)),
                                num_classes)
  for b in pcfg.budgets:
    if not floor <= b < base:
      raise ValueError(f'prune.budgets entry {b} must lie in [{floor}, {base}): the base network '
                       f'has {base} params and {floor} remain with every prunable channel gone')


def _mask_spec(spec, mask):
  return spec.with_prunable(int(np.sum(np.asarray(mask[n]))) for n in spec.prunable_names)


class _Run:
  """Mutable bookkeeping of one prune run around the pure state and step functions."""

  def __init__(self, config, workdir, run: train_lib.Run):
    self.config, self.pcfg, self.workdir, self.run = config, config.prune, workdir, run
    self.ds = run.dataset
    self.mesh = parallel.make_mesh()
    self.tx = finetune_optimizer(self.pcfg)
    self.criterion = criteria.get(self.pcfg.criterion)
    self.compilations = 0

  def model(self, spec):
    return models.build(spec, self.ds.num_classes, self.config.model.dtype)

  def compile(self, spec):
    """Jitted prune and eval steps for `spec`; compiled on first call, once per compaction."""
    self.compilations += 1
    model = self.model(spec)
    step = prune.make_prune_step(model, self.tx, self.ds, seed=self.config.seed,
                                 crop_pad=self.config.data.crop_pad, flip=self.config.data.flip,
                                 fisher=self.criterion.needs_fisher)
    return (parallel.jit(step, donate_argnums=0),
            parallel.jit(train_lib.make_eval_step(model, self.ds)))

  def template(self, spec):
    model = self.model(spec)
    state = jax.eval_shape(lambda k: train_lib.create_state(model, self.tx, k,
                                                            self.ds.image_shape),
                           jax.random.key(0))
    return jax.eval_shape(lambda s: prune.init_prune_state(s, spec), state)

  def evaluate(self, eval_step, ps):
    return train_lib.evaluate(eval_step, ps.train, self.ds.test_images, self.ds.test_labels,
                              self.config.train.eval_batch_size, self.mesh)


def _compact(ps: prune.PruneState, spec, orig):
  """Slices away masked channels; returns (state, spec, orig index map) for the smaller net."""
  keep = {n: np.flatnonzero(np.asarray(ps.mask[n]) > 0).astype(np.int32)
          for n in spec.prunable_names}
  new_spec = spec.with_prunable(len(keep[n]) for n in spec.prunable_names)
  train_state = prune.shrink_state(ps.train, spec, keep)
  mask = {n: jnp.ones((len(keep[n]),), jnp.float32) for n in spec.prunable_names}
  saliency = {n: jnp.take(ps.saliency[n], jnp.asarray(keep[n])) for n in spec.prunable_names}
  orig = {n: [orig[n][i] for i in keep[n]] for n in spec.prunable_names}
  return prune.PruneState(train_state, mask, saliency), new_spec, orig


def load_base(config, r: _Run):
  """The trained base network (spec and TrainState with a fresh fine-tune optimizer)."""
  base_dir = config.prune.base_workdir
  ckpt_dir = os.path.join(base_dir, 'checkpoints')
  ckpts = ckpt_lib.Checkpoints(ckpt_dir) if base_dir and os.path.isdir(ckpt_dir) else None
  if ckpts is None or ckpts.latest_step() is None:
    raise ValueError(f'no trained checkpoint in prune.base_workdir={base_dir!r}; train the base '
                     'network first (python -m launch.train --config=... --workdir=DIR) and '
                     'point --config.prune.base_workdir at DIR')
  base_tx = train_lib.make_optimizer(config.train, r.run.steps_per_epoch)

  def load(step):
    spec = ckpts.restore_spec(step)
    model = r.model(spec)
    template = jax.eval_shape(lambda k: train_lib.create_state(model, base_tx, k,
                                                               r.ds.image_shape),
                              jax.random.key(0))
    return spec, ckpts.restore(ckpt_lib.abstract(template, parallel.replicated(r.mesh)), step)[0]

  found = ckpts.restore_newest(load, quarantine=False)  # not this run's folder: only read it
  ckpts.close()
  if found is None:
    raise ValueError(f'no readable checkpoint in prune.base_workdir={base_dir!r} (see the '
                     'warnings above)')
  _, (spec, state) = found
  state = train_lib.TrainState(jnp.zeros((), jnp.int32), state.params, state.batch_stats,
                               r.tx.init(state.params))
  return spec, state


def prune_and_tune(config: ml_collections.ConfigDict, workdir: str, dataset=None) -> dict:
  """Runs (or resumes) the prune-and-tune run of `config` in `workdir`; returns its summary."""
  pcfg = config.prune
  criteria.get(pcfg.criterion)
  run = train_lib.setup(config, dataset)
  r = _Run(config, workdir, run)
  base_spec, state = load_base(config, r)
  _validate(config, base_spec, r.ds.num_classes)
  metrics_lib.make_workdir(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))

  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=2)

  def load(step):
    spec = ckpts.restore_spec(step)
    return (spec, *ckpts.restore(ckpt_lib.abstract(r.template(spec),
                                                   parallel.replicated(r.mesh)), step))

  restored = ckpts.restore_newest(load)
  if restored is not None:
    _, (spec, ps, meta) = restored
    history, snapshots, orig = meta['history'], meta['snapshots'], meta['orig']
    start_round, partial = meta['round'], meta.get('partial', 0)
    pending = preempt.unpack_pending(meta.get('pending'))
    metrics_lib.log(f'resumed prune run at round {start_round} (+{partial} steps, '
                    f'{len(history)} removed)')
  else:
    spec, ps = base_spec, prune.init_prune_state(state, base_spec)
    history, snapshots, start_round, partial, pending = [], [], 0, 0, []
    orig = {n: list(range(w)) for n, w in zip(spec.prunable_names, spec.prunable)}
  resume_step = start_round * pcfg.prune_every + partial
  writer = metrics_lib.Writer(workdir, resume_step=resume_step)
  nc, size = r.ds.num_classes, r.ds.image_shape[0]
  budgets = sorted((b for b in pcfg.budgets if b not in {s['budget'] for s in snapshots}),
                   reverse=True)
  base_params = spec_lib.count_params(base_spec, nc)
  metrics_lib.log(f'pruning {base_spec.family} ({base_params:,} params) with '
                  f'{pcfg.criterion}: {pcfg.rounds} rounds of {pcfg.prune_every} steps, '
                  f'budgets {tuple(pcfg.budgets)}')

  step_fn, eval_fn = r.compile(spec)
  progress = metrics_lib.Progress(pcfg.rounds, start_round, unit='round')
  key = jax.random.key(config.seed + 1)
  t0 = time.perf_counter()

  def save(step, **meta):
    ckpts.save(step, ps, spec, {'history': history, 'snapshots': snapshots, 'orig': orig,
                                'pending': preempt.pack_pending(pending), **meta})

  def check(losses, first_step):  # the NaN/Inf guard, before a removal or a save
    preempt.check_finite(losses, first_step, ps.train.params, f'prune run in {workdir}',
                         ckpts.describe_latest)

  with preempt.Preemption() as preemption:
    for rnd in range(start_round, pcfg.rounds):
      first = rnd * pcfg.prune_every
      skip, partial, new, preempted = partial, 0, [], None
      for step, batch in train_lib.batches(r.ds, config.seed, pcfg.batch_size, first + skip,
                                           first + pcfg.prune_every, r.mesh):
        ps, m = step_fn(ps, batch)
        new.append(m)
        if step + 1 < first + pcfg.prune_every and preemption.requested(step + 1):
          preempted = step + 1 - first  # steps of this round done
          break
      new = jax.device_get(new)
      check([m['train_loss'] for m in new], first + skip + 1)
      pending.extend(new)
      if preempted is not None:
        save(first + preempted, round=rnd, partial=preempted)
        preempt.stop(f'round {rnd} after {preempted} of its {pcfg.prune_every} steps', ckpts,
                     writer)
      alive = {n: np.asarray(ps.mask[n]) > 0 for n in spec.prunable_names}
      ctx = criteria.Context(spec, ps.train.params,
                             jax.device_get(ps.saliency) if r.criterion.needs_fisher else None,
                             jax.random.fold_in(key, rnd), pcfg, size, nc)
      ranked = prune.rank(spec, r.criterion.fn(ctx), alive)
      if not ranked:
        metrics_lib.log(f'round {rnd}: no prunable channel left, stopping')
        break
      name, c, score = ranked[0]
      mask = dict(ps.mask)
      mask[name] = mask[name].at[c].set(0.0)
      ps = ps.replace(mask=mask, saliency=jax.tree.map(jnp.zeros_like, ps.saliency))
      live_spec = _mask_spec(spec, mask)
      live_params = spec_lib.count_params(live_spec, nc)
      # The runner-up says how decisive the removal was (near ties flip under float rounding).
      runner_up = ([ranked[1][0], int(orig[ranked[1][0]][ranked[1][1]]), ranked[1][2]]
                   if len(ranked) > 1 else None)
      history.append({'round': rnd, 'step': first + pcfg.prune_every, 'layer': name,
                      'channel': int(orig[name][c]), 'score': score, 'params': live_params,
                      'runner_up': runner_up})
      dead = sum(int(np.sum(~alive[n])) for n in spec.prunable_names) + 1
      due = [b for b in budgets if live_params <= b]
      if due or dead >= pcfg.compact_every:
        ps, spec, orig = _compact(ps, spec, orig)
        ps = parallel.replicate(r.mesh, ps)  # fresh masks are process-local arrays
        step_fn, eval_fn = r.compile(spec)
      for b in due:
        snapshots.append(_snapshot(r, ps, spec, history, b, eval_fn))
        budgets.remove(b)
      done = rnd + 1
      if done % pcfg.log_every_rounds == 0 or done == pcfg.rounds:
        means = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(pending))
        pending = []
        writer.write(done * pcfg.prune_every, {**means, 'params': live_params, 'round': done})
        metrics_lib.log(f'{progress.tick(done)}  params {live_params:,}  '
                        f'loss {means["train_loss"]:.4f}  '
                        f'last removed {name}[{history[-1]["channel"]}]')
      if done % pcfg.checkpoint_every_rounds == 0 or done == pcfg.rounds:
        save(done * pcfg.prune_every, round=done)
      if not budgets and pcfg.stop_after_last_budget:
        metrics_lib.log('all budgets reached, stopping')
        break
      if done < pcfg.rounds and preemption.requested(done * pcfg.prune_every):
        if done % pcfg.checkpoint_every_rounds:
          save(done * pcfg.prune_every, round=done)
        preempt.stop(f'{done} of {pcfg.rounds} rounds', ckpts, writer)
  ckpts.wait()
  ckpts.close()
  writer.close()
  summary = {'criterion': pcfg.criterion, 'base_params': base_params,
             'removed': len(history), 'compilations': r.compilations,
             'seconds': time.perf_counter() - t0, 'snapshots': snapshots}
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, 'history.json'), history)
    _write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


def _write_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1)


def _snapshot(r: _Run, ps, spec, history, budget, eval_fn) -> dict:
  """Writes the compacted network at `budget` with its spec, history and test error."""
  nc = r.ds.num_classes
  result = {'budget': budget, 'params': spec_lib.count_params(spec, nc),
            'macs': spec_lib.count_macs(spec, r.ds.image_shape[0], nc),
            'round': history[-1]['round'] + 1, 'step': history[-1]['step'],
            'removed': len(history), **r.evaluate(eval_fn, ps)}
  d = os.path.join(r.workdir, 'snapshots', str(budget))
  result['dir'] = d
  if jax.process_index() == 0:
    os.makedirs(d, exist_ok=True)
    spec_lib.save(spec, os.path.join(d, 'spec.json'))
    inference.write_model_json(d, spec, r.ds, r.config.model.dtype)
    _write_json(os.path.join(d, 'history.json'), history)
    _write_json(os.path.join(d, 'result.json'), result)
  ck = ckpt_lib.Checkpoints(os.path.join(d, 'checkpoint'), keep=1)
  ck.save(result['step'], ps.train, spec, {'budget': budget})
  ck.wait()
  ck.close()
  metrics_lib.log(f'snapshot at budget {budget:,}: {result["params"]:,} params, '
                  f'test error {result["test_error"]:.4f} -> {d}')
  return result
