"""The study's report: results table (JSON, CSV), plots, and RQ1-RQ5 answered from the numbers.

Every sentence about a research question is computed from the rows of this run; nothing is
written in advance. Where the run has one seed, differences smaller than typical seed noise
are not meaningful, and the report says how many seeds each point has.
"""
import csv
import json
import os
import statistics
import time

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import metrics as metrics_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import spec as spec_lib

COLUMNS = ('arm', 'family', 'budget', 'params', 'macs', 'test_error', 'test_error_std', 'seeds',
           'latency_b1_s', 'latency_large_s', 'large_batch', 'train_seconds', 'compilations',
           'spec')


def inference_latency(spec, batch_sizes, image_shape, num_classes, repeats) -> dict:
  """{batch: median seconds} of jitted eval-mode inference on random uint8-range images.

  Weights are constants shaped by jax.eval_shape (values do not change dense conv timings), so
  the only compilation per batch size is the forward pass itself.
  """
  model = models.build(spec, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
  out = {}
  for b in batch_sizes:
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (b, *image_shape)), jnp.float32)
    fn = parallel.jit(model.apply).lower(variables, x).compile()
    jax.block_until_ready(fn(variables, x))  # warm-up
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(variables, x))
      times.append(time.perf_counter() - t)
    out[b] = statistics.median(times)
  return out


def add_latency(rows, image_shape, num_classes, scfg, cache_path=None):
  """Median jitted inference latency at batch 1 and a large batch for every row's spec.

  Measurements are kept in `cache_path` (JSON keyed by spec and batch sizes), so a re-run study
  does not compile and time the same networks again.
  """
  small, large = scfg.latency_batch_sizes
  cache = {}
  if cache_path and os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  measured = 0
  for r in rows:
    key = f'{r["spec"]}|{small}|{large}|{scfg.latency_repeats}'
    if key not in cache:
      lat = inference_latency(spec_lib.from_json(r['spec']), (small, large), image_shape,
                              num_classes, scfg.latency_repeats)
      cache[key] = {str(b): t for b, t in lat.items()}
      measured += 1
    r['latency_b1_s'] = cache[key][str(small)]
    r['latency_large_s'] = cache[key][str(large)]
    r['large_batch'] = large
  if cache_path:
    with open(cache_path, 'w') as f:
      json.dump(cache, f, indent=1)
  metrics_lib.log(f'latency measured for {measured} networks on '
                  f'{jax.devices()[0].device_kind} ({len(rows) - measured} reused)')


def _by(rows, arm, family=None):
  return sorted((r for r in rows if r['arm'] == arm and (family is None or r['family'] == family)),
                key=lambda r: r['params'])


def _fmt_err(r):
  s = f'{100 * r["test_error"]:.2f}%'
  return s + (f' ± {100 * r["test_error_std"]:.2f}' if r['seeds'] > 1 else '')


def _verdict(wins, n):
  if n == 0:
    return 'not measured in this run'
  if wins == n:
    return 'supported at every budget'
  if wins == 0:
    return 'not supported at any budget'
  return f'supported at {wins} of {n} budgets'


def _less(a: dict, b: dict) -> bool:
  """a's test error is lower than b's by more than float rounding (a mean of seeds that equals
  one run's error, e.g. 1.11% vs 1.11%, is a tie, not a win)."""
  return a['test_error'] < b['test_error'] - 1e-6


