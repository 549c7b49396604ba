"""The study's report: results table (JSON, CSV), comparisons, plots, and RQ1-RQ5 answered.

Every verdict is computed from this run's per-example test predictions; nothing is written in
advance. Each comparison is paired on the same test images (`jaxbud.stats.compare`): the
difference in test error with a 95% interval over test images and training runs, each side's
run-to-run variance pooled over the points of its kind (`run_pools`), and the verdict
"supported", "contradicted" or "inconclusive" (the interval contains zero). An RQ's headline
counts the verdicts that survive Holm's correction over its comparisons (family-wise 5%); each
line keeps its own interval. Latencies (RQ3) come from `jaxbud.bench` with the trained weights
in the model's compute dtype; "faster" is a two-sided Mann-Whitney U test on the timed calls,
Holm over RQ3. Training compute (RQ5) is counted in multiply-accumulates and reported as the
multiples prune-and-tune costs, with no verdict (cheaper by construction is not a finding).

Comparisons never pick a winner on the test set: each reduced family is compared with the
pruned network on its own.
"""
import csv
import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

import jax

from jaxbud import bench
from jaxbud import metrics as metrics_lib
from jaxbud import schedules
from jaxbud import spec as spec_lib
from jaxbud import stats

COLUMNS = ('arm', 'family', 'budget', 'params', 'macs', 'test_error', 'test_error_std', 'seeds',
           'latency_b1_s', 'latency_large_s', 'large_batch', 'train_macs', 'train_seconds',
           'schedule', 'same_run_as', 'wider_than_base', 'compilations', 'spec')
QUESTIONS = {
    'RQ1': 'Reduced networks beat pruned-and-tuned ones of the same size',
    'RQ2': 'The pruned architecture trained from scratch beats the pruned-and-tuned network',
    'RQ3': 'Reduced networks run inference faster than pruned ones of the same size',
    'RQ4': 'Copycat architectures (one pruned profile scaled to each size) beat '
           'pruned-and-tuned networks and reduced ones',
    'RQ5': 'Training a small network directly costs less compute than prune-and-tune',
}
# With several criteria: each other criterion against the main one, budget by budget.
CRITERIA = 'Criteria'
CRITERIA_QUESTION = ('Another criterion\'s pruned-and-tuned network beats the main criterion\'s at '
                     'the same budget')


def _load(run_dir):
  import jaxbud  # pylint: disable=g-import-not-at-top
  return jaxbud.load(run_dir)


def add_latency(rows, config, dataset, cache_path=None):
  """Median inference latency (and its spread) at batch 1 and a large batch for the rows RQ3
  compares (reduced networks, the main criterion's pruned networks) and the base.

  Each row's network is the trained one (its first run), in the config's compute dtype, timed
  by `jaxbud.bench.time_inference` (AOT compiled, primed, round-robin over all rows). Results,
  every timed call's seconds included (RQ3's test reads them), are kept in `cache_path`, keyed
  by run folder and settings, so a re-run measures only new rows (and rows cached without the
  per-call times).
  """
  scfg = config.study
  small, large = scfg.latency_batch_sizes
  cache = {}
  if cache_path and os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  key = lambda r: f'{r["runs"][0]}|{small}|{large}|{scfg.latency_repeats}'
  cached = lambda k: k in cache and all('times_s' in t for t in cache[k].values())
  rows = [r for r in rows if r['arm'] in ('base', 'reduced') or
          (r['arm'] == 'pruned' and r['family'] == scfg.main_criterion)]
  todo = list({key(r): r for r in rows if not cached(key(r))}.values())
  if todo:
    networks = []
    for r in todo:
      net = _load(r['runs'][0])
      norm = net.info['normalisation']
      networks.append((key(r), net.model, net.variables, tuple(norm['mean']),
                       tuple(norm['std']), dataset.image_shape))
    timed = bench.time_inference(networks, (small, large), repeats=scfg.latency_repeats)
    for k, by_batch in timed.items():
      cache[k] = {str(b): t for b, t in by_batch.items()}
  for r in rows:
    lat = cache[key(r)]
    r['latency_b1_s'], r['latency_large_s'] = lat[str(small)]['median_s'], lat[str(large)][
        'median_s']
    r['latency'] = lat
    r['large_batch'] = large
  if cache_path and jax.process_index() == 0:
    with open(cache_path, 'w') as f:
      json.dump(cache, f, indent=1)
  metrics_lib.log(f'latency measured for {len(todo)} networks on '
                  f'{bench.platform_name()} ({len(rows) - len(todo)} reused)')


