"""Prune-run cost against plain training: same number of steps, compilations included.

A prune-and-tune run of R rounds of `prune_every` steps is timed end to end (every compilation,
compaction, removal and trajectory evaluation included) next to (R + 1) * prune_every (its
tuning periods) plain SGD steps of the unpruned base
network with the same batch size, jitted once, compilation included. Both start from the same
trained base checkpoint, in the same process, one after the other.
"""
import json
import os
import shutil
import time

import jax

from jaxbud import input_pipeline
from jaxbud import metrics as metrics_lib
from jaxbud import parallel
from jaxbud import prune_tune
from jaxbud import train as train_lib


def compare(config, workdir: str) -> dict:
  """Trains the base if `workdir/base` has none, then times plain steps and the prune run."""
  base_dir = os.path.join(workdir, 'base')
  if not os.path.exists(os.path.join(base_dir, 'final.json')):
    train_lib.train_and_evaluate(config, base_dir)
  pcfg = config.prune
  with config.unlocked():
    pcfg.base_workdir = base_dir
  ts = train_lib.setup(config)
  p = prune_tune.PruneSetup(config, ts)
  spec, state = prune_tune.load_base(config, p)
  steps = (pcfg.rounds + 1) * pcfg.prune_every  # a prune run's tuning periods

  t0 = time.perf_counter()
  step = parallel.jit(train_lib.make_train_step(
      p.model(spec), p.tx, ts.dataset, **input_pipeline.device_augment(config, prune=True)),
                      donate_argnums=0)
  for _, batch in input_pipeline.train_batches(config, ts.dataset, seed=p.seed,
                                               batch_size=pcfg.batch_size, start=0,
                                               stop=steps, mesh=p.mesh):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  plain_s = time.perf_counter() - t0
  metrics_lib.log(f'plain training: {steps} steps in {plain_s:.1f} s')

  prune_dir = os.path.join(workdir, 'prune')
  shutil.rmtree(prune_dir, ignore_errors=True)  # always a full run, never a resumed one
  t0 = time.perf_counter()
  summary = prune_tune.prune_and_tune(config, prune_dir, ts.dataset)
  prune_s = time.perf_counter() - t0
  out = {'device_kind': jax.devices()[0].device_kind, 'spec': spec.to_json(),
         'rounds': pcfg.rounds, 'prune_every': pcfg.prune_every, 'steps': steps,
         'batch_size': pcfg.batch_size, 'criterion': pcfg.criterion,
         'compact_every': pcfg.compact_every, 'plain_seconds': plain_s,
         'prune_seconds': prune_s, 'ratio': prune_s / plain_s,
         'compilations': summary['compilations'], 'removed': summary['removed']}
  with open(os.path.join(workdir, 'bench_prune.json'), 'w') as f:
    json.dump(out, f, indent=1)
  return out
