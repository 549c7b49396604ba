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
  the start. The step's second shape, for an epoch's last partial batch, is compiled before
  the loop (`partial_batch_compile`), so that compilation stays out of the window too.
`loop_overhead` is the loop's time per step over the bare step's, minus one: what the host adds.

`project(result, config)` turns the measured rates into the wall time of the runs `config`
describes (a study config: its train, prune and study sections).
"""
import math
import os
import time

import jax

from jaxbud import bench
from jaxbud import data as data_lib
from jaxbud import input_pipeline
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


def steady_rate(records: list[dict]) -> tuple[float, int, int] | None:
  """(steps per second, first step, last step) between the first and last logged steps of a
  run's metrics.jsonl records (see the module docstring); None with fewer than two."""
  logged = [(r['step'], r['steps_per_s']) for r in records if r.get('steps_per_s')]
  if len(logged) < 2:
    return None
  (d1, r1), (d2, r2) = logged[0], logged[-1]
  return (d2 - d1) / (d2 / r2 - d1 / r1), d1, d2


def bare_steps(ts: train_lib.TrainSetup, steps: int, repeats: int) -> dict:
  """Compile and pipelined times of the run's bare train step and Fisher prune step."""
  config, ds = ts.config, ts.dataset
  mesh = parallel.make_mesh()
  new_state = lambda: ts.initial_state(mesh)
  _, batch = next(input_pipeline.train_batches(config, ds, seed=config.seed,
                                               batch_size=config.train.batch_size, start=0,
                                               stop=1, mesh=mesh))
  out = {}
  state = new_state()
  step, out['train_compile_s'] = _compile(
      train_lib.make_train_step(ts.model, ts.tx, ds, **input_pipeline.device_augment(config)),
      (state, batch), donate=0)
  out['train_step_s'] = bench.pipelined_median(step, (state, batch), steps, repeats)
  del step
  ps = jax.jit(prune.init_prune_state, static_argnums=1)(new_state(), ts.spec)
  prune_aug = input_pipeline.device_augment(config, prune='prune' in config)
  step, out['fisher_compile_s'] = _compile(
      prune.make_prune_step(ts.model, ts.tx, ds, **prune_aug), (ps, batch),
      donate=0)
  out['fisher_step_s'] = bench.pipelined_median(step, (ps, batch), steps, repeats)
  out['fisher_vs_train'] = out['fisher_step_s'] / out['train_step_s']
  # One evaluation pass over the test split: the first pass compiles, the second is timed.
  eval_step = parallel.jit(train_lib.make_eval_step(ts.model, ds),
                           out_shardings=parallel.replicated(mesh))
  state = new_state()
  passes = []
  for _ in range(2):
    t = time.perf_counter()
    train_lib.evaluate(eval_step, state, input_pipeline.eval_batches(config, ds), mesh)
    passes.append(time.perf_counter() - t)
  out['eval_s'], out['eval_compile_s'] = passes[1], max(passes[0] - passes[1], 0.0)
  return out