# -- comparisons ---------------------------------------------------------------------------

FROM_SCRATCH = ('base', 'reduced', 'scratch', 'scratch_b', 'copycat')
ALPHA = 0.05  # family-wise, per RQ (Holm)


def _name(r) -> str:
  what = {'reduced': f'reduced {r["family"]}', 'pruned': f'{r["family"]}-pruned',
          'scratch': 'pruned arch. from scratch (Scratch-E)',
          'scratch_b': f'pruned arch. from scratch (Scratch-B, x{r["schedule"]:.2f} schedule)',
          'copycat': 'copycat', 'base': 'base'}[r['arm']]
  return f'{what} ({r["params"]:,} params)'


class _Wrong:
  """Each row's (runs, images) wrong matrix, read once."""

  def __init__(self):
    self._cache = {}

  def __call__(self, r):
    key = tuple(r['runs'])
    if key not in self._cache:
      self._cache[key] = stats.wrong([os.path.join(d, 'predictions.npz') for d in r['runs']])
    return self._cache[key]


def run_pools(rows, main_criterion: str, wrong=None) -> dict:
  """{'from scratch': Pool, 'pruned': Pool}: the run-to-run variance of test error pooled over
  every from-scratch point (base, reduced, scratch, Scratch-B, copycats; a point that reuses
  another's runs counted once), and over the main criterion's pruned snapshots. The snapshots
  of one study are the same k prune runs at other budgets, so that pool keeps k - 1 df
  (`stats.pool(shared_runs=True)`)."""
  wrong = wrong or _Wrong()
  scratch = [wrong(r).mean(axis=1) for r in rows
             if r['arm'] in FROM_SCRATCH and not r.get('same_run_as')]
  by_criterion = {}
  for r in rows:
    if r['arm'] == 'pruned':
      by_criterion.setdefault(r['family'], []).append(wrong(r).mean(axis=1))
  pools = {f'pruned/{c}': stats.pool(v, shared_runs=True) for c, v in by_criterion.items()}
  return {'from scratch': stats.pool(scratch),
          'pruned': pools.get(f'pruned/{main_criterion}', stats.pool([], shared_runs=True)),
          **pools}


def _paired(rq, budget, a, b, wrong, pools) -> dict:
  pool = lambda r: pools[f'pruned/{r["family"]}' if r['arm'] == 'pruned' else 'from scratch']
  c = stats.compare(wrong(a), wrong(b), pool_a=pool(a), pool_b=pool(b))
  return {'rq': rq, 'budget': budget, 'a': _name(a), 'b': _name(b),
          'error_a': a['test_error'],
          'error_b': b['test_error'], 'diff': c.diff, 'lo': c.lo, 'hi': c.hi,
          'images': c.images, 'runs_a': c.runs_a, 'runs_b': c.runs_b, 'se': c.se, 'df': c.df,
          'p': c.p, 'pooled_a': c.pooled_a, 'pooled_b': c.pooled_b,
          'verdict': c.verdict, 'text': c.describe()}


def _latency(budget, batch, a, b) -> dict:
  la, lb = a['latency'][str(batch)], b['latency'][str(batch)]
  u, p = stats.mann_whitney(la['times_s'], lb['times_s'])
  faster = u < len(la['times_s']) * len(lb['times_s']) / 2  # a's (reduced) calls the shorter
  verdict = (stats.INCONCLUSIVE if p >= ALPHA else
             stats.SUPPORTED if faster else stats.CONTRADICTED)
  return {'rq': 'RQ3', 'budget': budget, 'batch': batch, 'a': _name(a), 'b': _name(b),
          'a_s': la['median_s'], 'b_s': lb['median_s'], 'calls': len(la['times_s']),
          'u': u, 'p': p, 'verdict': verdict, 'stable_text': f'batch {batch}',
          'text': f'batch {batch}: {1e3 * la["median_s"]:.3f} ms vs {1e3 * lb["median_s"]:.3f} ms '
                  f'(medians of {len(la["times_s"])} calls; Mann-Whitney p = {p:.2g})'}


