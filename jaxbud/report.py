"""The study's report: results table (JSON, CSV), comparisons, plots, and RQ1-RQ5 answered.

Every verdict is computed from this run's per-example test predictions; nothing is written in
advance. Each comparison is paired on the same test images (`jaxbud.stats.paired_bootstrap`):
the difference in test error with a 95% interval over test images and seeds, and the verdict
"supported", "contradicted" or "inconclusive" (the interval contains zero). Latencies (RQ3)
come from `jaxbud.bench` with the trained weights in the model's compute dtype; "faster" needs
the difference of medians to exceed the larger interquartile range of the two. Training compute
(RQ5) is counted in multiply-accumulates, so that verdict does not depend on machine load.

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


def _load(run_dir):
  import jaxbud  # pylint: disable=g-import-not-at-top
  return jaxbud.load(run_dir)


def add_latency(rows, config, dataset, cache_path=None):
  """Median inference latency (and its spread) at batch 1 and a large batch for the rows RQ3
  compares (reduced networks, the main criterion's pruned networks) and the base.

  Each row's network is the trained one (its first run), in the config's compute dtype, timed
  by `jaxbud.bench.time_inference` (AOT compiled, primed, round-robin over all rows). Results
  are kept in `cache_path`, keyed by run folder and settings, so a re-run measures only new rows.
  """
  scfg = config.study
  small, large = scfg.latency_batch_sizes
  cache = {}
  if cache_path and os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  key = lambda r: f'{r["runs"][0]}|{small}|{large}|{scfg.latency_repeats}'
  rows = [r for r in rows if r['arm'] in ('base', 'reduced') or
          (r['arm'] == 'pruned' and r['family'] == scfg.main_criterion)]
  todo = list({key(r): r for r in rows if key(r) not in cache}.values())
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

def _name(r) -> str:
  what = {'reduced': f'reduced {r["family"]}', 'pruned': f'{r["family"]}-pruned',
          'scratch': 'pruned arch. from scratch (Scratch-E)',
          'scratch_b': f'pruned arch. from scratch (Scratch-B, x{r["schedule"]:.2f} schedule)',
          'copycat': 'copycat', 'base': 'base'}[r['arm']]
  return f'{what} ({r["params"]:,} params)'


def _wrong(r):
  return stats.wrong([os.path.join(d, 'predictions.npz') for d in r['runs']])


def _paired(rq, budget, a, b, samples) -> dict:
  c = stats.paired_bootstrap(_wrong(a), _wrong(b), samples=samples)
  return {'rq': rq, 'budget': budget, 'a': _name(a), 'b': _name(b),
          'error_a': a['test_error'],
          'error_b': b['test_error'], 'diff': c.diff, 'lo': c.lo, 'hi': c.hi,
          'images': c.images, 'runs_a': c.runs_a, 'runs_b': c.runs_b,
          'verdict': c.verdict, 'text': c.describe()}


def _latency(budget, batch, a, b) -> dict:
  la, lb = a['latency'][str(batch)], b['latency'][str(batch)]
  diff = lb['median_s'] - la['median_s']  # > 0: a (reduced) is faster
  # The spread: the larger interquartile range (max - min follows single outliers of a shared
  # machine and would make the verdict change from run to run).
  spread = max(la['q3_s'] - la['q1_s'], lb['q3_s'] - lb['q1_s'])
  verdict = (stats.SUPPORTED if diff > spread else
             stats.CONTRADICTED if -diff > spread else stats.INCONCLUSIVE)
  return {'rq': 'RQ3', 'budget': budget, 'batch': batch, 'a': _name(a), 'b': _name(b),
          'a_s': la['median_s'], 'b_s': lb['median_s'], 'spread_s': spread,
          'verdict': verdict, 'stable_text': f'batch {batch}',
          'text': f'batch {batch}: {1e3 * la["median_s"]:.3f} ms vs {1e3 * lb["median_s"]:.3f} ms '
                  f'(larger interquartile range {1e3 * spread:.3f} ms)'}


def _compute(budget, a, b) -> dict:
  verdict = (stats.SUPPORTED if a['train_macs'] < b['train_macs'] else
             stats.CONTRADICTED if a['train_macs'] > b['train_macs'] else stats.INCONCLUSIVE)
  stable = f'{a["train_macs"]:.2e} vs {b["train_macs"]:.2e} MACs of training'
  return {'rq': 'RQ5', 'budget': budget, 'a': _name(a), 'b': _name(b),
          'a_macs': a['train_macs'], 'b_macs': b['train_macs'], 'verdict': verdict,
          'stable_text': stable,
          'text': f'{stable} ({a["train_seconds"]:.0f} s vs {b["train_seconds"]:.0f} s here)'}


def comparisons(rows, config) -> list[dict]:
  """Every comparison of RQ1-RQ5, each against the main criterion's pruned network of the same
  budget (see the module docstring)."""
  scfg = config.study
  samples = scfg.bootstrap_samples
  pruned = {r['budget']: r for r in rows
            if r['arm'] == 'pruned' and r['family'] == scfg.main_criterion}
  reduced = sorted((r for r in rows if r['arm'] == 'reduced' and r['budget'] in pruned),
                   key=lambda r: (r['family'], r['budget']))
  out = []
  for r in reduced:
    out.append(_paired('RQ1', r['budget'], r, pruned[r['budget']], samples))
  for arm in ('scratch', 'scratch_b'):
    for r in rows:
      if r['arm'] == arm and r['budget'] in pruned:
        out.append(_paired('RQ2', r['budget'], r, pruned[r['budget']], samples))
  for r in reduced:
    if 'latency' in r and 'latency' in pruned[r['budget']]:
      for batch in scfg.latency_batch_sizes:
        out.append(_latency(r['budget'], batch, r, pruned[r['budget']]))
  for cc in (r for r in rows if r['arm'] == 'copycat' and r['budget'] in pruned):
    out.append(_paired('RQ4', cc['budget'], cc, pruned[cc['budget']], samples))
    for r in reduced:
      if r['budget'] == cc['budget']:
        out.append(_paired('RQ4', cc['budget'], cc, r, samples))
  for r in reduced:
    out.append(_compute(r['budget'], r, pruned[r['budget']]))
  return out


def answer(comps, timings: bool = True) -> dict:
  """{'RQ1': (headline, [lines]), ...}: each question's verdict counts and its comparisons.
  Without `timings`, the lines leave out the measured times (they differ from run to run; the
  verdicts and everything else are what a fresh run prints)."""
  out = {}
  for rq, question in QUESTIONS.items():
    mine = [c for c in comps if c['rq'] == rq]
    counts = {v: sum(c['verdict'] == v for c in mine)
              for v in (stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE)}
    tally = (', '.join(f'{v} in {n}' for v, n in counts.items() if n) + f' of {len(mine)}'
             if mine else 'not measured in this run')
    text = lambda c: c['text'] if timings else c.get('stable_text', c['text'])
    lines = [f'budget {c["budget"]:,}: {c["a"]} vs {c["b"]}: {text(c)}: **{c["verdict"]}**'
             for c in mine]
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
  """{criterion: the prune run's evaluations (history.json)} of a study folder."""
  out = {}
  for crit in config.study.criteria:
    path = os.path.join(workdir, f'prune_{crit}', 'history.json')
    if os.path.exists(path):
      with open(path) as f:
        out[crit] = json.load(f)['evaluations']
  return out


def _plot_error(rows, trajs, path):
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for crit, evals in sorted(trajs.items()):
    ax.plot([e['params'] for e in evals], [max(100 * e['test_error'], 0.01) for e in evals],
            lw=1, alpha=0.6, label=f'{crit} pruning trajectory')
  for (arm, fam), marker in zip(sorted({(r['arm'], r['family']) for r in rows}),
                                'os^vD<>phx*+'):
    pts = sorted((r for r in rows if (r['arm'], r['family']) == (arm, fam)),
                 key=lambda r: r['params'])
    ax.errorbar([r['params'] for r in pts], [max(100 * r['test_error'], 0.01) for r in pts],
                yerr=[100 * r['test_error_std'] for r in pts], marker=marker, capsize=2,
                label=f'{arm} ({fam})' if arm != fam else arm, linestyle='none')
  ax.set_xscale('log')
  ax.set_yscale('log')  # a failed arm (tens of %) would otherwise flatten the rest
  ax.set_xlabel('parameters')
  ax.set_ylabel('test error (%, log scale)')
  ax.set_title('Test error vs parameters (seed means; lines: test error along each prune run)')
  _save(fig, [ax], path)


def _plot_latency(rows, path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, title in ((axes[0], 'latency_b1_s', 'batch 1'),
                         (axes[1], 'latency_large_s', f'batch {rows[0].get("large_batch")}')):
    for arm, marker in zip(sorted({r['arm'] for r in rows}), 'os^vD<>'):
      pts = sorted((r for r in rows if r['arm'] == arm and key in r), key=lambda r: r['params'])
      ax.plot([r['params'] for r in pts], [1e3 * r[key] for r in pts], marker, label=arm)
    ax.set_xscale('log')
    ax.set_xlabel('parameters')
    ax.set_ylabel('inference latency (ms, median)')
    ax.set_title(f'Latency vs parameters, {title}')
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


def write(rows, workdir, config, dataset) -> dict:
  """results.json|csv, comparisons.json, three plots and report.md in `workdir`."""
  comps = comparisons(rows, config)
  answers = answer(comps)
  facts = {'rows': rows, 'comparisons': comps, 'answers': answers,
           'report': os.path.join(workdir, 'report.md')}
  if jax.process_index() != 0:
    return facts
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, 'comparisons.json'), 'w') as f:
    json.dump(comps, f, indent=1)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, COLUMNS, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  _plot_error(rows, trajectories(workdir, config), os.path.join(workdir, 'error_vs_params.png'))
  _plot_latency(rows, os.path.join(workdir, 'latency_vs_params.png'))
  _plot_profiles(rows, os.path.join(workdir, 'width_profiles.png'), config.study.main_criterion)
  scfg = config.study
  n = len(dataset.test_labels)
  md = [f'# Study report: {config.model.family} on {config.data.name}', '',
        f'Base: `{rows[0]["spec"]}` ({rows[0]["params"]:,} params). Budgets: '
        f'{", ".join(f"{b:,}" for b in scfg.budgets)} (and each depth-reduced network\'s own '
        f'size). Criteria: {", ".join(scfg.criteria)} (main: {scfg.main_criterion}). Seeds per '
        f'from-scratch point: {len(scfg.seeds)}; one base network and one prune run per '
        f'criterion. Test set: {n:,} images (one image is {100 / n:.2f}% of test error).', '',
        f'Each comparison is a versus b on the same test images: the difference in test error '
        f'(a minus b) with a 95% paired bootstrap interval over test images and seeds '
        f'({scfg.bootstrap_samples:,} samples), and the verdict on the claim "a is better". '
        f'Latency: `jaxbud.bench`, trained weights, {config.model.dtype}, median of '
        f'{scfg.latency_repeats}; "faster" needs the '
        'difference of medians to exceed the larger interquartile range. Training compute: 3 x '
        'forward MACs per training image (base network plus prune run up to the snapshot for '
        'pruned networks).', '',
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


README_BEGIN = '<!-- study results: generated by scripts/publish_study.py from docs/study_digits -->'
README_END = '<!-- end of study results -->'


def results_block(directory) -> str:
  """The results table and every RQ verdict of the study written to `directory`, as markdown
  (what the README shows; regenerated from results.json and comparisons.json). Measured times
  are left out: the rest is what any run of the same study on the same platform prints."""
  with open(os.path.join(directory, 'results.json')) as f:
    rows = json.load(f)
  with open(os.path.join(directory, 'comparisons.json')) as f:
    comps = json.load(f)
  return '\n'.join([table(rows, timings=False),
                    research_questions(answer(comps, timings=False)).rstrip('\n')])


def replace_block(text: str, block: str) -> str:
  """`text` with what lies between README_BEGIN and README_END replaced by `block`."""
  start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
  return text[:start] + '\n' + block + '\n' + text[end:]

