r"""Prune-and-tune from a trained checkpoint; re-running the same command resumes it.

  python -m launch.prune --config=configs/prune_digits.py --workdir=/tmp/jaxbud/prune \
      --config.prune.base_workdir=/tmp/jaxbud/default
"""
from jaxbud import cli
from jaxbud import prune_tune

_CONFIG, _WORKDIR = cli.config_and_workdir(
    'Config file (configs/prune_*.py).', 'Directory for the prune run.')


def main(argv):
  del argv
  summary = prune_tune.prune_and_tune(_CONFIG.value, _WORKDIR.value)
  for s in summary['snapshots']:
    print(f'budget {s["budget"]:>10,}  params {s["params"]:>10,}  MACs {s["macs"]:>12,}  '
          f'test error {s["test_error"]:.4f}  {s["dir"]}')
  print(f'{summary["removed"]} channels removed, {summary["compilations"]} compilations, '
        f'{summary["seconds"]:.0f} s')


if __name__ == '__main__':
  cli.run(main)
