r"""Trains one network from a config; re-running the same command resumes it.

  python -m launch.train --config=configs/default.py --workdir=/tmp/jaxbud/default \
      [--config.train.epochs=3 ...]
"""
from jaxbud import cli
from jaxbud import train

_CONFIG, _WORKDIR = cli.config_and_workdir(
    'Config file (configs/*.py).', 'Directory for checkpoints and metrics.')


def main(argv):
  del argv
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
