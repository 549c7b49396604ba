r"""Trains one network from a config; re-running the same command resumes it.

  python -m launch.train --config=configs/default.py --workdir=/tmp/jaxbud/default \
      [--config.train.epochs=3 ...]
"""
from absl import flags
from ml_collections import config_flags

from jaxbud import cli
from jaxbud import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