def _compute(budget, a, b, base_macs) -> dict:
  """RQ5: prune-and-tune's training compute (base plus prune run, per prune run) and the prune
  run's alone, as multiples of the reduced network's (one run)."""
  prune = b.get('prune_train_macs')
  if prune is None and base_macs is not None:
    prune = b['train_macs'] - base_macs
  total = b['train_macs'] / a['train_macs']
  marginal = None if prune is None else prune / a['train_macs']
  stable = (f'prune-and-tune {total:.2f}x the reduced network\'s training compute'
            + ('' if marginal is None else f', the prune run alone {marginal:.2f}x')
            + f' ({a["train_macs"]:.2e} vs {b["train_macs"]:.2e} MACs)')
  return {'rq': 'RQ5', 'budget': budget, 'a': _name(a), 'b': _name(b),
          'a_macs': a['train_macs'], 'b_macs': b['train_macs'], 'prune_macs': prune,
          'multiple': total, 'prune_multiple': marginal, 'stable_text': stable,
          'text': f'{stable}; {a["train_seconds"]:.0f} s vs {b["train_seconds"]:.0f} s here'}


def _holm(comps, rq):
  """Adds Holm-adjusted p-values and verdicts over one RQ's comparisons."""
  mine = [c for c in comps if c['rq'] == rq]
  for c, adjusted in zip(mine, stats.holm([c['p'] for c in mine])):
    c['p_holm'] = float(adjusted)
    c['holm_verdict'] = c['verdict'] if adjusted < ALPHA else stats.INCONCLUSIVE
    c['text'] += f', Holm-adjusted {adjusted:.2g}'


def _target(r) -> int:
  """The budget of the pruned snapshot a from-scratch row is compared with."""
  return r.get('match') or r['budget']


def comparisons(rows, config) -> list[dict]:
  """Every comparison of RQ1-RQ5, each against the main criterion's pruned network of the same
  budget (see the module docstring). The copycat at the profile's own budget is the Scratch-E
  run (`same_run_as`): its comparison with the pruned network is RQ2's, not repeated in RQ4."""
  scfg = config.study
  wrong = _Wrong()
  pools = run_pools(rows, scfg.main_criterion, wrong)
  pruned = {r['budget']: r for r in rows
            if r['arm'] == 'pruned' and r['family'] == scfg.main_criterion}
  reduced = sorted((r for r in rows if r['arm'] == 'reduced' and _target(r) in pruned),
                   key=lambda r: (r['family'], r['budget']))
  out = []
  for r in reduced:
    out.append(_paired('RQ1', r['budget'], r, pruned[_target(r)], wrong, pools))
  for arm in ('scratch', 'scratch_b'):
    for r in rows:
      if r['arm'] == arm and _target(r) in pruned:
        out.append(_paired('RQ2', r['budget'], r, pruned[_target(r)], wrong, pools))
  timed = lambda r: 'latency' in r and all('times_s' in t for t in r['latency'].values())
  for r in reduced:
    if timed(r) and timed(pruned[_target(r)]):
      for batch in scfg.latency_batch_sizes:
        out.append(_latency(r['budget'], batch, r, pruned[_target(r)]))
  for cc in (r for r in rows if r['arm'] == 'copycat' and _target(r) in pruned):
    if not cc.get('same_run_as'):
      out.append(_paired('RQ4', cc['budget'], cc, pruned[_target(cc)], wrong, pools))
    for r in reduced:
      if r['budget'] == cc['budget']:
        out.append(_paired('RQ4', cc['budget'], cc, r, wrong, pools))
  for r in rows:  # the other criteria, each against the main one at the same budget
    if r['arm'] == 'pruned' and r['family'] != scfg.main_criterion and r['budget'] in pruned:
      out.append(_paired(CRITERIA, r['budget'], r, pruned[r['budget']], wrong, pools))
  bases = [r['train_macs'] for r in rows if r['arm'] == 'base']
  for r in reduced:
    out.append(_compute(r['budget'], r, pruned[_target(r)],
                        sum(bases) / len(bases) if bases else None))
  for rq in ('RQ1', 'RQ2', 'RQ3', 'RQ4', CRITERIA):
    _holm(out, rq)
  if _unit(config) == 'macs':
    for c in out:
      c['budget_unit'] = 'macs'
  return out


