r"""Times the whole training loop against its bare step; writes <workdir>/loop_bench.json.

  python -m launch.bench_loop --config=configs/bench_loop.py --workdir=/tmp/jaxbud/loop
"""
import json
import os

from jaxbud import cli
from jaxbud import loop_bench
from jaxbud import metrics as metrics_lib

_CONFIG, _WORKDIR = cli.config_and_workdir(
    'Config file (configs/bench_loop.py).', 'A new directory for the timed training run.')


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  result = loop_bench.measure(config, workdir, config.loop.bare_steps, config.loop.repeats)
  if config.loop.project:
    result['projections'] = loop_bench.project(result, config.projection)
    for p in result['projections']:
      print(f'projected {p["what"]}: {metrics_lib.format_seconds(p["seconds"])} ({p["how"]})')
  path = os.path.join(workdir, 'loop_bench.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'loop overhead {result["loop_overhead"]:+.1%} ({result["loop_steps_per_s"]:.2f} '
        f'steps/s in the loop, {result["bare_steps_per_s"]:.2f} bare); wrote {path}')


if __name__ == '__main__':
  cli.run(main)
