"""The whole training loop against its bare step, and the paper's runs projected from the rates.

`measure(config, workdir)` times, in one process, on the config's model, batch and data:
- the bare train step and the Fisher prune step, jitted as the loops jit them, each called
  `bare_steps` times back to back on one device-resident batch with one sync at the end
  (`bench.pipelined_seconds`; the median of `repeats` such runs), and their compile times;
- one evaluation pass over the test split, after a first pass that compiled it;
- the training loop itself, `train.train_and_evaluate` for the config's epochs: host batch
  assembly and transfer, metrics, the NaN guard, checkpoints. Its steady rate is taken between
  its first and last logged steps, which leaves compilation out: metrics.jsonl's steps_per_s at
  step d is d over the seconds since the loop started, so step d was done d / steps_per_s after
  the start.
`loop_overhead` is the loop's time per step over the bare step's, minus one: what the host adds.

`project(result, config)` turns the measured rates into the wall time of the runs `config`
describes (a study config: its train, prune and study sections).
"""
import functools
import math
import os
import statistics
import time

import jax

from jaxbud import bench
from jaxbud import metrics as metrics_lib
from jaxbud import parallel
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import study as study_lib
from jaxbud import train as train_lib
from jaxbud.errors import UsageError


def _compile(fn, args, donate=()):
  start = time.perf_counter()
  compiled = parallel.jit(fn, donate_argnums=donate).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _pipelined(compiled, args, steps, repeats):
  """Median seconds per call over `repeats` pipelined runs (one untimed run first)."""
  _, args = bench.pipelined_seconds(compiled, args, max(1, steps // 4), stateful=True)
  times = []
  for _ in range(repeats):
    secs, args = bench.pipelined_seconds(compiled, args, steps, stateful=True)
    times.append(secs)
  return statistics.median(times)


def steady_rate(records: list[dict]) -> tuple[float, int, int] | None:
  """(steps per second, first step, last step) between the first and last logged steps of a
  run's metrics.jsonl records (see the module docstring); None with fewer than two."""
  logged = [(r['step'], r['steps_per_s']) for r in records if r.get('steps_per_s')]
  if len(logged) < 2:
    return None
  (d1, r1), (d2, r2) = logged[0], logged[-1]
  return (d2 - d1) / (d2 / r2 - d1 / r1), d1, d2


def bare_steps(run: train_lib.Run, steps: int, repeats: int) -> dict:
  """Compile and pipelined times of the run's bare train step and Fisher prune step."""
  config, ds = run.config, run.dataset
  mesh = parallel.make_mesh()
  init = jax.jit(functools.partial(train_lib.create_state, run.model, run.tx,
                                   image_shape=ds.image_shape),
                 out_shardings=parallel.replicated(mesh))
  _, batch = next(train_lib.batches(ds, config.seed, config.train.batch_size, 0, 1, mesh))
  kw = dict(seed=config.seed, crop_pad=config.data.crop_pad, flip=config.data.flip)
  out = {}
  state = init(jax.random.key(config.seed, impl='rbg'))
  step, out['train_compile_s'] = _compile(
      train_lib.make_train_step(run.model, run.tx, ds, **kw), (state, batch), donate=0)
  out['train_step_s'] = _pipelined(step, (state, batch), steps, repeats)
  del step
  ps = jax.jit(prune.init_prune_state, static_argnums=1)(
      init(jax.random.key(config.seed, impl='rbg')), run.spec)
  step, out['fisher_compile_s'] = _compile(
      prune.make_prune_step(run.model, run.tx, ds, fisher=True, **kw), (ps, batch), donate=0)
  out['fisher_step_s'] = _pipelined(step, (ps, batch), steps, repeats)
  out['fisher_vs_train'] = out['fisher_step_s'] / out['train_step_s']
  # One evaluation pass over the test split: the first pass compiles, the second is timed.
  eval_step = parallel.jit(train_lib.make_eval_step(run.model, ds))
  state = init(jax.random.key(config.seed, impl='rbg'))
  passes = []
  for _ in range(2):
    t = time.perf_counter()
    train_lib.evaluate(eval_step, state, ds.test_images, ds.test_labels,
                       config.train.eval_batch_size, mesh)
    passes.append(time.perf_counter() - t)
  out['eval_s'], out['eval_compile_s'] = passes[1], max(passes[0] - passes[1], 0.0)
  return out


def measure(config, workdir: str, bare_steps_n: int = 100, repeats: int = 3,
            log=metrics_lib.log) -> dict:
  """The bare steps, one evaluation and the training loop of `config` (see the module doc).

  `workdir` must not hold anything yet: a run found there would be resumed, not timed.
  `log`: a function of one string for the results as they come, or None.
  """
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise UsageError(f'loop benchmark workdir {workdir} is not empty; give a new folder')
  if bare_steps_n < 1 or repeats < 1:
    raise UsageError(f'loop.bare_steps and loop.repeats must be >= 1, got {bare_steps_n} '
                     f'and {repeats}')
  log = log or (lambda _: None)
  run = train_lib.setup(config)
  tcfg = config.train
  result = {
      'spec': spec_lib.to_json(run.spec), 'family': run.spec.family,
      'params': spec_lib.count_params(run.spec, run.dataset.num_classes),
      'dataset': run.dataset.name, 'image_shape': list(run.dataset.image_shape),
      'train_images': len(run.dataset.train_labels),
      'test_images': len(run.dataset.test_labels), 'batch_size': tcfg.batch_size,
      'eval_batch_size': tcfg.eval_batch_size, 'dtype': config.model.dtype,
      'bare_steps': bare_steps_n, 'repeats': repeats,
      'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
      'device_count': jax.device_count(), 'jax_version': jax.__version__,
  }
  result.update(bare_steps(run, bare_steps_n, repeats))
  log(f'bare train step {result["train_step_s"] * 1e3:.2f} ms (compile '
      f'{result["train_compile_s"]:.1f} s), Fisher step {result["fisher_step_s"] * 1e3:.2f} ms '
      f'({result["fisher_vs_train"]:.3f}x), eval pass {result["eval_s"]:.2f} s')
  t = time.perf_counter()
  final = train_lib.train_and_evaluate(config, workdir, run)
  result['loop_wall_s'] = time.perf_counter() - t
  result['loop_train_seconds'] = final['train_seconds']
  result['loop_steps'] = run.total_steps
  rate = steady_rate(metrics_lib.read(workdir))
  if rate is None:
    raise UsageError(f'the loop logged fewer than two steps ({run.total_steps} steps, '
                     f'log_every_steps={tcfg.log_every_steps}); train longer or log more often')
  steps_per_s, first, last = rate
  result.update(loop_window=[first, last], loop_steps_per_s=steps_per_s,
                loop_step_s=1 / steps_per_s,
                loop_overhead=1 / steps_per_s / result['train_step_s'] - 1,
                bare_steps_per_s=1 / result['train_step_s'])
  log(f'loop {steps_per_s:.2f} steps/s between steps {first} and {last} against the bare '
      f'step\'s {result["bare_steps_per_s"]:.2f}: overhead {result["loop_overhead"]:+.1%}')
  return result


def _fixed_seconds(m: dict, epochs: int, eval_every: int) -> float:
  """A training run's time besides its steps: its evaluations and its compilations."""
  evals = math.ceil(epochs / eval_every)
  return evals * m['eval_s'] + m['train_compile_s'] + m['eval_compile_s']


def _prune_run_seconds(m: dict, pcfg) -> tuple[float, int]:
  """(seconds, compilations): every round's steps at the loop's rate scaled by the Fisher step's
  cost, plus one compile of the prune and eval steps per compaction and one evaluation per
  budget snapshot."""
  compilations = math.ceil(pcfg.rounds / pcfg.compact_every) + len(pcfg.budgets)
  steps = pcfg.rounds * pcfg.prune_every
  return (steps * m['loop_step_s'] * m['fisher_vs_train'] + len(pcfg.budgets) * m['eval_s']
          + compilations * (m['fisher_compile_s'] + m['eval_compile_s'])), compilations


def study_runs(config, num_classes: int = 10) -> dict:
  """How many trainings and prune runs a study config makes, and their epochs, from the config.

  The pruned-from-scratch (and Scratch-B) networks exist only after pruning, so their count is
  one per budget; Scratch-B's epochs are counted at their cap, twice the base's.
  """
  scfg, epochs = config.study, config.train.epochs
  base = train_lib.build_spec(config.model, 3)
  widen = config.model.get('widen', 1.0)
  reduced = sum(len(study_lib.reduced_points(f, base, scfg.budgets, scfg.depths, num_classes,
                                             widen)) for f in scfg.reduced)
  per_budget = len(scfg.budgets)
  points = reduced + per_budget * 2  # + scratch and copycat
  seeds = len(scfg.seeds)
  scratch_b = per_budget * seeds if scfg.scratch_b else 0
  return {'base_runs': 1, 'prune_runs': len(scfg.criteria),
          'scratch_runs': points * seeds, 'scratch_b_runs': scratch_b,
          'reduced_points': reduced, 'seeds': seeds,
          'train_epochs': epochs * (1 + points * seeds) + 2 * epochs * scratch_b}


def project(m: dict, config, train_images: int = 50_000) -> list[dict]:
  """Projected wall time of the runs a study `config` describes, from `measure`'s result `m`.

  `train_images`: the training set of the projected runs (CIFAR's 50,000), whatever the
  measured run trained on. Every network is timed at the measured network's rates: for a study of that network this is
  an upper bound, since every other network in it is smaller. Prune runs are counted at their
  full `prune.rounds` (a run that stops at its last budget ends sooner).
  """
  tcfg, pcfg = config.train, config.prune
  spe = train_images // tcfg.batch_size
  fixed = _fixed_seconds(m, tcfg.epochs, tcfg.eval_every_epochs)
  train_s = tcfg.epochs * spe * m['loop_step_s'] + fixed
  prune_s, compilations = _prune_run_seconds(m, pcfg)
  runs = study_runs(config)
  trainings = runs['base_runs'] + runs['scratch_runs'] + runs['scratch_b_runs']
  study_s = (runs['train_epochs'] * spe * m['loop_step_s'] + trainings * fixed
             + runs['prune_runs'] * prune_s)
  return [
      {'what': f'train {tcfg.epochs} epochs', 'steps': tcfg.epochs * spe, 'seconds': train_s,
       'how': f'{tcfg.epochs} x {spe} steps at the loop rate, '
              f'{math.ceil(tcfg.epochs / tcfg.eval_every_epochs)} evaluations, one compile'},
      {'what': f'prune {pcfg.rounds} rounds x {pcfg.prune_every} steps',
       'steps': pcfg.rounds * pcfg.prune_every, 'seconds': prune_s,
       'how': f'loop rate x Fisher/train step ratio, {compilations} compilations '
              f'(one per {pcfg.compact_every} removals and per budget), '
              f'{len(pcfg.budgets)} snapshot evaluations'},
      {'what': f'study: {runs["base_runs"]} base + {runs["prune_runs"]} prune + '
               f'{runs["scratch_runs"] + runs["scratch_b_runs"]} from-scratch runs',
       'steps': runs['train_epochs'] * spe + runs['prune_runs'] * pcfg.rounds * pcfg.prune_every,
       'seconds': study_s, 'runs': runs,
       'how': 'every run at the measured network\'s rates (an upper bound), prune runs at their '
              'full rounds, Scratch-B at twice the epochs'},
  ]
