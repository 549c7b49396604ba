r"""jaxbud's bench and the PyTorch eager reference, same models and batches, side by side.

  python -m launch.bench_compare --config=configs/bench_compare.py [--config.compare.repeats=5]
"""
import json
import os

from jaxbud import bench
from jaxbud import cli

_CONFIG = cli.define_config('Config file (configs/bench_compare.py).')


def main(argv):
  del argv
  ccfg = _CONFIG.value.compare
  rows, torch_results = bench.compare(ccfg)
  print()
  print(bench.format_table(rows))
  for line in bench.fisher_overheads(rows):
    print(line)
  print()
  print(bench.compare_table(rows, torch_results))
  bench.write(rows, ccfg.out_dir, 'compare_jax')
  path = os.path.join(ccfg.out_dir, 'compare_torch.json')
  with open(path, 'w') as f:
    json.dump([{'spec': k[0], 'batch_size': k[1], **v} for k, v in torch_results.items()], f,
              indent=1)
  print(f'wrote {ccfg.out_dir}/compare_jax.json, compare_jax.csv and compare_torch.json')


if __name__ == '__main__':
  cli.run(main)