def _rq5(question, mine, text) -> tuple[str, list[str]]:
  total = [c['multiple'] for c in mine]
  marginal = [c['prune_multiple'] for c in mine if c['prune_multiple'] is not None]
  span = lambda v: f'{min(v):.2f}x' if min(v) == max(v) else f'{min(v):.2f}x to {max(v):.2f}x'
  headline = (f'{question}: prune-and-tune (base network plus prune run) trains {span(total)} '
              'the compute of the reduced network of its size'
              + (f'; the prune run alone {span(marginal)}' if marginal else '')
              + f' ({len(mine)} comparisons; compute multiples, no verdict).')
  return headline, [f'{_at(c)}: {c["a"]} vs {c["b"]}: {text(c)}' for c in mine]


def _unit(config) -> str:
  """What the study's budgets count (`prune.budget_unit`)."""
  return schedules.budget_unit(config.get('prune', {}))


def _at(c) -> str:
  """'budget 120,000', or with MACs budgets 'budget 1,234,567 MACs'."""
  return f'budget {c["budget"]:,}' + (' MACs' if c.get('budget_unit') == 'macs' else '')


def answer(comps, timings: bool = True) -> dict:
  """{'RQ1': (headline, [lines]), ...}: each question's verdict counts and its comparisons.

  Headline counts are Holm's (family-wise 5% per RQ) where the comparisons carry them; each
  line gives its own interval and verdict and whether that verdict survives Holm. RQ5 gives
  compute multiples, not a verdict. Without `timings`, the lines leave out the measured times
  (they differ from run to run; the verdicts and everything else are what a fresh run prints).
  """
  out = {}
  text = lambda c: c['text'] if timings else c.get('stable_text', c['text'])
  questions = dict(QUESTIONS)
  if any(c['rq'] == CRITERIA for c in comps):
    questions[CRITERIA] = CRITERIA_QUESTION
  for rq, question in questions.items():
    mine = [c for c in comps if c['rq'] == rq]
    if not mine:
      out[rq] = (f'{question}: not measured in this run.', [])
      continue
    if all('multiple' in c for c in mine):
      out[rq] = _rq5(question, mine, text)
      continue
    holm = all('holm_verdict' in c for c in mine)
    key = 'holm_verdict' if holm else 'verdict'
    counts = {v: sum(c[key] == v for c in mine)
              for v in (stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE)}
    tally = ', '.join(f'{v} in {n}' for v, n in counts.items() if n) + f' of {len(mine)}'
    if holm:
      tally += ' after Holm\'s correction (family-wise 5%)'
    lines = []
    for c in mine:
      line = f'{_at(c)}: {c["a"]} vs {c["b"]}: {text(c)}: **{c["verdict"]}**'
      if holm and c['verdict'] != stats.INCONCLUSIVE:
        line += (', survives Holm' if c['holm_verdict'] == c['verdict'] else
                 ', not after Holm')
      lines.append(line)
    out[rq] = (f'{question}: {tally}.', lines)
  return out


# -- plots ---------------------------------------------------------------------------------

def _save(fig, axes, path):
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def trajectories(workdir, config) -> dict:
  """{criterion: [each prune seed's evaluations (its history.json)]} of a study folder."""
  out = {}
  for crit in config.study.criteria:
    for seed in config.study.prune_seeds:
      path = os.path.join(workdir, f'prune_{crit}', f'seed{seed}', 'history.json')
      if os.path.exists(path):
        with open(path) as f:
          out.setdefault(crit, []).append(json.load(f)['evaluations'])
  return out


_AXIS = {'params': 'parameters', 'macs': 'MACs'}  # the x axis of the plots: the budget unit


