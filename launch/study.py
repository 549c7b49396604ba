r"""Runs the whole study and writes report.md; with no arguments, the embedded digits default.

  python -m launch.study
  python -m launch.study --config=configs/study_wrn_40_2_cifar10.py --workdir=runs/study_wrn
  python -m launch.study --config=configs/study_wrn_40_2_cifar10.py --config.study.dry_run=True
The plan (every run, its steps and an estimated time from a measured step) is printed first;
with study.dry_run it is all that happens. Re-running the same command reuses finished arms and
continues unfinished ones.

As several jobs sharing one workdir (docs/study.md, "Fan-out"), then the report:
  python -m launch.study --config=... --workdir=/shared/wrn --config.study.shard=0/4   # ... 3/4
  python -m launch.study --config=... --workdir=/shared/wrn --config.study.report_only=True
"""
import os

from jaxbud import cli
from jaxbud import study

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG, _WORKDIR = cli.config_and_workdir(
    'Study config file.', 'Directory for every arm, the results and report.md.',
    os.path.join(_ROOT, 'configs', 'study_digits.py'), os.path.join('runs', 'study_digits'))


def main(argv):
  del argv
  out = study.run_study(_CONFIG.value, _WORKDIR.value)
  if 'answers' not in out:  # a dry run (the plan is all), or one job's share
    return
  for k, (headline, _) in out['answers'].items():
    print(f'{k}: {headline}')
  print(f'report: {out["report"]}' + (f' ({len(out["unfinished"])} runs not finished yet)'
                                      if out.get('unfinished') else ''))


if __name__ == '__main__':
  cli.run(main)