def partial_batch_compile(ts: train_lib.TrainSetup) -> float:
  """Seconds to compile the training loop's own jitted step for the epoch's last, partial
  batch (0 if every batch is full), done before the loop so that the timed window between its
  first and last logged steps holds no compilation."""
  config, ds = ts.config, ts.dataset
  n, b = len(ds.train_labels), config.train.batch_size
  spe, last = data_lib.epoch_layout(n, b, drop_last=False)
  if last == b:
    return 0.0
  mesh = parallel.make_mesh()
  _, batch = next(input_pipeline.train_batches(config, ds, seed=config.seed, batch_size=b,
                                               start=spe - 1, stop=spe, mesh=mesh,
                                               drop_last=False))
  _, step, _ = ts.functions(mesh)  # the function train_and_evaluate(config, ..., ts) calls
  t = time.perf_counter()
  jax.block_until_ready(step(ts.initial_state(mesh), batch))
  return time.perf_counter() - t


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
  ts = train_lib.setup(config)
  tcfg = config.train
  result = {
      'spec': spec_lib.to_json(ts.spec), 'family': ts.spec.family,
      'params': spec_lib.count_params(ts.spec, ts.dataset.num_classes),
      'dataset': ts.dataset.name, 'image_shape': list(ts.dataset.image_shape),
      'train_images': len(ts.dataset.train_labels),
      'test_images': len(ts.dataset.test_labels), 'batch_size': tcfg.batch_size,
      'eval_batch_size': tcfg.eval_batch_size, 'dtype': config.model.dtype,
      'bare_steps': bare_steps_n, 'repeats': repeats,
      'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
      'device_count': jax.device_count(), 'jax_version': jax.__version__,
  }
  result.update(bare_steps(ts, bare_steps_n, repeats))
  log(f'bare train step {result["train_step_s"] * 1e3:.2f} ms (compile '
      f'{result["train_compile_s"]:.1f} s), Fisher step {result["fisher_step_s"] * 1e3:.2f} ms '
      f'({result["fisher_vs_train"]:.3f}x), eval pass {result["eval_s"]:.2f} s')
  result['partial_batch_compile_s'] = partial_batch_compile(ts)
  t = time.perf_counter()
  final = train_lib.train_and_evaluate(config, workdir, ts)
  result['loop_wall_s'] = time.perf_counter() - t
  result['loop_train_seconds'] = final['train_seconds']
  result['loop_steps'] = ts.total_steps
  rate = steady_rate(metrics_lib.read(workdir))
  if rate is None:
    raise UsageError(f'the loop logged fewer than two steps ({ts.total_steps} steps, '
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


def _prune_run_seconds(m: dict, pcfg, steps: int) -> tuple[float, int]:
  """(seconds, compilations) of a prune run of `steps` steps: the loop's rate scaled by the
  Fisher step's cost, one evaluation every `eval_every_rounds` rounds and per snapshot, and one
  compile of the prune and eval steps per compaction and per snapshot."""
  rounds = steps // pcfg.prune_every
  compilations = math.ceil(rounds / pcfg.compact_every) + len(pcfg.budgets)
  evals = math.ceil(rounds / pcfg.eval_every_rounds) + len(pcfg.budgets)
  return (steps * m['loop_step_s'] * m['fisher_vs_train'] + evals * m['eval_s']
          + compilations * (m['fisher_compile_s'] + m['eval_compile_s'])), compilations


def project(m: dict, config) -> list[dict]:
  """Projected wall time of the runs a study `config` describes, from `measure`'s result `m`.

  The runs and their steps are the study's plan (`jaxbud.study.plan`, on the config's dataset,
  e.g. CIFAR's 50,000 images). Every network is timed at the measured network's rates: for a
  study of that network this is an upper bound, since every other network in it is smaller.
  """
  tcfg, pcfg = config.train, config.prune
  plan = study_lib.plan(config)
  base = plan[0]
  fixed = _fixed_seconds(m, tcfg.epochs, tcfg.eval_every_epochs)
  train_s = base['steps'] * m['loop_step_s'] + fixed
  full_prune = (pcfg.rounds + 1) * pcfg.prune_every
  prune_s, compilations = _prune_run_seconds(m, pcfg, full_prune)
  study_s = 0.0
  for r in plan:
    if r['kind'] == 'prune':
      study_s += r['runs'] * _prune_run_seconds(m, pcfg, r['steps'])[0]
    else:
      study_s += r['runs'] * (r['steps'] * m['loop_step_s'] + fixed)
  trainings = sum(r['runs'] for r in plan if r['kind'] == 'train')
  prunes = sum(r['runs'] for r in plan if r['kind'] == 'prune')
  return [
      {'what': f'train {tcfg.epochs} epochs', 'steps': base['steps'], 'seconds': train_s,
       'how': f'{base["steps"]} steps at the loop rate, '
              f'{math.ceil(tcfg.epochs / tcfg.eval_every_epochs)} evaluations, one compile'},
      {'what': f'prune {pcfg.rounds} rounds x {pcfg.prune_every} steps',
       'steps': full_prune, 'seconds': prune_s,
       'how': f'loop rate x Fisher/train step ratio, {compilations} compilations '
              f'(one per {pcfg.compact_every} removals and per budget), an evaluation every '
              f'{pcfg.eval_every_rounds} rounds and per snapshot'},
      {'what': f'study: {trainings} trainings + {prunes} prune runs',
       'steps': sum(r['runs'] * r['steps'] for r in plan), 'seconds': study_s, 'plan': plan,
       'how': 'the study plan (jaxbud.study.plan), every run at the measured network\'s rates '
              '(an upper bound), Scratch-B as the plan stretches it'},
  ]
