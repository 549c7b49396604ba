r"""Times a prune-and-tune run against the same number of plain training steps.

  python -m launch.bench_prune --config=configs/bench_prune.py --workdir=/tmp/jaxbud/bench_prune
"""
import json

from absl import flags
from ml_collections import config_flags

from jaxbud import bench_prune
from jaxbud import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config (configs/bench_prune.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the base and the prune run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  print(json.dumps(bench_prune.compare(_CONFIG.value, _WORKDIR.value), indent=1))


if __name__ == '__main__':
  cli.run(main)