def _plot_error(rows, trajs, path, unit='params'):
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for (crit, runs), color in zip(sorted(trajs.items()), ('C7', 'C8', 'C9', 'C6')):
    for i, evals in enumerate(runs):
      ax.plot([e[unit] for e in evals], [max(100 * e['test_error'], 0.01) for e in evals],
              lw=0.8, alpha=0.5, color=color,
              label=f'{crit} pruning trajectories ({len(runs)} runs)' if i == 0 else None)
  for (arm, fam), marker in zip(sorted({(r['arm'], r['family']) for r in rows}),
                                'os^vD<>phx*+'):
    pts = sorted((r for r in rows if (r['arm'], r['family']) == (arm, fam)),
                 key=lambda r: r[unit])
    ax.errorbar([r[unit] for r in pts], [max(100 * r['test_error'], 0.01) for r in pts],
                yerr=[100 * r['test_error_std'] for r in pts], marker=marker, capsize=2,
                label=f'{arm} ({fam})' if arm != fam else arm, linestyle='none')
  ax.set_xscale('log')
  ax.set_yscale('log')  # a failed arm (tens of %) would otherwise flatten the rest
  ax.set_xlabel(_AXIS[unit])
  ax.set_ylabel('test error (%, log scale)')
  ax.set_title(f'Test error vs {_AXIS[unit]} (seed means; lines: test error along each prune '
               'run)')
  _save(fig, [ax], path)


def _plot_latency(rows, path, unit='params'):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in ((axes[0], 'latency_b1_s', 'batch 1'),
                         (axes[1], 'latency_large_s', f'batch {rows[0].get("large_batch")}')):
    for arm, marker in zip(sorted({r['arm'] for r in rows}), 'os^vD<>'):
      pts = sorted((r for r in rows if r['arm'] == arm and key in r), key=lambda r: r[unit])
      ax.plot([r[unit] for r in pts], [1e3 * r[key] for r in pts], marker, label=arm)
    ax.set_xscale('log')
    ax.set_xlabel(_AXIS[unit])
    ax.set_ylabel('inference latency (ms, median)')
    ax.set_title(f'Latency vs {_AXIS[unit]}, {title}')
  _save(fig, axes, path)


def _plot_profiles(rows, path, main):
  fig, ax = plt.subplots(figsize=(8, 4))
  for r in sorted((r for r in rows if r['arm'] == 'pruned' and r['family'] == main),
                  key=lambda r: -r['params']):
    ax.plot(spec_lib.from_json(r['spec']).prunable, marker='o', ms=3,
            label=f'pruned {r["params"]:,}')
  for r in (x for x in rows if x['arm'] == 'reduced' and x['family'].endswith('width')):
    ax.plot(spec_lib.from_json(r['spec']).prunable, linestyle='--',
            label=f'reduced width {r["params"]:,}')
  base = next((r for r in rows if r['arm'] == 'base'), None)
  if base:
    ax.plot(spec_lib.from_json(base['spec']).prunable, color='k', lw=1, label='base')
  ax.set_xlabel('prunable layer (block order)')
  ax.set_ylabel('channels')
  ax.set_title('Per-layer width profile: pruned vs reduced')
  _save(fig, [ax], path)


# -- tables and the report -----------------------------------------------------------------

def _fmt_err(r) -> str:
  s = f'{100 * r["test_error"]:.2f}%'
  return s + (f' ± {100 * r["test_error_std"]:.2f}' if r['seeds'] > 1 else '')


def _note(r) -> str:
  notes = []
  if r.get('same_run_as'):
    notes.append(f'same runs as {r["same_run_as"]}')
  if r.get('wider_than_base'):
    notes.append('wider than the base in some layer')
  if r['arm'] == 'scratch_b':
    notes.append(f'schedule x{r["schedule"]:.2f}')
  if r['arm'] == 'pruned' and r.get('rounds') is not None:
    notes.append(f'{r["rounds"]} rounds; cost includes the base')
  if r['arm'] == 'reduced' and r['family'].endswith('depth'):
    notes.append('budget = its own size')
  return '; '.join(notes)


def _budget(r) -> str:
  return f'{r["budget"]:,}' if r['budget'] else '-'


def _ms(seconds, digits) -> str:
  return '-' if seconds is None else f'{1e3 * seconds:.{digits}f}'


