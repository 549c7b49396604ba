r"""Copies a finished study's outputs into docs/<name> and regenerates its README results block.

  python -m launch.study                       # writes runs/study_digits
  python scripts/publish_study.py --src=runs/study_digits
  python scripts/publish_study.py --src=runs/study_fashion_mnist --dst=docs/study_fashion_mnist

The README's block between that study's markers is `jaxbud.report.results_block` of docs/<name>
(the RQ headlines; the table is in docs/<name>/report.md); tests/test_docs.py checks that they
agree.

  python scripts/publish_study.py --check --src=OTHER_RUN [--dst=docs/study_fashion_mnist]

compares another run's table and every comparison's verdict line (no measured times) with the
published study's and prints the lines that differ; exit status 1 if any do.
"""
import argparse
import difflib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxbud import report  # pylint: disable=wrong-import-position

FILES = ('report.md', 'results.json', 'results.csv', 'comparisons.json', 'plan.txt',
         'error_vs_params.png', 'latency_vs_params.png', 'width_profiles.png')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--src', default=os.path.join(ROOT, 'runs', 'study_digits'))
  parser.add_argument('--dst', default=os.path.join(ROOT, 'docs', 'study_digits'))
  parser.add_argument('--readme', default=os.path.join(ROOT, 'README.md'))
  parser.add_argument('--check', action='store_true',
                      help='compare --src with the study published in --dst instead of '
                           'publishing it')
  args = parser.parse_args(argv)
  name = os.path.basename(os.path.normpath(args.dst))
  missing = [f for f in FILES if not os.path.isfile(os.path.join(args.src, f))]
  if missing:
    parser.error(f'{args.src} is not a finished study (missing {", ".join(missing)})')
  if args.check:
    published = report.results_block(args.dst, full=True).splitlines()
    fresh = report.results_block(args.src, full=True).splitlines()
    diff = list(difflib.unified_diff(published, fresh, args.dst, args.src, lineterm='', n=0))
    print('\n'.join(diff) if diff else
          f'{args.src}: the same table and verdicts as {args.dst}')
    sys.exit(1 if diff else 0)
  os.makedirs(args.dst, exist_ok=True)
  for f in FILES:
    shutil.copy(os.path.join(args.src, f), os.path.join(args.dst, f))
  with open(args.readme) as f:
    text = f.read()
  with open(args.readme, 'w') as f:
    f.write(report.replace_block(text, report.results_block(args.dst, with_table=False), name))
  print(f'copied {len(FILES)} files to {args.dst} and regenerated its results in {args.readme}')


if __name__ == '__main__':
  main()