def answer(rows, config) -> dict:
  """{'RQ1': text, ...}: each research question answered from this run's rows."""
  main = config.study.main_criterion
  pruned = {r['budget']: r for r in _by(rows, 'pruned', main)}
  scratch = {r['budget']: r for r in _by(rows, 'scratch', main)}
  copycat = {r['budget']: r for r in _by(rows, 'copycat')}
  reduced = [r for r in rows if r['arm'] == 'reduced' and r['budget'] is not None]
  best_reduced = {}
  for r in reduced:
    b = r['budget']
    if b not in best_reduced or r['test_error'] < best_reduced[b]['test_error']:
      best_reduced[b] = r
  budgets = sorted(pruned)
  out = {}

  def pairs(others):
    """(budget, other row, pruned row) where both exist, and how often `other` errs less."""
    both = [(b, others[b], pruned[b]) for b in budgets if b in others]
    return both, sum(_less(o, p) for _, o, p in both)

  both, wins = pairs(best_reduced)
  out['RQ1'] = (f'Reduced networks beat {main}-pruned-and-tuned ones of the same size: '
                f'{_verdict(wins, len(both))}.',
                [f'budget {b:,}: best reduced ({rd["family"]}, {rd["params"]:,} params) '
                 f'{_fmt_err(rd)} vs {main}-pruned ({pr["params"]:,}) {_fmt_err(pr)}'
                 for b, rd, pr in both])
  both, wins = pairs(scratch)
  out['RQ2'] = ('The pruned architecture trained from scratch beats the pruned-and-tuned '
                f'network: {_verdict(wins, len(both))}.',
                [f'budget {b:,}: pruned architecture from scratch {_fmt_err(sc)} vs '
                 f'pruned-and-tuned {_fmt_err(pr)}' for b, sc, pr in both])

  lines, wins1, winsl, n = [], 0, 0, 0
  for b in budgets:
    if b in best_reduced and 'latency_b1_s' in pruned[b]:
      rd, pr = best_reduced[b], pruned[b]
      n += 1
      wins1 += rd['latency_b1_s'] < pr['latency_b1_s']
      winsl += rd['latency_large_s'] < pr['latency_large_s']
      lines.append(f'budget {b:,}: reduced ({rd["family"]}) {1e3 * rd["latency_b1_s"]:.2f} ms '
                   f'/ {1e3 * rd["latency_large_s"]:.1f} ms vs pruned '
                   f'{1e3 * pr["latency_b1_s"]:.2f} ms / {1e3 * pr["latency_large_s"]:.1f} ms '
                   f'(batch 1 / batch {rd["large_batch"]})')
  out['RQ3'] = (f'Reduced networks run inference faster than pruned ones of the same size: at '
                f'batch 1 {_verdict(wins1, n)}; at the large batch {_verdict(winsl, n)}.', lines)

  lines, wins_r, wins_p, n = [], 0, 0, 0
  for b in budgets:
    if b in copycat:
      cc = copycat[b]
      n += 1
      wins_p += _less(cc, pruned[b])
      line = (f'budget {b:,}: copycat ({cc["params"]:,} params) {_fmt_err(cc)}, pruned-and-tuned '
              f'{_fmt_err(pruned[b])}')
      if b in best_reduced:
        wins_r += not _less(best_reduced[b], cc)
        line += f', best reduced {_fmt_err(best_reduced[b])}'
      lines.append(line)
  out['RQ4'] = (f'Copycat architectures (one pruned profile scaled to each budget) beat '
                f'pruned-and-tuned networks: {_verdict(wins_p, n)}; they match or beat the best '
                f'reduced network: {_verdict(wins_r, n)}.', lines)

  base = next((r for r in rows if r['arm'] == 'base'), None)
  lines, cheaper, n = [], 0, 0
  for b in budgets:
    if b in best_reduced:
      rd, pr = best_reduced[b], pruned[b]
      n += 1
      cheaper += rd['train_seconds'] < pr['train_seconds']
      lines.append(f'budget {b:,}: prune-and-tune {pr["train_seconds"]:.0f} s (base training + '
                   f'pruning) for {_fmt_err(pr)}; reduced {rd["train_seconds"]:.0f} s for '
                   f'{_fmt_err(rd)}')
  out['RQ5'] = ('Training a small network directly costs less compute than prune-and-tune: '
                f'{_verdict(cheaper, n)} (wall-clock seconds on this machine'
                + (f'; the base alone took {base["train_seconds"]:.0f} s' if base else '')
                + '). Accuracy and speed: see RQ1 and RQ3.', lines)
  return out


def _save(fig, axes, path):
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_error(rows, path):
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (arm, fam), marker in zip(sorted({(r['arm'], r['family']) for r in rows}),
                                'os^vD<>phx*+'):
    pts = [r for r in rows if (r['arm'], r['family']) == (arm, fam)]
    pts.sort(key=lambda r: r['params'])
    ax.errorbar([r['params'] for r in pts], [max(100 * r['test_error'], 0.01) for r in pts],
                yerr=[100 * r['test_error_std'] for r in pts], marker=marker, capsize=2,
                label=f'{arm} ({fam})' if arm != fam else arm,
                linestyle='-' if len(pts) > 1 else 'none')
  ax.set_xscale('log')
  ax.set_yscale('log')  # a failed arm (tens of %) would otherwise flatten the rest
  ax.set_xlabel('parameters')
  ax.set_ylabel('test error (%, log scale)')
  ax.set_title('Test error vs parameters')
  _save(fig, [ax], path)