def table(rows, timings: bool = True) -> str:
  """The results as a markdown table; without `timings`, no latency and seconds columns (the
  columns that differ between two runs of the same study)."""
  cols = ['arm', 'family', 'budget', 'params', 'MACs', 'test error', 'seeds']
  cols += ['latency b1 (ms)', 'latency large (ms)'] if timings else []
  cols += ['train MACs'] + (['train s'] if timings else []) + ['note']
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  for r in rows:
    cells = [r['arm'], r['family'], _budget(r), f'{r["params"]:,}', f'{r["macs"]:,}',
             _fmt_err(r), str(r['seeds'])]
    if timings:
      cells += [_ms(r.get('latency_b1_s'), 3), _ms(r.get('latency_large_s'), 2)]
    cells.append(f'{r["train_macs"]:.2e}')
    if timings:
      cells.append(f'{r["train_seconds"]:.0f}')
    cells.append(_note(r))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'



def research_questions(answers) -> str:
  md = []
  for k, (headline, lines) in answers.items():
    md.append(f'**{k}.** {headline}')
    md += [f'- {l}' for l in lines]
    md.append('')
  return '\n'.join(md)


def reference_line(base, scfg) -> str:
  """The base networks' test error beside a published figure for a network of their kind
  (`study.reference_error`, percent, and `study.reference`, its source), when the config gives
  one."""
  ours = 100 * base['test_error']
  spread = (f', sample sd {100 * base["test_error_std"]:.2f}' if base['seeds'] > 1 else '')
  text = f'Base networks: {ours:.2f}% test error (mean of {base["seeds"]}{spread}).'
  published = scfg.get('reference_error', 0.0)
  if published:
    text += (f' Published for a network of its kind: {published:.2f}% '
             f'({scfg.get("reference", "")}); this study\'s network and schedule leave it '
             f'{ours - published:+.2f} points from that.')
  return text


def unfinished_section(unfinished) -> list[str]:
  """The report's lines on a study whose jobs have not all finished (none when all have)."""
  if not unfinished:
    return []
  return ['## Unfinished runs', '',
          f'This report covers the runs finished so far. {len(unfinished)} runs are not '
          'finished; a point appears in the results, and in the comparisons, once all its runs '
          'have. Write the report again when the jobs training them are done:', '',
          *[f'- `{rel}`' for rel in unfinished], '']


