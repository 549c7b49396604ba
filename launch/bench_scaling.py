r"""Train-step images/s at one global batch on 1, 2, 4 ... forced CPU devices (jaxbud.scaling).

  python -m launch.bench_scaling --config=configs/bench_scaling.py
"""
import json
import os

from jaxbud import cli
from jaxbud import scaling

_CONFIG = cli.define_config('Config file (configs/bench_scaling.py).')


def main(argv):
  del argv
  scfg = _CONFIG.value.scaling
  rows = scaling.run(scfg)
  print()
  print(f'{rows[0]["spec"]}, train step, global batch {scfg.batch_size}, {scfg.dtype}, '
        f'median of {scfg.repeats}:')
  print(scaling.format_table(rows))
  path = os.path.join(scfg.out_dir, 'scaling.json')
  with open(path, 'w') as f:
    json.dump(rows, f, indent=1)
  print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
