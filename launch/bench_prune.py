r"""Times a prune-and-tune run against the same number of plain training steps.

  python -m launch.bench_prune --config=configs/bench_prune.py --workdir=/tmp/jaxbud/bench_prune
"""
import json

from jaxbud import bench_prune
from jaxbud import cli

_CONFIG, _WORKDIR = cli.config_and_workdir(
    'Config (configs/bench_prune.py).', 'Directory for the base and the prune run.')


def main(argv):
  del argv
  print(json.dumps(bench_prune.compare(_CONFIG.value, _WORKDIR.value), indent=1))


if __name__ == '__main__':
  cli.run(main)