def write(rows, workdir, config, dataset, unfinished=()) -> dict:
  """results.json|csv, comparisons.json, three plots and report.md in `workdir`; with
  `unfinished` run folders (a fanned-out study's report step), the rows finished so far and a
  section listing the rest."""
  comps = comparisons(rows, config)
  answers = answer(comps)
  facts = {'rows': rows, 'comparisons': comps, 'answers': answers,
           'report': os.path.join(workdir, 'report.md'), 'unfinished': list(unfinished)}
  if jax.process_index() != 0:
    return facts
  base = next((r for r in rows if r['arm'] == 'base'), None)
  if base is None:  # nothing to compare yet
    with open(facts['report'], 'w') as f:
      f.write('\n'.join([f'# Study report: {config.model.family} on {config.data.name}', '',
                         'No base network has finished yet.', '',
                         *unfinished_section(unfinished)]))
    metrics_lib.log(f'report written to {facts["report"]} ({len(unfinished)} runs unfinished)')
    return facts
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, 'comparisons.json'), 'w') as f:
    json.dump(comps, f, indent=1)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, COLUMNS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  # The file names stay; with MACs budgets the x axes are MACs.
  _plot_error(rows, trajectories(workdir, config), os.path.join(workdir, 'error_vs_params.png'),
              _unit(config))
  _plot_latency(rows, os.path.join(workdir, 'latency_vs_params.png'), _unit(config))
  _plot_profiles(rows, os.path.join(workdir, 'width_profiles.png'), config.study.main_criterion)
  scfg = config.study
  n = len(dataset.test_labels)
  main = [r for r in rows if r['arm'] == 'pruned' and r['family'] == scfg.main_criterion]
  k = max((len(r['runs']) for r in main), default=1)
  pools = run_pools(rows, scfg.main_criterion)
  pool_text = lambda p: (f'sd {100 * p.var ** 0.5:.2f}% on {p.df} df' if p.df else
                         'not estimable (one run per point)')
  md = [f'# Study report: {config.model.family} on {config.data.name}', '',
        f'Base: `{base["spec"]}` ({base["params"]:,} params). Budgets'
        f'{" (MACs)" if _unit(config) == "macs" else ""}: '
        f'{", ".join(f"{b:,}" for b in scfg.budgets)} (and each depth-reduced network\'s own '
        f'size). Criteria: {", ".join(scfg.criteria)} (main: {scfg.main_criterion}). Seeds per '
        f'from-scratch point: {len(scfg.seeds)}; {k} base network{"s" if k > 1 else ""}, each '
        f'with one prune run per criterion. Test set: {n:,} images (one image is '
        f'{100 / n:.2f}% of test error).', '', *unfinished_section(unfinished),
        reference_line(base, scfg), '',
        'Each comparison is a versus b on the same test images: the difference in test error '
        '(a minus b) with a 95% interval over test images and training runs '
        '(`jaxbud.stats.compare`: its variance is the run-to-run variance of each side over its '
        'runs plus the across-image variance of the per-image difference over the images; the '
        'run part at a t quantile with Welch-Satterthwaite degrees of freedom), and the verdict '
        'on the claim "a is better". Run-to-run variances are pooled over all points of a kind: '
        f'from scratch {pool_text(pools["from scratch"])}, {scfg.main_criterion}-pruned '
        f'{pool_text(pools["pruned"])} (its budgets are snapshots of the same prune runs); a '
        'side with one run and no pool has no run-to-run variance in its interval, and its line '
        'says so. In simulated studies these 95% intervals held the true difference in 94.7% to '
        '97.4% of studies (docs/study.md). Each RQ\'s headline counts the verdicts that survive '
        'Holm\'s correction over its comparisons (family-wise error 5%); each line gives its own '
        'interval, p-value and Holm-adjusted p-value. RQ4 leaves out the copycat at the '
        'profile\'s own budget against the pruned network: it is the Scratch-E run, compared in '
        f'RQ2. Latency: `jaxbud.bench`, trained weights, {config.model.dtype}, '
        f'{scfg.latency_repeats} calls per network; "faster" is a two-sided Mann-Whitney U test '
        'on the calls (5%, Holm over RQ3). Training compute (RQ5): 3 x forward MACs per training '
        'image (base network plus prune run up to the snapshot for pruned networks, per prune '
        'run), given as multiples of the reduced network\'s, with no verdict.', '',
        f'Machine: {bench.platform_name()}; jax {jax.__version__}.' + (
            ' A re-run on the same CPU kind gives the same test errors and architectures; on '
            'another CPU kind they differ by rounding (docs/study.md, "Reproducibility").'
            if jax.default_backend() == 'cpu' else ''), '',
        '## Research questions (computed from this run)', '', research_questions(answers),
        '## Results', '', table(rows), '## Plots', '',
        '![test error vs parameters](error_vs_params.png)', '',
        '![latency vs parameters](latency_vs_params.png)', '',
        '![width profiles](width_profiles.png)', '']
  with open(facts['report'], 'w') as f:
    f.write('\n'.join(md))
  metrics_lib.log(f'report written to {facts["report"]}')
  return facts


def readme_markers(name: str) -> tuple[str, str]:
  """The README markers around the results block of the study published in docs/<name>."""
  return (f'<!-- study results: generated by scripts/publish_study.py from docs/{name} -->',
          f'<!-- end of study results: {name} -->')


def results_block(directory, full: bool = False, with_table: bool = True) -> str:
  """The results table and the RQ headlines of the study written to `directory`, as markdown
  (regenerated from results.json and comparisons.json), with `full` every comparison's line
  too; without `with_table`, the headlines alone (the README's block). Measured times are left
  out: the rest is what any run of the same study on the same CPU kind prints."""
  with open(os.path.join(directory, 'results.json')) as f:
    rows = json.load(f)
  with open(os.path.join(directory, 'comparisons.json')) as f:
    comps = json.load(f)
  answers = answer(comps, timings=False)
  if not full:
    answers = {k: (headline, []) for k, (headline, _) in answers.items()}
  return '\n'.join(([table(rows, timings=False)] if with_table else [])
                   + [research_questions(answers).rstrip('\n')])


def replace_block(text: str, block: str, name: str) -> str:
  """`text` with what lies between the markers of `name` replaced by `block`."""
  begin, end_marker = readme_markers(name)
  start, end = text.index(begin) + len(begin), text.index(end_marker)
  return text[:start] + '\n' + block + '\n' + text[end:]
