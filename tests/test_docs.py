"""docs/extending.md runs as written: its python blocks are executed in order."""
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extending_md_runs():
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert len(blocks) == 4
  namespace = {}
  exec(compile('\n'.join(blocks), 'docs/extending.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['snapshot']['params'] <= 70_000
  assert namespace['scratch']['params'] == namespace['snapshot']['params']
  # the new schedule: 5% of the live channels a round (WRN-10-1 has 112 prunable channels)
  summary = namespace['summary']
  assert summary['schedule'] == 'geometric' and summary['snapshots'][0]['params'] <= 70_000
  history = json.load(open(os.path.join(namespace['workdir'], 'geometric', 'history.json')))
  live, per_round = 112, []
  for rnd in range(summary['snapshots'][0]['round']):
    per_round.append(sum(r['round'] == rnd for r in history['removals']))
    assert per_round[-1] == max(1, live // 20), (rnd, per_round)
    live -= per_round[-1]


@pytest.mark.parametrize('name', ['study_digits', 'study_fashion_mnist'])
def test_readme_results_are_the_published_study(name):
  """The README's results block of each published study is generated from docs/<name>
  (scripts/publish_study.py), and docs/<name>/report.md carries the same table and verdicts
  (with measured times)."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxbud import report  # pylint: disable=g-import-not-at-top
  src = os.path.join(ROOT, 'docs', name)
  if not os.path.isdir(src):
    pytest.skip(f'docs/{name} is not published yet')
  readme = open(os.path.join(ROOT, 'README.md')).read()
  block = report.results_block(src, with_table=False)
  assert report.replace_block(readme, block, name) == readme
  published = open(os.path.join(src, 'report.md')).read()
  rows = json.load(open(os.path.join(src, 'results.json')))
  assert report.table(rows) in published
  comps = json.load(open(os.path.join(src, 'comparisons.json')))
  for headline, lines in report.answer(comps).values():
    assert headline in published and headline in readme
    assert all(line in published for line in lines)


@pytest.mark.parametrize('name', ['study_digits', 'study_fashion_mnist', 'study_wrn_40_2_cifar10',
                                  'study_densenet_bc_100_cifar10', 'study_criteria_digits',
                                  'study_criteria_fashion_mnist'])
def test_study_config_docstrings_state_what_the_plan_prints(name):
  import importlib  # pylint: disable=g-import-not-at-top
  from jaxbud import study  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f'configs.{name}')
  rows = study.plan(module.get_config())
  runs = sum(r['runs'] for r in rows)
  steps = sum(r['runs'] * r['steps'] for r in rows)
  said = re.search(r'`study.plan`[^.]*? prints (\d+) runs and ([\d,]+)\s+training steps',
                   module.__doc__)
  assert said, f'configs/{name}.py does not say what study.plan prints'
  assert (int(said[1]), int(said[2].replace(',', ''))) == (runs, steps)