def _plot_latency(rows, path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in ((axes[0], 'latency_b1_s', 'batch 1'),
                         (axes[1], 'latency_large_s', f'batch {rows[0].get("large_batch")}')):
    for arm, marker in zip(sorted({r['arm'] for r in rows}), 'os^vD<>'):
      pts = sorted((r for r in rows if r['arm'] == arm), key=lambda r: r['params'])
      ax.plot([r['params'] for r in pts], [1e3 * r[key] for r in pts], marker, label=arm)
    ax.set_xscale('log')
    ax.set_xlabel('parameters')
    ax.set_ylabel('inference latency (ms)')
    ax.set_title(f'Latency vs parameters, {title}')
  _save(fig, axes, path)


def _plot_profiles(rows, path, main):
  fig, ax = plt.subplots(figsize=(8, 4))
  for r in _by(rows, 'pruned', main):
    ax.plot(spec_lib.from_json(r['spec']).prunable, marker='o', ms=3,
            label=f'pruned {r["params"]:,}')
  for r in (x for x in rows if x['arm'] == 'reduced' and x['budget'] is not None):
    if r['family'].endswith('width'):
      ax.plot(spec_lib.from_json(r['spec']).prunable, linestyle='--',
              label=f'reduced width {r["params"]:,}')
  base = next((r for r in rows if r['arm'] == 'base'), None)
  if base:
    ax.plot(spec_lib.from_json(base['spec']).prunable, color='k', lw=1, label='base')
  ax.set_xlabel('prunable layer (block order)')
  ax.set_ylabel('channels')
  ax.set_title('Per-layer width profile: pruned vs reduced')
  _save(fig, [ax], path)


def _table(rows) -> str:
  head = ('| arm | family | budget | params | MACs | test error | latency b1 (ms) | '
          'latency large (ms) | train s |\n|---|---|---|---|---|---|---|---|---|\n')
  body = ''.join(
      f'| {r["arm"]} | {r["family"]} | {r["budget"] or "-"} | {r["params"]:,} | '
      f'{r["macs"]:,} | {_fmt_err(r)} | {1e3 * r.get("latency_b1_s", float("nan")):.2f} | '
      f'{1e3 * r.get("latency_large_s", float("nan")):.1f} | {r["train_seconds"]:.0f} |\n'
      for r in rows)
  return head + body


def write(rows, workdir, config, num_test: int | None = None) -> dict:
  """results.json / results.csv, three plots and report.md in `workdir`."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, COLUMNS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  _plot_error(rows, os.path.join(workdir, 'error_vs_params.png'))
  _plot_latency(rows, os.path.join(workdir, 'latency_vs_params.png'))
  _plot_profiles(rows, os.path.join(workdir, 'width_profiles.png'), config.study.main_criterion)
  answers = answer(rows, config)
  seeds = ', '.join(str(n) for n in sorted({r['seeds'] for r in rows
                                            if r['arm'] not in ('base', 'pruned')}))
  noise = (f' The test set has {num_test:,} images: one image is {100 / num_test:.2f}% of test '
           'error, and differences of a few images or within the seed spread (±, sample std) '
           'are noise.' if num_test else '')
  device = jax.devices()[0].device_kind
  md = [f'# Study report: {config.model.family} on {config.data.name}', '',
        f'Base: `{rows[0]["spec"]}` ({rows[0]["params"]:,} params). Budgets: '
        f'{", ".join(f"{b:,}" for b in config.study.budgets)}. Criteria: '
        f'{", ".join(config.study.criteria)}. Seeds per from-scratch point: {seeds}. '
        f'Latency: jitted inference, median of {config.study.latency_repeats} on {device}.'
        f'{noise}', '',
        '## Research questions (computed from this run)', '']
  for k, (headline, lines) in answers.items():
    md.append(f'**{k}.** {headline}')
    md += [f'- {l}' for l in lines]
    md.append('')
  md += ['## Results', '', _table(rows), '## Plots', '',
         '![test error vs parameters](error_vs_params.png)', '',
         '![latency vs parameters](latency_vs_params.png)', '',
         '![width profiles](width_profiles.png)', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(md))
  metrics_lib.log(f'report written to {os.path.join(workdir, "report.md")}')
  return {'rows': rows, 'answers': answers, 'report': os.path.join(workdir, 'report.md')}
